"""
# Kaia CN failover (cloud): replace a failed CN from the CN image and a PN snapshot

**Trigger this when a CN on EC2 is dead.** Choose the failed CN and press *Trigger*. The defaults are
the safe, fast choice: fence the failed CN, use the newest pre-taken PN snapshot if it is recent, no
dry run. Use *dry run* first if you are unsure: it checks everything and changes nothing.

What it does (the Kaia docs' "Machine Image & Snapshot" failover, in the fastest safe order):

1. **Preflight** (changes nothing): the failed CN and its Elastic IP, the newest CN image, the nodekey
   backup (its node ID must be the inventory's `node_id`, when set), the PN's DB flags and kpn version against the
   image, permissions through `DryRun`.
2. **Fence** the failed CN: kcnd stopped and disabled if its host answers, the instance stopped (without
   the OS shutdown unless you ask for a graceful stop: seconds instead of a minute; a stop still hanging
   after 30 s is repeated with `Force`, and the report says so) and confirmed stopped. Without
   confirmation the run stops: never two live nodes with one key. Then
   **defuse** it (beside the IP move): its DATA_DIR volume (and, when its host did not answer over SSH,
   its root volume) is detached, tagged `kaia:fenced-by` and kept, so that starting the instance later can
   never bring the validator key back; stopped replacements of earlier runs get the same.
3. **Chain data**: the newest pre-taken PN snapshot, or a fresh one (kpnd stopped cleanly, snapshot,
   kpnd started again as a teardown), then a volume from it in the replacement's zone. kpnd gets a SIGTERM
   and the inventory's `pn_stop_limit_seconds` to stop on its own, never a kill; a PN that does not is
   started again at once and the next healthy PN of the cell is tried; when none stops, the newest
   pre-taken snapshot is used whatever its age (the report warns, with the blocks the CN must catch up).
4. **Launch** the replacement from the CN image, at the same time as 3.
5. **Attach and mount** the volume at DATA_DIR as soon as the replacement runs; its host key comes from the console
   output (EC2 API), learned while waiting for it to run.
6. **Prune** everything but `klay/chaindata`; DATA_DIR in kcnd.conf checked.
7. **Install the identity**: the failed CN's nodekey and bls-nodekey into `DATA_DIR/klay` (0600,
   atomic), checked on disk.
8. **Move the Elastic IP** to the replacement (as soon as fencing is confirmed and the replacement is up,
   beside 5-7: kcnd stays off there until step 9).
9. **Start kcnd and verify**: the right node ID and BLS key, PN peers and CN peers (the other validators
   accept it; unless the inventory says `network_has_other_cns: false`), not syncing, near a PN's head, still rising.
10. **Record the live placement** (only once the replacement is verified in sync): the validator runs on the
    replacement now, the failed instance is fenced. Maintenance and the next failover act on it; nobody edits
    the inventory. `python -m kaia_ha.live show` prints it.
11. **Report**: timeline, RTO, resource ids, what you must still do. Also sent by SNS.

## If it fails
The `report` task log says which step failed and why. A check that no retry can fix (a wrong key, a
volume not mounted, the Elastic IP elsewhere, kcnd not running) fails its task at once, without
retries. Fix the cause and **Clear** the failed task
(with *Downstream*); do not trigger a new run instead: this run's replacement may already hold the
validator key, and a new run's preflight refuses while it is not stopped. On a clear every step finds
what an earlier try made (the instance by ClientToken, the volume by ClientToken, the snapshot by its
run tags) and never makes it twice. A PN stopped for a
fresh snapshot is always started again (`start_kpnd` is a teardown); should that fail for good, the
report, the alert and the `report` task's error begin with "URGENT: kpnd on PN ... may still be
stopped": start it by hand or clear `start_kpnd` first.
"""

from __future__ import annotations

from airflow.sdk import Param, PokeReturnValue, TaskGroup, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from kaia_ha import failover_cloud as steps
from kaia_ha import pn
from kaia_ha.model.inventory import InventoryError, try_load_inventory
from kaia_ha.report import record_task
from kaia_ha_airflow.dag_defaults import core_cell_dag, local, runbook, wait
from kaia_ha_airflow.operators.ec2 import EBSCreateSnapshotOperator
from kaia_ha_airflow.sensors.ec2 import EBSSnapshotCompletedSensor, EBSVolumeAvailableSensor

inventory, INVENTORY_ERROR = try_load_inventory()
CLOUD = inventory.cells_of("cloud") if inventory else []
CNS = [cell.validator.name for cell in CLOUD]
PNS = sorted({pn.name for cell in CLOUD for pn in cell.pns})
# Operators and sensors record their step for the report's timeline as @step functions do.
RECORDED = {"on_success_callback": record_task, "on_retry_callback": record_task, "on_failure_callback": record_task}


def _ctx() -> dict:
    return get_current_context()


@task(task_id=steps.PREFLIGHT_TASK, multiple_outputs=True)
def preflight() -> dict:
    context = _ctx()
    try:
        return steps.preflight(context["params"], context["run_id"], context["dag_run"].run_after)
    except (steps.FailoverInputError, steps.TakeoverError, InventoryError) as exc:  # a retry cannot fix bad input
        raise AirflowFailException(str(exc)) from None


@task.short_circuit(ignore_downstream_trigger_rules=False)
def not_dry_run(plan: dict) -> bool:
    return not plan["dry_run"]


@task(task_id=local(steps.FENCE_TASK))
def fence(plan: dict) -> dict:
    return steps.fence(plan)


@task.sensor(task_id=local(steps.WAIT_STOPPED_TASK), timeout=1200, **wait(1))
def wait_stopped(plan: dict, fence_result: dict) -> PokeReturnValue:
    stopped = steps.wait_stopped(plan, fence_result)
    return PokeReturnValue(is_done=stopped is not None, xcom_value=stopped)


@task
def confirm_fenced(plan: dict) -> dict:
    return steps.confirm_fenced(plan)


@task.branch
def chaindata_source(plan: dict) -> str:
    return steps.RESERVE_PN_TASK if steps.needs_fresh_snapshot(plan) else steps.CHAINDATA_SNAPSHOT_TASK


@task(task_id=local(steps.RESERVE_PN_TASK))
def reserve_pn(plan: dict) -> str:
    """The setup that start_kpnd tears down: it changes nothing, so the teardown runs whatever fails after it."""
    return plan["snapshot_pn"]


@task(task_id=local(steps.STOP_KPND_TASK), pool=pn.PN_DOWNTIME_POOL, multiple_outputs=True)
def stop_kpnd(plan: dict) -> dict:
    return steps.stop_snapshot_pn(plan, _ctx()["ti"])


@task(task_id=local(steps.START_KPND_TASK), retries=5)
def start_kpnd(plan: dict) -> dict:
    return pn.start_pn(plan["cell"], ti=_ctx()["ti"], stop_task=steps.STOP_KPND_TASK)


@task(task_id=local(steps.CHAINDATA_SNAPSHOT_TASK), trigger_rule="none_failed_min_one_success")
def chaindata_snapshot(plan: dict) -> dict:
    if plan["dry_run"]:  # its trigger rule would otherwise let it run after the dry-run gate skipped its inputs
        raise AirflowSkipException("dry run")
    ti = _ctx()["ti"]
    fresh = ti.xcom_pull(task_ids=steps.WAIT_SNAPSHOT_TASK, default=None)
    tried = ti.xcom_pull(task_ids=steps.STOP_KPND_TASK, key=pn.ATTEMPTS_KEY, default=None)
    return steps.chaindata_snapshot(plan, fresh, tried)


@task(task_id=local(steps.CREATE_VOLUME_TASK))
def create_volume(plan: dict, snapshot: dict) -> str:
    return steps.create_volume(plan, snapshot)


@task(task_id=local(steps.LAUNCH_TASK))
def launch(plan: dict) -> str:
    # Straight after the preflight, not behind the dry-run gate: one scheduler hop less on the critical path.
    if plan["dry_run"]:
        raise AirflowSkipException("dry run: no replacement launched")
    return steps.launch(plan)


# Poke mode, every second: one worker slot for EC2's ~30 s of pending buys back the hops of a deferral, its
# resumption and a separate task for the host key, all on the critical path.
@task.sensor(task_id=local(steps.WAIT_RUNNING_TASK), timeout=1800, **wait(1), **RECORDED)
def wait_running(plan: dict, instance_id: str) -> PokeReturnValue:
    host = steps.running_host(plan, instance_id)
    return PokeReturnValue(is_done=host is not None, xcom_value=host)


@task
def attach_and_mount(plan: dict, host: dict, volume_id: str) -> dict:
    return steps.attach_and_mount(plan, host, volume_id)


@task
def prune(plan: dict, host: dict) -> dict:
    return steps.prune(plan, host)


@task
def install_keys(plan: dict, host: dict) -> dict:
    return steps.install_keys(plan, host)


@task
def move_ip(plan: dict, host: dict) -> dict:
    return steps.move_ip(plan, host)


@task
def start_kcnd(plan: dict, host: dict) -> dict:
    return steps.start_kcnd(plan, host)


# A slot held while kcnd catches up (seconds from a fresh pre-taken snapshot; longer from an old one).
@task.sensor(task_id=local(steps.IN_SYNC_TASK), timeout=3600, **wait(1))
def in_sync(plan: dict, host: dict) -> PokeReturnValue:
    synced = steps.in_sync(plan, host)
    return PokeReturnValue(is_done=synced is not None, xcom_value=synced)


@task(task_id=local(steps.DEFUSE_TASK))
def defuse(plan: dict, fence_result: dict) -> dict:
    return steps.defuse(plan, fence_result)


@task(task_id=local(steps.RECORD_TASK))
def record_placement(plan: dict, host: dict, fence_result: dict) -> dict:
    return steps.record_placement(plan, host, fence_result)


@task(trigger_rule="all_done", retries=0)
def report() -> dict:
    context = _ctx()
    ti = context["ti"]

    def pull(task_id):
        return ti.xcom_pull(task_ids=task_id, default=None)

    return steps.report(ti, context["dag_run"], pull(steps.PREFLIGHT_TASK), pull(steps.WAIT_RUNNING_TASK),
                        pull(steps.CREATE_VOLUME_TASK), pull(steps.CHAINDATA_SNAPSHOT_TASK))


@dag(
    dag_id=steps.DAG_ID,
    schedule=None,
    doc_md=runbook(__doc__, INVENTORY_ERROR),
    **core_cell_dag(tags=["failover", "cloud"], retries=3),
    params={
        # No CN is preselected: pressing Trigger with the defaults must not fence a healthy validator.
        "failed_cn": Param("", type="string", enum=["", *CNS], title="Failed CN",
                           values_display={"": "Choose the failed CN"},
                           description="The CN that is down. Its nodekey and Elastic IP move to the replacement.",
                           section="What failed"),
        "fence": Param(True, type="boolean", title="Fence the failed CN",
                       description="Stop its kcnd (if reachable) and its instance before the replacement starts. "
                                   "Leave on: two live nodes with one key double-sign.", section="What failed"),
        "graceful_stop": Param(False, type="boolean", title="Stop the failed instance gracefully",
                               description="Off (fast): EC2 stops it without the OS shutdown (SkipOsShutdown); its "
                                           "disk is not reused. On: the OS shuts down first (about a minute longer). "
                                           "Either way a stop that hangs is repeated with Force.",
                               section="What failed"),
        "use_presnapshot": Param(True, type="boolean", title="Use the newest pre-taken PN snapshot",
                                 description="Fast: no PN is stopped now. Off: take a fresh snapshot of a PN.",
                                 section="Chain data"),
        "max_snapshot_age_hours": Param(24, type="number", exclusiveMinimum=0,
                                        title="Oldest acceptable pre-taken snapshot (hours)",
                                        description="Older than this, a fresh snapshot is taken instead (the CN then "
                                                    "has more blocks to catch up).",
                                        section="Chain data"),
        "snapshot_pn": Param("auto", type="string", enum=["auto", *PNS],
                             title="PN to snapshot if a fresh snapshot is needed",
                             description="auto: the inventory's choice, else the first PN of the cell.",
                             section="Chain data"),
        "warmup": Param("none", type="string", enum=list(steps.WARMUP), title="Volume warm-up",
                        values_display={"none": "None (lazy loading)",
                                        "initialization-rate": "Provisioned initialisation rate (300 MiB/s)",
                                        "fast-snapshot-restore": "Fast Snapshot Restore (must be enabled beforehand)",
                                        "read-through": "Read every block after mounting"},
                        description="How the new volume's blocks are fetched from S3 before kcnd reads them.",
                        section="Chain data"),
        "dry_run": Param(False, type="boolean", title="Dry run",
                         description="Check everything and change nothing; the report says what would happen.",
                         section="Run"),
    },
)
def kaia_cn_failover_cloud():
    plan = preflight()
    # The failed CN's own cell's account and region, from the plan: cells may live in other accounts or regions.
    aws = {"aws_conn_id": plan["aws_conn_id"], "region_name": plan["region"]}
    go = not_dry_run(plan)
    final = report()
    with TaskGroup("fence"):
        fenced = confirm_fenced(plan)
        # EC2 forces a stop within minutes: longer, and fencing is stuck.
        fence_result = fence(plan)
        # Polled every 2 s (the stop without the OS shutdown takes seconds); a stop that hangs is repeated with Force.
        go >> fence_result >> wait_stopped(plan, fence_result) >> fenced
        defused = defuse(plan, fence_result)
        fenced >> defused  # beside the IP move and the start, off the critical path
    with TaskGroup("chain_data"):
        source = chaindata_source(plan)
        go >> source
        with TaskGroup("fresh_snapshot"):
            reserved = reserve_pn(plan)
            stop = stop_kpnd(plan)
            snapshot = EBSCreateSnapshotOperator(  # of the PN that stopped: the chosen one, or the next
                task_id="create_snapshot", volume_id=stop["volume_id"], snapshot_tags=stop["tags"],
                description="Kaia PN chain data for a failover", **RECORDED, **aws)
            start = start_kpnd(plan)
            source >> reserved >> stop >> snapshot >> start
            # stop_kpnd is a setup too: clearing a failed create_snapshot then stops kpnd again first. Without it the
            # clear re-ran the snapshot of a PN the teardown had restarted: a dirty snapshot tagged clean-stop.
            start.as_teardown(setups=[reserved, stop], on_failure_fail_dagrun=True)
            waited = EBSSnapshotCompletedSensor(task_id=local(steps.WAIT_SNAPSHOT_TASK), snapshot_id=snapshot.output,
                                                waiter_delay=5, **RECORDED, **aws)
        chosen = chaindata_snapshot(plan)
        [source, waited] >> chosen
        volume = create_volume(plan, chosen)
        # Deferred: in seconds at AWS's pace, and beside the replacement's launch (off the critical path).
        ready = EBSVolumeAvailableSensor(task_id="volume_available", volume_id=volume, waiter_delay=2,
                                         **RECORDED, **aws)
    with TaskGroup("launch"):
        host = wait_running(plan, launch(plan))
    with TaskGroup("replace"):
        mounted = attach_and_mount(plan, host, volume)
        ready >> mounted
        pruned = prune(plan, host)
        keys = install_keys(plan, host)
        mounted >> pruned >> keys
    with TaskGroup("verify"):
        ip = move_ip(plan, host)
        started = start_kcnd(plan, host)
        fenced >> ip
        # The live placement follows the new node only once it is verified in sync (never on a dry or failed run).
        recorded = record_placement(plan, host, fence_result)
        # The IP moves as soon as fencing is confirmed and the replacement is known, beside the disk work: kcnd stays
        # off there (cloud-init) until start_kcnd, which needs both.
        [keys, ip] >> started >> in_sync(plan, host) >> recorded >> final
        defused >> recorded  # the placement names the fenced instance only once it is defused
    [start, fenced] >> final


kaia_cn_failover_cloud()
