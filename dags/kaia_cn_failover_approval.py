"""
# Kaia CN failover approval: "fail over VALIDATOR now?"

Opened by `kaia_cn_watchdog` when a validator's CN is dead (one run per validator and incident, named
`watchdog__<validator>__<since>__<n>`); not meant to be triggered by hand (trigger the failover DAG itself instead).

1. **Alert** by SNS with the evidence and the failover it would start.
2. **Approve** in *Required actions* (task `approve`): the body shows the evidence and the failover's parameters.
   The failover then starts as run `approved__<this run>` (the *Triggered DAG* link of task `fail_over`).
   **Reject**, or no answer within the cell's `approval_timeout_minutes`: nothing changes; the watchdog repeats the
   alert, with a new approval, while the CN stays dead. With `auto_failover` on the cell, no question is asked.
3. The failover itself asks what it must (e.g. a bare-metal host that does not answer: confirm it is down).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, dag, get_current_context, task

from kaia_ha import dag_ids, watchdog
from kaia_ha.model.inventory import try_load_inventory
from kaia_ha_airflow.dag_defaults import core_cell_dag, runbook

inventory, INVENTORY_ERROR = try_load_inventory()
# The longest approval_timeout_minutes of any cell: a task's timeout is fixed when the DAG is parsed.
TIMEOUT = max((c.watchdog.approval_timeout_minutes for c in inventory.cells), default=60) if inventory else 60


@task
def alert() -> None:
    watchdog.alert_dead(get_current_context()["params"])


@task.branch
def ask() -> str:
    return "fail_over" if get_current_context()["params"]["auto_failover"] else "approve"


@task
def record() -> dict:
    context = get_current_context()
    params = context["params"]
    return watchdog.record_failover(params["cell"], params["failover_dag_id"], f"approved__{context['run_id']}")


defaults = core_cell_dag(tags=["watchdog", "failover"], retries=2)
defaults["max_active_runs"] = 16  # several validators may be dead at once: one run each


@dag(
    dag_id=watchdog.APPROVAL_DAG_ID,
    schedule=None,
    doc_md=runbook(__doc__, INVENTORY_ERROR),
    render_template_as_native_obj=True,  # the failover's conf is a dict
    **defaults,
    params={
        "cell": Param("", type="string", title="Core cell"),
        "validator": Param("", type="string", title="Validator whose CN is dead"),
        "failover_dag_id": Param("", type="string", enum=["", *dag_ids.FAILOVERS]),
        "evidence": Param("", type="string", title="What the watchdog saw"),
        "auto_failover": Param(False, type="boolean"),
        "failover_conf": Param({}, type="object", title="The failover's parameters"),
    },
)
def kaia_cn_failover_approval():
    approve = ApprovalOperator(
        task_id="approve",
        subject="Fail over {{ params.validator }} now?",
        body=(
            "**The watchdog judges {{ params.validator }} ({{ params.cell }}) dead.**\n\n"
            "```\n{{ params.evidence }}\n```\n\n"
            "**Approve** starts `{{ params.failover_dag_id }}` with `{{ params.failover_conf }}` "
            "(its preflight checks again; it fences the failed node before the key moves).\n\n"
            "**Reject** changes nothing; the alert repeats while the CN stays dead."
        ),
        # A plain timedelta: the task runner cannot send a pendulum Duration to its supervisor when it parks the task
        # (seen through the real scheduler: the approval failed before asking).
        response_timeout=timedelta(minutes=TIMEOUT),
    )
    fail_over = TriggerDagRunOperator(
        task_id="fail_over",
        trigger_dag_id="{{ params.failover_dag_id }}",
        trigger_run_id="approved__{{ run_id }}",
        conf="{{ params.failover_conf }}",
        skip_when_already_exists=True,  # a retry finds the failover started
        trigger_rule="none_failed_min_one_success",  # after the approval, or straight from ask (auto_failover)
    )
    alert() >> ask() >> [approve, fail_over]
    approve >> fail_over >> record()


kaia_cn_failover_approval()
