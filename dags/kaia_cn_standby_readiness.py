"""
# Kaia standby readiness (bare metal): could each standby take over its active right now?

For every bare-metal core cell in the inventory, read-only over SSH, every hour. For each standby CN of the
live placement:

| check | why |
|---|---|
| active's key backup | the failover installs the active's nodekey and bls-nodekey from Secrets Manager: it must exist and be the node the active runs as |
| own identity | the standby runs its OWN nodekey (never the active's: two live nodes with one key double-sign), and its key file is the one it runs with (a malformed or missing file becomes a new identity at the next start) |
| static-nodes.json | the file the node reads (top level wins over `klay/`) parses, every entry is a `kni://<node id>@<ip>:<port>` URL, and every PN of the cell is listed |
| in sync | the honest check: PN peers, not syncing, near a PN's head, rising |
| kcn version, DB flags and network | the same as the active's: the standby must follow the chain as the active does |
| key path | kcnd.conf's DATA_DIR is the inventory's and no `--nodekey` flag sends the node elsewhere: the failover writes `DATA_DIR/klay/nodekey` |
| floating IP | not configured on the standby (only the active answers for it) |
| starts at boot | kcnd enabled: a rebooted standby keeps syncing |

Drift fails the standby's task and sends an SNS alert naming the check and the fix. The report
(`$AIRFLOW_HOME/reports/kaia_cn_standby_readiness/`, named after the run id made file-safe; the `report`
task log prints the path and the report) lists every check of every standby.

## When it fails
Read the `report` task log, fix what it names on the standby, then *Clear* the failed task. The DAG
changes nothing, so clearing is always safe. If the **active** does not answer, it may be down: fail
over with `kaia_cn_failover_standby`.

It follows the live placement (`python -m kaia_ha.live show`): after a failover it checks the promoted
standby as the active, and alerts "**<cell> has NO standby**" until one is enrolled with
`kaia_cn_enroll_standby`.

It also probes every host that a failover fenced **without SSH** (declared dead, or confirmed down by you):
one that answers again is fenced over SSH at once (kcnd stopped and disabled, keys aside, floating IP
released), the live placement says so, and an alert goes out; **URGENT** (and the run fails) when it came
back running the validator's identity.
"""

from __future__ import annotations

from airflow.sdk import TaskGroup, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from kaia_ha import readiness
from kaia_ha.model.inventory import try_load_inventory
from kaia_ha_airflow.dag_defaults import core_cell_dag, runbook

# Its own DAG rather than a group in kaia_cn_maintenance: it only reads, so it can run every hour (a
# standby that drifted out of sync must be found before the active fails, not at the next daily
# maintenance), and a drift alert neither fails nor waits behind the maintenance's PN snapshot.
SCHEDULE = "@hourly"

inventory, INVENTORY_ERROR = try_load_inventory()  # broken: only the report, which fails with the error


@task(task_id=readiness.ACTIVE_TASK)
def active(cell_name: str) -> dict:
    return readiness.active_facts(cell_name)


# One task per cell for all its standbys: which hosts stand by is live placement (it changes with a failover and an
# enrolment), and a cell with none must alert too.
@task(task_id=readiness.STANDBYS_TASK, trigger_rule="all_done")  # checked also when the active does not answer
def check_standbys(cell_name: str) -> dict:
    facts = get_current_context()["ti"].xcom_pull(task_ids=f"{cell_name}.{readiness.ACTIVE_TASK}", default=None)
    try:
        return readiness.check_standbys(cell_name, facts)
    except readiness.ReadinessError as exc:  # drift, alerted once: a retry would only alert again
        raise AirflowFailException(str(exc)) from None


@task(task_id=readiness.FENCED_TASK)
def watch_fenced(cell_name: str) -> dict:
    try:
        return readiness.watch_fenced(cell_name, get_current_context()["run_id"])
    except readiness.ReadinessError as exc:  # fenced now and alerted URGENT: the run shows red, no retry
        raise AirflowFailException(str(exc)) from None


@task(trigger_rule="all_done", retries=0)
def report() -> dict:
    context = get_current_context()
    return readiness.report(context["ti"], context["dag"].dag_id, context["run_id"])


@dag(
    dag_id=readiness.DAG_ID,
    schedule=SCHEDULE,
    doc_md=runbook(__doc__, INVENTORY_ERROR),
    **core_cell_dag(tags=["bare-metal", "readiness"], retries=2),
)
def kaia_cn_standby_readiness():
    final = report()
    for cell in inventory.cells_of("bare-metal") if inventory else []:
        with TaskGroup(cell.name, tooltip=f"core cell {cell.name}: validator {cell.validator.name}"):
            active(cell.name) >> check_standbys(cell.name) >> final
            watch_fenced(cell.name) >> final


kaia_cn_standby_readiness()
