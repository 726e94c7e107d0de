"""
# Kaia CN maintenance: keep every core cell ready for a failover

A failover is only as fast and as safe as what was prepared before the incident. For every core cell
in the inventory this DAG keeps the four things below. Each task is one step over **every core cell at once**
(12 tasks, whatever the number of cells): a step tries every cell, fails naming the cells it failed in, and the
next step goes on with the cells that this one did. The task log and the report say per cell what happened.

1. **Nodekey backup** - the active CN's `nodekey` and `bls-nodekey`, read from the path the running
   node actually uses, checked against `admin.nodeInfo.id`, kept in Secrets Manager. Written only when
   missing or changed; a change raises an SNS alert (a changed key on a running validator is an
   incident of its own).
2. **CN image** (cloud cells) - a new AMI when `kcnd.conf` or the kcn version changed, or the newest
   image is too old. The DATA_DIR volume is left out (`NoDevice`); the CN is not rebooted.
3. **PN pre-snapshot** (cloud cells) - one PN per cell at a time: `kpnd` gets a SIGTERM and up to the inventory's
   `pn_stop_limit_seconds` to stop on its own (never killed), its clean stop proven, the DATA_DIR volume
   snapshotted in the same task, and `kpnd` started again as soon as the snapshot is pending (it is point in
   time), in that cell's own thread: a PN is down for its own stop, one API call and its start, whatever the other
   cells do. The teardown `start_kpnd` runs whatever failed before it and starts any PN a dead try left stopped
   (the stop record is kept in the state store, where a retry finds it). The snapshot completes in the
   background. A PN that does not stop in time is started again at once, skipped this round with an SNS alert,
   and the next PN of the cell is snapshotted.
   No PN goes down while a cloud failover runs.
4. **Retention** - the newest images and snapshots are kept as the inventory says; the newest usable
   one and anything a failover run uses (`kaia:in-use-by`) are never deleted.
5. **Report** - under `$AIRFLOW_HOME/reports/kaia_cn_maintenance/`, named after the run id made file-safe;
   the `report` task log prints the path and the report.

## When it fails
- Read the run's **Report** tab (or the `report` task log): it names every failed step, and under each core
  cell the steps that failed there and why.
- **A PN must never stay stopped**: if the stop step's own start and the teardown `start_kpnd` both failed, the
  report and the alert begin with "URGENT: kpnd on PN ... may still be stopped". Start it by hand now
  (`sudo systemctl start kpnd` on that PN) or clear `pn_snapshot.start_kpnd`, and check it syncs. Which PN a run
  stopped and has not started again is kept in the state store (`pn-stops/<cell>/<run>.json`), so a clear of
  either task finds it.
- Fix the cause, then *Clear* the failed task: every task finds what an earlier try made
  (images by name, snapshots by run tags, secrets by value) and does not make it twice; the cells it
  did the first time cost a check each (a PN whose snapshot this run took is not stopped again).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, PokeReturnValue, TaskGroup, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from kaia_ha import dag_ids, maintenance, pn
from kaia_ha.model import tags as T
from kaia_ha.model.inventory import DEFAULT_MAINTENANCE_SCHEDULE, try_load_inventory
from kaia_ha_airflow.dag_defaults import core_cell_dag, local, runbook, wait

inventory, INVENTORY_ERROR = try_load_inventory()  # broken: only the report, which fails with the error
CLOUD = bool(inventory and any(cell.scheme == "cloud" for cell in inventory.cells))
LONG_WAIT = {**wait(10), "exponential_backoff": True, "max_wait": pendulum.duration(minutes=5)}


def _ti():
    return get_current_context()["ti"]


def _run() -> tuple[str, pendulum.DateTime]:
    context = get_current_context()
    return context["run_id"], context["dag_run"].run_after


def _failover_running() -> bool:
    return _ti().get_dr_count(dag_id=dag_ids.FAILOVER_CLOUD, states=["running"]) > 0


@task(task_id=maintenance.BACKUP_TASK)
def nodekey_backup() -> str:
    return maintenance.backup_nodekeys(_ti(), _run()[0])


@task(task_id=local(maintenance.IMAGE_PLAN_TASK))
def image_plan() -> str:
    return maintenance.image_plans(_ti(), *_run())


@task(task_id=local(maintenance.CREATE_IMAGE_TASK), trigger_rule="all_done")
def create_image() -> str:
    return maintenance.create_images(_ti())


@task.sensor(task_id=local(maintenance.IMAGE_READY_TASK), trigger_rule="all_done", timeout=6 * 3600, **LONG_WAIT)
def wait_image() -> PokeReturnValue:
    ready = maintenance.images_ready(_ti())
    return PokeReturnValue(is_done=ready is not None, xcom_value=ready)


@task(task_id=local(maintenance.PN_PLAN_TASK))
def pn_snapshot_plan() -> str:
    return maintenance.snapshot_plans(_ti(), _run()[0], failover_running=_failover_running())


@task(task_id=local(maintenance.SNAPSHOT_TASK), pool=pn.PN_DOWNTIME_POOL, trigger_rule="all_done")
def stop_and_snapshot() -> str:
    # Again, in the pool slot, on every try: a failover may have begun since. A retry then only starts what an
    # earlier try left stopped.
    running = _failover_running()
    if running and _ti().try_number == 1:
        raise AirflowSkipException("a cloud failover began: no PN goes down for a pre-taken snapshot meanwhile")
    return maintenance.stop_and_snapshot(_ti(), _run()[0], failover_running=running)


@task(task_id=local(maintenance.START_KPND_TASK), retries=5)
def start_kpnd() -> str:
    return maintenance.start_kpnds(_ti(), _run()[0])


@task.sensor(task_id=local(maintenance.KPND_BACK_TASK), timeout=900, **wait(2))
def kpnd_back() -> PokeReturnValue:
    back = maintenance.kpnds_back(_ti(), _run()[0])
    return PokeReturnValue(is_done=back is not None, xcom_value=back)


# A first snapshot of a 4,000 GiB volume takes about 33 h; an image's first, full root-volume snapshot up to hours.
@task.sensor(task_id=local(maintenance.SNAPSHOT_DONE_TASK), trigger_rule="all_done", timeout=48 * 3600, **LONG_WAIT)
def wait_snapshot() -> PokeReturnValue:
    ready = maintenance.snapshots_ready(_ti())
    return PokeReturnValue(is_done=ready is not None, xcom_value=ready)


@task(task_id=local(maintenance.OLD_IMAGES_TASK), trigger_rule="all_done")
def images() -> str:
    return maintenance.retention_cells(_ti(), _run()[1], T.KIND_CN_IMAGE)


@task(task_id=local(maintenance.OLD_SNAPSHOTS_TASK), trigger_rule="all_done")
def snapshots() -> str:
    return maintenance.retention_cells(_ti(), _run()[1], T.KIND_PN_CHAINDATA)


@task(trigger_rule="all_done", retries=0)
def report() -> dict:
    context = get_current_context()
    return maintenance.report(context["ti"], context["dag"].dag_id, context["run_id"])


@dag(
    dag_id=maintenance.DAG_ID,
    schedule=inventory.maintenance_schedule if inventory else DEFAULT_MAINTENANCE_SCHEDULE,
    doc_md=runbook(__doc__, INVENTORY_ERROR),
    **core_cell_dag(tags=["maintenance"], retries=3),
    params={"note": Param("", type="string", title="Note",
                          description="Why this run was started by hand (shown in the report)")},
)
def kaia_cn_maintenance():
    final = report()
    if inventory:
        nodekey_backup() >> final
    if not CLOUD:
        return
    with TaskGroup("cn_image", tooltip="a CN image of each cloud cell's validator, when it changed or is old"):
        image_ready = image_plan() >> create_image() >> wait_image()
    with TaskGroup("pn_snapshot", tooltip="one PN of each cloud cell stopped cleanly, snapshotted, started again"):
        stop = stop_and_snapshot()
        start = start_kpnd()
        # The stop is a setup: clearing it (or a failed start's setup) runs it again first, and it finds the cells
        # whose snapshot this run took (not stopped again).
        start.as_teardown(setups=stop, on_failure_fail_dagrun=True)
        # A teardown runs only if a setup succeeded; the stop fails when any one cell failed or its try died, and a
        # PN a dead try left stopped must still be started: so after the stop, whatever its state.
        start.operator.trigger_rule = "all_done"
        pn_snapshot_plan() >> stop >> start >> kpnd_back() >> final  # the report says if a PN is down
        snapshot_done = start >> wait_snapshot()  # after the start: kpnd is not kept down while AWS copies
    with TaskGroup("retention", tooltip="images and snapshots past the inventory's retention deleted"):
        image_ready >> images() >> final
        snapshot_done >> snapshots() >> final


kaia_cn_maintenance()
