"""
# Kaia CN maintenance: keep every core cell ready for a failover

A failover is only as fast and as safe as what was prepared before the incident. For every core cell
in the inventory this DAG keeps:

1. **Nodekey backup** - the active CN's `nodekey` and `bls-nodekey`, read from the path the running
   node actually uses, checked against `admin.nodeInfo.id`, kept in Secrets Manager. Written only when
   missing or changed; a change raises an SNS alert (a changed key on a running validator is an
   incident of its own).
2. **CN image** (cloud cells) - a new AMI when `kcnd.conf` or the kcn version changed, or the newest
   image is too old. The DATA_DIR volume is left out (`NoDevice`); the CN is not rebooted.
3. **PN pre-snapshot** (cloud cells) - one PN at a time: `kpnd` gets a SIGTERM and up to the inventory's
   `pn_stop_limit_seconds` to stop on its own (never killed), its clean stop proven, the DATA_DIR volume
   snapshotted, and `kpnd` started again as soon as the snapshot is pending (a teardown: it runs whatever
   failed before it). The snapshot completes in the background. A PN that does not stop in time is
   started again at once, skipped this round with an SNS alert, and the next PN of the cell is snapshotted.
4. **Retention** - the newest images and snapshots are kept as the inventory says; the newest usable
   one and anything a failover run uses (`kaia:in-use-by`) are never deleted.
5. **Report** - under `$AIRFLOW_HOME/reports/kaia_cn_maintenance/`, named after the run id made file-safe;
   the `report` task log prints the path and the report.

## When it fails
- Read the `report` task log: it names every failed task and why.
- **A PN must never stay stopped**: if `start_kpnd` failed, the report and the alert begin with
  "URGENT: kpnd on PN ... may still be stopped". Start it by hand now (`sudo systemctl start kpnd` on
  that PN) or clear `start_kpnd`, and check it syncs.
- Fix the cause, then *Clear* the failed task: every task finds what an earlier try made
  (images by name, snapshots by run tags, secrets by value) and does not make it twice.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, PokeReturnValue, TaskGroup, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from kaia_ha import dag_ids, maintenance, pn
from kaia_ha.model.inventory import DEFAULT_MAINTENANCE_SCHEDULE, try_load_inventory
from kaia_ha_airflow.dag_defaults import SHORT_WAIT, core_cell_dag, local, runbook
from kaia_ha_airflow.operators.ec2 import (
    EBSCreateSnapshotOperator,
    EBSDeleteSnapshotOperator,
    EC2CreateImageOperator,
    EC2DeregisterImageOperator,
)
from kaia_ha_airflow.sensors.ec2 import EBSSnapshotCompletedSensor

inventory, INVENTORY_ERROR = try_load_inventory()  # broken: only the report, which fails with the error
CELLS = inventory.cells if inventory else []


def _run() -> tuple[str, pendulum.DateTime]:
    context = get_current_context()
    return context["run_id"], context["dag_run"].run_after


@task(task_id=local(maintenance.BACKUP_TASK))
def backup_nodekey(cell_name: str) -> dict:
    return maintenance.backup_nodekey(cell_name, _run()[0])


@task(task_id=local(maintenance.IMAGE_PLAN_TASK), multiple_outputs=True)
def image_plan(cell_name: str) -> dict:
    return maintenance.image_plan(cell_name, *_run())


@task.short_circuit(ignore_downstream_trigger_rules=False)
def image_needed(create: bool) -> bool:
    return create


def _failover_running() -> bool:
    return get_current_context()["ti"].get_dr_count(dag_id=dag_ids.FAILOVER_CLOUD, states=["running"]) > 0


@task(task_id=local(maintenance.PN_PLAN_TASK), multiple_outputs=True)
def pn_snapshot_plan(cell_name: str) -> dict:
    return maintenance.pn_snapshot_plan(cell_name, _run()[0], failover_running=_failover_running())


@task(task_id=local(maintenance.STOP_KPND_TASK), pool=pn.PN_DOWNTIME_POOL, multiple_outputs=True)
def stop_kpnd(cell_name: str, plan: dict) -> dict:
    ti = get_current_context()["ti"]
    if ti.try_number == 1 and _failover_running():  # again, in the pool slot: a failover may have begun since the plan
        raise AirflowSkipException("a cloud failover began: no PN goes down for a pre-taken snapshot meanwhile")
    return pn.stop_pn(cell_name, plan["pn"], ti=ti, tags=plan["tags"])


@task(task_id=local(maintenance.START_KPND_TASK), retries=5)
def start_kpnd(cell_name: str) -> dict:
    ti = get_current_context()["ti"]
    return pn.start_pn(cell_name, ti=ti, stop_task=f"{cell_name}.{maintenance.STOP_KPND_TASK}")


@task.sensor(task_id="kpnd_back", poke_interval=2, timeout=900, **SHORT_WAIT)
def kpnd_back(cell_name: str, started: dict) -> PokeReturnValue:
    back = pn.pns_back(cell_name, started)
    return PokeReturnValue(is_done=back is not None, xcom_value=back)


@task(task_id=local(maintenance.SNAPSHOT_DONE_TASK))
def snapshot_done(snapshot_id: str) -> dict:
    return {"snapshot_id": snapshot_id, "completed_at": pendulum.now().timestamp()}


@task(task_id=local(maintenance.OLD_IMAGES_TASK), trigger_rule="all_done")
def images_to_delete(cell_name: str) -> list[str]:
    return maintenance.images_to_delete(cell_name, _run()[1])


@task(task_id=local(maintenance.OLD_SNAPSHOTS_TASK), trigger_rule="all_done")
def snapshots_to_delete(cell_name: str) -> list[str]:
    return maintenance.snapshots_to_delete(cell_name, _run()[1])


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
    for cell in CELLS:
        aws = {"aws_conn_id": cell.aws_conn_id, "region_name": cell.region}
        with TaskGroup(cell.name, tooltip=f"core cell {cell.name} ({cell.scheme})"):
            with TaskGroup("nodekey_backup"):
                backup_nodekey(cell.name) >> final
            if cell.scheme != "cloud":
                continue
            with TaskGroup("cn_image"):
                plan = image_plan(cell.name)
                image = EC2CreateImageOperator(
                    task_id=local(maintenance.CREATE_IMAGE_TASK), instance_id=plan["instance_id"],
                    image_name=plan["name"],
                    exclude_devices=plan["exclude_devices"], image_tags=plan["tags"],
                    # NoReboot: this is the running validator; a reboot costs proposals. The root volume holds
                    # only config and binaries (DATA_DIR is excluded), so a crash-consistent copy is enough.
                    no_reboot=True, waiter_delay=5, **aws,
                )
                image_needed(plan["create"]) >> image
            with TaskGroup("pn_snapshot"):
                snap_plan = pn_snapshot_plan(cell.name)
                stop = stop_kpnd(cell.name, snap_plan)
                snapshot = EBSCreateSnapshotOperator(  # of the PN the stop chose: the plan's, or the next one
                    task_id=local(maintenance.CREATE_SNAPSHOT_TASK), volume_id=stop["volume_id"],
                    snapshot_tags=stop["tags"],
                    description=f"Kaia PN chain data ({cell.name})", **aws,
                )
                # stop is a setup too: clearing a failed create_snapshot stops kpnd again first (else the clear would
                # snapshot the PN the teardown restarted: a dirty snapshot tagged clean-stop).
                start = start_kpnd(cell.name)
                start.as_teardown(setups=[snap_plan, stop], on_failure_fail_dagrun=True)
                stop >> snapshot >> start >> kpnd_back(cell.name, start) >> final  # the report says if the PN is down
                wait = EBSSnapshotCompletedSensor(task_id="wait_snapshot", snapshot_id=snapshot.output, waiter_delay=5,
                                                  **aws)
                done = snapshot_done(wait.output)
            with TaskGroup("retention"):
                old_images, old_snapshots = images_to_delete(cell.name), snapshots_to_delete(cell.name)
                image >> old_images
                done >> old_snapshots
                (EC2DeregisterImageOperator.partial(task_id="deregister_images", **aws)
                 .expand(image_id=old_images) >> final)
                (EBSDeleteSnapshotOperator.partial(task_id="delete_snapshots", **aws)
                 .expand(snapshot_id=old_snapshots) >> final)


kaia_cn_maintenance()
