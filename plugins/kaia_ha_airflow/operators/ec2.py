"""Operators for EBS snapshots, in the Amazon provider's style (their waits: ``sensors.ec2``).

Each is idempotent under retry and clear (it finds what an earlier try made). Their AWS calls are the hook's, which
declares their IAM actions. (The maintenance's images and snapshots are made by its steps over every cell,
``kaia_ha.maintenance``, through the same hook.)
"""

from __future__ import annotations

from collections.abc import Sequence

from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields

from kaia_ha_airflow.hooks.ec2 import CoreCellEC2Hook


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
