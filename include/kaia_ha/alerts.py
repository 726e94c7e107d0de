"""SNS messages to a core cell's operators."""

from __future__ import annotations

import logging

from airflow.providers.amazon.aws.hooks.sns import SnsHook

from kaia_ha.model.inventory import Cell
from kaia_ha_airflow.iam import needs

log = logging.getLogger(__name__)


@needs("sns:Publish")
def notify(cell: Cell, subject: str, message: str) -> None:
    """Publish to the cell's topic; only logged when the inventory names none. Never pass key material."""
    log.warning("%s: %s", subject, message)
    if cell.sns_topic_arn:
        SnsHook(aws_conn_id=cell.aws_conn_id, region_name=cell.region).publish_to_target(
            target_arn=cell.sns_topic_arn, message=message, subject=subject[:100]
        )


def alert(cell: Cell, subject: str, message: str) -> str | None:
    """``notify`` for a report: a failure to send is said, never raised, so it cannot replace the run's verdict.
    Returns None when sent (or only logged, with no topic), else a line saying it was NOT sent and why."""
    try:
        notify(cell, subject, message)
    except Exception as exc:  # SNS, its connection or its credentials: the verdict must still reach the operator
        why = f"the SNS alert was NOT sent to {cell.sns_topic_arn} ({type(exc).__name__}: {exc})"
        log.error("%s; it said: %s: %s", why, subject, message)
        return why
    return None
