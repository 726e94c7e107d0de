"""Waiter-based triggers for EC2 images and EBS snapshots (the triggerer loads them from plugins/)."""

from __future__ import annotations

from airflow.providers.amazon.aws.hooks.ec2 import EC2Hook
from airflow.providers.amazon.aws.triggers.base import AwsBaseWaiterTrigger


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
