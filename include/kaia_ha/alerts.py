"""SNS messages to a core cell's operators (IAM: sns:Publish)."""

from __future__ import annotations

import logging

from airflow.providers.amazon.aws.hooks.sns import SnsHook

from kaia_ha.inventory import Cell

log = logging.getLogger(__name__)


def notify(cell: Cell, subject: str, message: str) -> None:
    """Publish to the cell's topic; only logged when the inventory names none. Never pass key material."""
    log.warning("%s: %s", subject, message)
    if cell.sns_topic_arn:
        SnsHook(aws_conn_id=cell.aws_conn_id, region_name=cell.region).publish_to_target(
            target_arn=cell.sns_topic_arn, message=message, subject=subject[:100]
        )
