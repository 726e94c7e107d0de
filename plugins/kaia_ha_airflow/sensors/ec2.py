"""Sensors for EBS snapshots and volumes, in the Amazon provider's style: a first poke on a worker (a resource that
is already there costs no deferral), then a waiter-based trigger, so that no worker slot is held while AWS works."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from airflow.providers.amazon.aws.sensors.base_aws import AwsBaseSensor
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields
from airflow.providers.common.compat.sdk import AirflowException

from kaia_ha_airflow.hooks.ec2 import CoreCellEC2Hook
from kaia_ha_airflow.iam import needs
from kaia_ha_airflow.triggers.ec2 import EBSSnapshotCompletedTrigger, EBSVolumeAvailableTrigger, attempts, completed


class _EBSWaitSensor(AwsBaseSensor[CoreCellEC2Hook]):
    """One EBS resource reaching ``done_state``; ``error`` fails at once. Subclasses name the resource."""

    aws_hook_class = CoreCellEC2Hook
    key: ClassVar[str]  # snapshot_id or volume_id: the id parameter, the trigger's return key
    done_state: ClassVar[str]
    trigger_class: ClassVar[type]

    def __init__(self, *, deferrable: bool, waiter_delay: int, max_wait_hours: float, **kwargs):
        super().__init__(**kwargs)
        self.deferrable = deferrable
        self.waiter_delay = waiter_delay
        self.waiter_max_attempts = attempts(max_wait_hours, waiter_delay)

    @property
    def resource_id(self) -> str:
        return getattr(self, self.key)

    def describe(self) -> dict:
        raise NotImplementedError

    def poke(self, context) -> bool:
        resource = self.describe()
        if resource["State"] == "error":
            raise AirflowException(f"{self.resource_id} failed: {resource.get('StateMessage', 'error')}")
        self.log.info("%s: %s %s", self.resource_id, resource["State"], resource.get("Progress", ""))
        return resource["State"] == self.done_state

    def execute(self, context) -> str:
        if not self.deferrable:
            super().execute(context)
        elif not self.poke(context):
            self.defer(
                trigger=self.trigger_class(
                    **{self.key: self.resource_id}, waiter_delay=self.waiter_delay,
                    waiter_max_attempts=self.waiter_max_attempts, aws_conn_id=self.aws_conn_id,
                    region_name=self.region_name, verify=self.verify, botocore_config=self.botocore_config,
                ),
                method_name="execute_complete",
            )
        return self.resource_id

    def execute_complete(self, context, event: dict[str, Any] | None = None) -> str:
        return completed(event, self.key)


@needs("ec2:DescribeSnapshots")
class EBSSnapshotCompletedSensor(_EBSWaitSensor):
    """Wait for a snapshot to complete, deferred so that no worker slot is held for hours.

    :param snapshot_id: the snapshot to wait for.
    """

    template_fields: Sequence[str] = aws_template_fields("snapshot_id")
    key, done_state, trigger_class = "snapshot_id", "completed", EBSSnapshotCompletedTrigger

    # A PN's first snapshot copies the whole volume: ~33 h for 4,000 GiB at the README's modelled rate.
    def __init__(self, *, snapshot_id: str, deferrable: bool = True, waiter_delay: int = 30,
                 max_wait_hours: float = 48, **kwargs):
        super().__init__(deferrable=deferrable, waiter_delay=waiter_delay, max_wait_hours=max_wait_hours, **kwargs)
        self.snapshot_id = snapshot_id

    def describe(self) -> dict:
        return self.hook.conn.describe_snapshots(SnapshotIds=[self.snapshot_id])["Snapshots"][0]


@needs("ec2:DescribeVolumes")
class EBSVolumeAvailableSensor(_EBSWaitSensor):
    """Wait for a new volume to become ``available`` (minutes at most; from a snapshot it is usable at once after).

    :param volume_id: the volume to wait for.
    """

    template_fields: Sequence[str] = aws_template_fields("volume_id")
    key, done_state, trigger_class = "volume_id", "available", EBSVolumeAvailableTrigger

    def __init__(self, *, volume_id: str, deferrable: bool = True, waiter_delay: int = 5, max_wait_hours: float = 1,
                 **kwargs):
        super().__init__(deferrable=deferrable, waiter_delay=waiter_delay, max_wait_hours=max_wait_hours, **kwargs)
        self.volume_id = volume_id

    def describe(self) -> dict:
        return self.hook.conn.describe_volumes(VolumeIds=[self.volume_id])["Volumes"][0]
