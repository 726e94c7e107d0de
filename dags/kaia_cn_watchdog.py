"""
# Kaia CN watchdog: notice a dead CN within a minute and open its failover behind one approval

Runs every minute, read only. For each core cell it judges the CN that runs the validator **now** (the live
placement: after a failover the new node is watched) from independent views: the CN over SSH and its console
(answers, kcnd running, node ID, peers, head), its PNs (their head, their CN peers) and, for the cloud, EC2
(instance state and status checks). A few rounds per run, `watchdog.round_seconds` apart (10 s), each a short
reschedule-mode poke: no worker slot is held between rounds.

| verdict | when | what happens |
|---|---|---|
| healthy | every view agrees | nothing |
| degraded | a bad round not yet repeated, or a PN gives no view (a pre-snapshot) | logged |
| dead | `watchdog.dead_after_rounds` (3) consecutive bad rounds | an approval run (below) |

On dead: a run of `kaia_cn_failover_approval` sends the SNS alert with the evidence and asks "Fail over VALIDATOR
now?" in *Required actions*.

Raised at once by SNS (no rounds): the CN runs another node ID than its validator's (a regenerated key), it has PN
peers but no CN peers (the other validators do not accept it), a fenced node is alive again.

One approval per validator at a time: while one is open only the alert repeats (every
`watchdog.repeat_alert_minutes`); after a rejection or a timeout nothing changes, and while the CN stays dead a new
approval comes with the next repeat. Quiet while a failover of that validator (or any run of its failover DAG) is
queued or running. `watchdog.auto_failover: true` on a cell starts the failover without asking.

The per-cell round counter is in the state store beside the live placement (`_watchdog/<cell>.json`).

## When it fails
A watch task that fails (the state store or the inventory unreadable) sends the usual failure alert; the next
minute's run starts afresh. The watchdog changes nothing on the cell, so clearing is always safe.
"""

from __future__ import annotations

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, PokeReturnValue, TaskGroup, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from kaia_ha import watchdog
from kaia_ha.model.inventory import try_load_inventory
from kaia_ha_airflow.dag_defaults import RESCHEDULE_MIN_SECONDS, core_cell_dag, runbook

inventory, INVENTORY_ERROR = try_load_inventory()  # broken: one task, which fails with the error
RUN_SECONDS = 45  # the rounds of one run fit in its minute, so the next run starts on time


def watch_task(cell):
    # The poke interval is the cell's round period; the sensor ends on a dead verdict or after its rounds.
    # Rounds closer than RESCHEDULE_MIN_SECONDS poke inside one task (see dag_defaults: a reschedule race).
    mode = "reschedule" if cell.watchdog.round_seconds >= RESCHEDULE_MIN_SECONDS else "poke"

    @task.sensor(task_id="watch", poke_interval=cell.watchdog.round_seconds, timeout=300, mode=mode)
    def watch(cell_name: str) -> PokeReturnValue:
        context = get_current_context()
        verdict = watchdog.watch_round(cell_name, context["run_id"])
        per_run = context["params"].get("rounds_per_run") or max(1, int(RUN_SECONDS // cell.watchdog.round_seconds))
        return PokeReturnValue(is_done=watchdog.round_done(verdict, per_run), xcom_value=verdict)

    return watch(cell.name)


@task.short_circuit(task_id="decide")
def decide(verdict: dict) -> dict | None:
    return watchdog.decide(verdict, get_current_context()["ti"])


@task(retries=0)
def inventory_broken() -> None:
    raise AirflowFailException(INVENTORY_ERROR)


@dag(
    dag_id=watchdog.DAG_ID,
    schedule="* * * * *",
    doc_md=runbook(__doc__, INVENTORY_ERROR),
    render_template_as_native_obj=True,  # the approval's conf is a dict from XCom
    **core_cell_dag(tags=["watchdog", "detection"], retries=1),
    params={
        "rounds_per_run": Param(None, type=["null", "integer"], minimum=1, title="Rounds in this run",
                                description="Default: as many as fit in 45 s at the cell's round_seconds."),
    },
)
def kaia_cn_watchdog():
    if inventory is None:
        inventory_broken()
        return
    for cell in inventory.cells:
        with TaskGroup(cell.name, tooltip=f"core cell {cell.name}: validator {cell.validator.name}"):
            request = decide(watch_task(cell))
            request >> TriggerDagRunOperator(
                task_id="open_approval",
                trigger_dag_id=watchdog.APPROVAL_DAG_ID,
                trigger_run_id=f"{{{{ ti.xcom_pull(task_ids='{cell.name}.decide')['run_id'] }}}}",
                conf=f"{{{{ ti.xcom_pull(task_ids='{cell.name}.decide')['conf'] }}}}",
                skip_when_already_exists=True,  # a retry, or a second watcher, finds the approval open
            )


kaia_cn_watchdog()
