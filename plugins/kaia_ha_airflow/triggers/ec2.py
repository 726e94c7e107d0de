"""Waiter-based triggers for EBS snapshots and volumes (the triggerer loads them from plugins/)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

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
    """One EC2 resource reaching a state through botocore's waiter; a subclass names the waiter and the resource.
    Rebuilt by the triggerer from its serialized fields (the resource id under ``key``, and the common ones)."""

    waiter: ClassVar[str]  # botocore's waiter name
    key: ClassVar[str]  # the id's parameter and the event's return key, e.g. snapshot_id
    ids_arg: ClassVar[str]  # the Describe* argument listing ids, e.g. SnapshotIds
    what: ClassVar[str]
    done: ClassVar[str]  # for the failure message: "did not <done>"
    status: ClassVar[list[str]]  # what the trigger logs while it waits

    def __init__(self, *, waiter_delay: int, waiter_max_attempts: int, aws_conn_id: str | None = "aws_default",
                 region_name: str | None = None, **kwargs):
        resource_id = kwargs.pop(self.key)
        super().__init__(
            serialized_fields={self.key: resource_id},
            waiter_name=self.waiter,
            waiter_args={self.ids_arg: [resource_id]},
            failure_message=f"{self.what} {resource_id} did not {self.done}",
            status_message=f"{self.what} {resource_id} state",
            status_queries=self.status,
            return_key=self.key,
            return_value=resource_id,
            waiter_delay=waiter_delay,
            waiter_max_attempts=waiter_max_attempts,
            aws_conn_id=aws_conn_id,
            region_name=region_name,
            **kwargs,
        )

    def hook(self) -> EC2Hook:
        return EC2Hook(api_type="client_type", **self._hook_parameters)


class EBSSnapshotCompletedTrigger(_EC2ClientWaiterTrigger):
    """Wait for an EBS snapshot (``snapshot_id``) to reach ``completed``."""

    waiter, key, ids_arg, what, done = "snapshot_completed", "snapshot_id", "SnapshotIds", "Snapshot", "complete"
    status = ["Snapshots[].State", "Snapshots[].Progress"]


class EBSVolumeAvailableTrigger(_EC2ClientWaiterTrigger):
    """Wait for an EBS volume (``volume_id``) to become ``available``."""

    waiter, key, ids_arg, what, done = "volume_available", "volume_id", "VolumeIds", "Volume", "become available"
    status = ["Volumes[].State"]
