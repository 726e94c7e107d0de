"""Operators for EC2 images and EBS snapshots, in the Amazon provider's style (their waits: ``sensors.ec2``).

Each is idempotent under retry and clear (it finds what an earlier try made), waits by deferral to a
waiter-based trigger. Their AWS calls are the hook's, which declares their IAM actions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields

from kaia_ha_airflow.hooks.ec2 import CoreCellEC2Hook
from kaia_ha_airflow.iam import needs
from kaia_ha_airflow.triggers.ec2 import EC2ImageAvailableTrigger, attempts, completed


@needs("ec2:DescribeImages")  # the wait without deferral; the calls themselves are the hook's
class EC2CreateImageOperator(AwsBaseOperator[CoreCellEC2Hook]):
    """Create an AMI of an instance, leaving out the listed devices, and wait until it is available.

    A retry finds the image by its name (names are unique per account) instead of making another.

    :param instance_id: the instance to image.
    :param image_name: unique name; derive it from the run id so every try uses the same one.
    :param exclude_devices: devices mapped ``NoDevice`` (the CN's DATA_DIR volume).
    :param image_tags: tags for the image and its snapshots.
    :param no_reboot: keep the instance running while the image is taken.
    """

    aws_hook_class = CoreCellEC2Hook
    template_fields: Sequence[str] = aws_template_fields("instance_id", "image_name", "exclude_devices", "image_tags")

    def __init__(self, *, instance_id: str, image_name: str, exclude_devices: Sequence[str] = (),
                 image_tags: dict[str, str] | None = None, no_reboot: bool = True, wait_for_completion: bool = True,
                 deferrable: bool = True, waiter_delay: int = 30, max_wait_hours: float = 6, **kwargs):
        super().__init__(**kwargs)
        self.instance_id = instance_id
        self.image_name = image_name
        self.exclude_devices = exclude_devices
        self.image_tags = image_tags or {}
        self.no_reboot = no_reboot
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.waiter_delay = waiter_delay
        # The image's root-volume snapshot is a first, full one on a new CN: it can take an hour or more.
        self.waiter_max_attempts = attempts(max_wait_hours, waiter_delay)

    def execute(self, context) -> str:
        image_id, created = self.hook.create_image(
            instance_id=self.instance_id, name=self.image_name, exclude_devices=list(self.exclude_devices),
            tags=self.image_tags, no_reboot=self.no_reboot, description=f"Kaia CN image of {self.instance_id}",
        )
        self.log.info("%s image %s (%s) of %s without %s", "Created" if created else "Found", image_id,
                      self.image_name, self.instance_id, list(self.exclude_devices) or "no device")
        if not self.wait_for_completion:
            return image_id
        if self.deferrable:
            self.defer(
                trigger=EC2ImageAvailableTrigger(
                    image_id=image_id, waiter_delay=self.waiter_delay, waiter_max_attempts=self.waiter_max_attempts,
                    aws_conn_id=self.aws_conn_id, region_name=self.region_name, verify=self.verify,
                    botocore_config=self.botocore_config,
                ),
                method_name="execute_complete",
            )
        self.hook.conn.get_waiter("image_available").wait(
            ImageIds=[image_id], WaiterConfig={"Delay": self.waiter_delay, "MaxAttempts": self.waiter_max_attempts}
        )
        return image_id

    def execute_complete(self, context, event: dict[str, Any] | None = None) -> str:
        return completed(event, "image_id")


class EBSCreateSnapshotOperator(AwsBaseOperator[CoreCellEC2Hook]):
    """Snapshot an EBS volume once per run; returns as soon as the snapshot is ``pending``.

    The volume may be used again at once (the snapshot is point in time), so by default this does not
    wait: pair it with ``sensors.ec2.EBSSnapshotCompletedSensor``. A retry finds the snapshot by its run tags.

    :param volume_id: the volume to snapshot.
    :param snapshot_tags: tags, including the run id, by which a retry finds the snapshot.
    """

    aws_hook_class = CoreCellEC2Hook
    template_fields: Sequence[str] = aws_template_fields("volume_id", "snapshot_tags", "description")

    def __init__(self, *, volume_id: str, snapshot_tags: dict[str, str], description: str = "", **kwargs):
        super().__init__(**kwargs)
        self.volume_id = volume_id
        self.snapshot_tags = snapshot_tags
        self.description = description

    def execute(self, context) -> str:
        snapshot, created = self.hook.create_snapshot(
            volume_id=self.volume_id, tags=self.snapshot_tags,
            description=self.description or f"chain data of {self.volume_id}"
        )
        self.log.info("%s snapshot %s of %s (%s)", "Created" if created else "Found", snapshot["SnapshotId"],
                      self.volume_id, snapshot.get("State"))
        return snapshot["SnapshotId"]


class EC2DeregisterImageOperator(AwsBaseOperator[CoreCellEC2Hook]):
    """Deregister an AMI and delete its snapshots. Already gone counts as done.

    """

    aws_hook_class = CoreCellEC2Hook
    template_fields: Sequence[str] = aws_template_fields("image_id")

    def __init__(self, *, image_id: str, **kwargs):
        super().__init__(**kwargs)
        self.image_id = image_id

    def execute(self, context) -> str:
        deleted = self.hook.deregister_image(self.image_id)
        self.log.info("Image %s %s", self.image_id,
                      "deregistered with its snapshots" if deleted else "was already gone")
        return self.image_id


class EBSDeleteSnapshotOperator(AwsBaseOperator[CoreCellEC2Hook]):
    """Delete an EBS snapshot. Already gone counts as done."""

    aws_hook_class = CoreCellEC2Hook
    template_fields: Sequence[str] = aws_template_fields("snapshot_id")

    def __init__(self, *, snapshot_id: str, **kwargs):
        super().__init__(**kwargs)
        self.snapshot_id = snapshot_id

    def execute(self, context) -> str:
        deleted = self.hook.delete_snapshot(self.snapshot_id)
        self.log.info("Snapshot %s %s", self.snapshot_id, "deleted" if deleted else "was already gone")
        return self.snapshot_id
