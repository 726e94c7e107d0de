"""SNS alerts for failed runs, to every topic the inventory names."""

from __future__ import annotations

import logging

from airflow.providers.amazon.aws.hooks.sns import SnsHook

from kaia_ha.model.inventory import InventoryError, load_inventory
from kaia_ha_airflow.iam import needs

log = logging.getLogger(__name__)


@needs("sns:Publish")
class CoreCellFailureNotifier:
    """Publish "run failed" to each core cell's topic; used as a DAG ``on_failure_callback``.

    The message names the DAG, the run and the failed task with its error (errors of this project
    never carry key material). A plain callable: DAG-level callbacks run where no task template
    environment exists, so nothing here is templated.
    """

    def __call__(self, context) -> None:
        dag_run = context.get("dag_run")
        ti = context.get("ti")
        subject = f"[kaia-ha] {dag_run.dag_id if dag_run else '?'} failed"
        message = (
            f"DAG {dag_run.dag_id if dag_run else '?'} run {dag_run.run_id if dag_run else '?'} failed"
            + (f" at task {ti.task_id}" if ti else "")
            + (f": {context.get('exception')}" if context.get("exception") else "")
            + (f" ({context.get('reason')})" if context.get("reason") else "")
        )
        try:
            topics = {(c.aws_conn_id, c.region, c.sns_topic_arn) for c in load_inventory().cells if c.sns_topic_arn}
        except InventoryError as exc:  # no topics to send to: the log still says why the run failed
            log.error("%s (no alert sent: %s)", message, exc)
            return
        for conn_id, region, arn in sorted(topics):
            try:
                SnsHook(aws_conn_id=conn_id, region_name=region).publish_to_target(target_arn=arn, message=message,
                                                                                   subject=subject[:100])
            except Exception:  # an alert that fails must not hide the failure it reports
                log.exception("could not publish the failure alert to %s", arn)
        log.error("%s", message)
