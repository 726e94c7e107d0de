"""
# Kaia CN watchdog: notice a dead CN within a minute and open its failover behind one approval

Runs every minute, read only. For each core cell it judges the CN that runs the validator **now** (the live
placement: after a failover the new node is watched) from independent views: the CN over SSH and its console
(answers, kcnd running, node ID, peers, head), its PNs (their head, their CN peers) and, for the cloud, EC2
(instance state and status checks). A few rounds per run, `watchdog.round_seconds` apart (10 s). One `watch` task
for all the cells: each of its pokes is one round over every cell at once (in threads), a short reschedule-mode poke,
so no worker slot is held between rounds. It pokes at the smallest `round_seconds` of the cells (below 10 s it pokes
inside one task instead); a cell with a longer period is probed when due. Its XCom is each cell's latest verdict by
cell name; per cell, `<cell>.decide` reads its own and `<cell>.open_approval` opens the approval. The run's watch
ends as soon as a cell turns dead (its approval is asked at once), else after its rounds: a cell that stays dead (its
approval open, its failover running) does not cut the other cells' rounds short.

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

The per-cell round counter, its last round's time and verdict are in the state store beside the live placement
(`_watchdog/<cell>.json`).

## When it fails
One cell whose round raises is logged in the `watch` task's log and counted as a bad round of that cell; the other
cells are judged as usual. The `watch` task fails (the usual failure alert) only when no cell's round could be done
(the state store or the inventory unreadable); the next minute's run starts afresh. The watchdog changes nothing on
the cell, so clearing is always safe.
"""

from __future__ import annotations

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, PokeReturnValue, TaskGroup, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from kaia_ha import watchdog
from kaia_ha.model.inventory import try_load_inventory
from kaia_ha_airflow.dag_defaults import core_cell_dag, runbook, wait

inventory, INVENTORY_ERROR = try_load_inventory()  # broken: one task, which fails with the error


def watch_task(cells: list):
    """One sensor for every cell: each poke is one round over all of them at once; it pokes at the smallest round
    period (reschedule mode only from RESCHEDULE_MIN_SECONDS: see dag_defaults) and ends when a cell has just turned
    dead or once every cell has had its rounds."""
    names, every_run = [cell.name for cell in cells], watchdog.every_run(cells)

    @task.sensor(task_id="watch", timeout=300, **wait(watchdog.poke_seconds(cells)))
    def watch() -> PokeReturnValue:
        context = get_current_context()
        verdicts = watchdog.watch_cells(context["run_id"], names, context["params"].get("rounds_per_run"))
        return PokeReturnValue(is_done=watchdog.cells_done(verdicts, names, every_run), xcom_value=verdicts)

    return watch()


@task.short_circuit(task_id="decide")
def decide(verdicts: dict, cell_name: str) -> dict | None:
    verdict = verdicts.get(cell_name)  # none: the cell was not judged in this run (not due yet when it ended)
    return watchdog.decide(verdict, get_current_context()["ti"]) if verdict else None


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
                                description="Per cell. Default: as many as fit in 45 s at the cell's round_seconds."),
    },
)
def kaia_cn_watchdog():
    if inventory is None:
        inventory_broken()
        return
    verdicts = watch_task(inventory.cells)
    for cell in inventory.cells:
        with TaskGroup(cell.name, tooltip=f"core cell {cell.name}: validator {cell.validator.name}"):
            request = decide(verdicts, cell.name)
            request >> TriggerDagRunOperator(
                task_id="open_approval",
                trigger_dag_id=watchdog.APPROVAL_DAG_ID,
                trigger_run_id=f"{{{{ ti.xcom_pull(task_ids='{cell.name}.decide')['run_id'] }}}}",
                conf=f"{{{{ ti.xcom_pull(task_ids='{cell.name}.decide')['conf'] }}}}",
                skip_when_already_exists=True,  # a retry, or a second watcher, finds the approval open
            )


kaia_cn_watchdog()
