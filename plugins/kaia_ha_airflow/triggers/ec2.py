"""Waiter-based triggers for EC2 images, EBS snapshots and volumes (the triggerer loads them from plugins/)."""

from __future__ import annotations

import math
from typing import Any

from airflow.providers.amazon.aws.hooks.ec2 import EC2Hook
from airflow.providers.amazon.aws.triggers.base import AwsBaseWaiterTrigger
from airflow.providers.amazon.aws.utils import validate_execute_complete_event
from airflow.providers.common.compat.sdk import AirflowException


def attempts(hours: float, delay: int) -> int:
    """Polls of a waiter that wait ``hours`` in all (a budget in time: a shorter poll must not mean a shorter wait)."""
    return max(1, math.ceil(hours * 3600 / delay))


def completed(event: dict[str, Any] | None, key: str) -> str:
    """What a deferred task returns when its trigger fires: the resource id, or the trigger's failure raised."""
    event = validate_execute_complete_event(event)
    if event["status"] != "success":
        raise AirflowException(f"{key} {event.get(key)}: {event.get('message', event)}")
    return event[key]


class _EC2ClientWaiterTrigger(AwsBaseWaiterTrigger):
    def hook(self) -> EC2Hook:
        return EC2Hook(api_type="client_type", **self._hook_parameters)


class EC2ImageAvailableTrigger(_EC2ClientWaiterTrigger):
    """Wait for an AMI to become ``available`` (botocore's ``image_available`` waiter).

    :param image_id: the AMI to watch.
    """

    def __init__(self, *, image_id: str, waiter_delay: int = 30, waiter_max_attempts: int = 240,
                 aws_conn_id: str | None = "aws_default", region_name: str | None = None, **kwargs):
        super().__init__(
            serialized_fields={"image_id": image_id},
            waiter_name="image_available",
            waiter_args={"ImageIds": [image_id]},
            failure_message=f"Image {image_id} did not become available",
            status_message=f"Image {image_id} state",
            status_queries=["Images[].State"],
            return_key="image_id",
            return_value=image_id,
            waiter_delay=waiter_delay,
            waiter_max_attempts=waiter_max_attempts,
            aws_conn_id=aws_conn_id,
            region_name=region_name,
            **kwargs,
        )


class EBSSnapshotCompletedTrigger(_EC2ClientWaiterTrigger):
    """Wait for an EBS snapshot to reach ``completed`` (botocore's ``snapshot_completed`` waiter).

    :param snapshot_id: the snapshot to watch.
    """

    def __init__(self, *, snapshot_id: str, waiter_delay: int = 30, waiter_max_attempts: int = 960,
                 aws_conn_id: str | None = "aws_default", region_name: str | None = None, **kwargs):
        super().__init__(
            serialized_fields={"snapshot_id": snapshot_id},
            waiter_name="snapshot_completed",
            waiter_args={"SnapshotIds": [snapshot_id]},
            failure_message=f"Snapshot {snapshot_id} did not complete",
            status_message=f"Snapshot {snapshot_id} progress",
            status_queries=["Snapshots[].State", "Snapshots[].Progress"],
            return_key="snapshot_id",
            return_value=snapshot_id,
            waiter_delay=waiter_delay,
            waiter_max_attempts=waiter_max_attempts,
            aws_conn_id=aws_conn_id,
            region_name=region_name,
            **kwargs,
        )


class EBSVolumeAvailableTrigger(_EC2ClientWaiterTrigger):
    """Wait for an EBS volume to become ``available`` (botocore's ``volume_available`` waiter).

    :param volume_id: the volume to watch.
    """

    def __init__(self, *, volume_id: str, waiter_delay: int = 5, waiter_max_attempts: int = 720,
                 aws_conn_id: str | None = "aws_default", region_name: str | None = None, **kwargs):
        super().__init__(
            serialized_fields={"volume_id": volume_id},
            waiter_name="volume_available",
            waiter_args={"VolumeIds": [volume_id]},
            failure_message=f"Volume {volume_id} did not become available",
            status_message=f"Volume {volume_id} state",
            status_queries=["Volumes[].State"],
            return_key="volume_id",
            return_value=volume_id,
            waiter_delay=waiter_delay,
            waiter_max_attempts=waiter_max_attempts,
            aws_conn_id=aws_conn_id,
            region_name=region_name,
            **kwargs,
        )
