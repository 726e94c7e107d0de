"""The steps of the maintenance DAG: keep every core cell ready for a failover.

Each task is one step over every core cell at once (``kaia_ha.over_cells``): the per-cell functions below are a
cell's part, the ``*_cells`` and ``*_ready`` functions the tasks. A cell's part takes names and the run id (never
keys), returns a small JSON-safe dict for XCom and the report, and is safe to run again after a retry or a clear. A
step tries every cell, records each cell's outcome (``CELLS_KEY``) and fails if one cell failed; the next step
works on the cells that this one did.
"""

from __future__ import annotations

import hashlib
import logging
import shlex
import time
from datetime import datetime, timedelta, timezone

from airflow.providers.amazon.aws.hooks.secrets_manager import SecretsManagerHook
from airflow.sdk.exceptions import AirflowSkipException

from kaia_ha import dag_ids, live
from kaia_ha.alerts import alert, notify
from kaia_ha.model import compat, retention
from kaia_ha.model import tags as T
from kaia_ha.model.health import Probe
from kaia_ha.model.inventory import Cell, load_inventory
from kaia_ha.model.keys import KeyBackup
from kaia_ha.over_cells import CELLS_KEY, CellSkipped, Outcome, each_cell, shared
from kaia_ha.over_cells import ec2 as ec2_hook
from kaia_ha.pn import (
    ATTEMPTS_KEY,
    STOPPED_KEY,
    KeptRecord,
    first_unhealthy,
    kpnd_urgent,
    pns_back,
    start_recorded,
    stop_cleanly,
)
from kaia_ha.report import step, table, timeline, write
from kaia_ha_airflow.hooks.ec2 import CoreCellEC2Hook
from kaia_ha_airflow.hooks.kaia_node import KaiaNodeHook
from kaia_ha_airflow.iam import needs

log = logging.getLogger(__name__)
DAG_ID = dag_ids.MAINTENANCE
# The DAG's task ids that the steps and the report read: the DAG file names its tasks with these, so each id is
# written once. Each task is a step over every cell.
BACKUP_TASK = "nodekey_backup"
IMAGE_PLAN_TASK, CREATE_IMAGE_TASK, IMAGE_READY_TASK = "cn_image.plan", "cn_image.create_image", "cn_image.wait_image"
PN_PLAN_TASK, SNAPSHOT_TASK = "pn_snapshot.plan", "pn_snapshot.stop_and_snapshot"
START_KPND_TASK, KPND_BACK_TASK, SNAPSHOT_DONE_TASK = (
    "pn_snapshot.start_kpnd", "pn_snapshot.kpnd_back", "pn_snapshot.wait_snapshot")
OLD_IMAGES_TASK, OLD_SNAPSHOTS_TASK = "retention.images", "retention.snapshots"
STEP_TASKS = {"nodekey backup": BACKUP_TASK, "image plan": IMAGE_PLAN_TASK, "image": CREATE_IMAGE_TASK,
              "image ready": IMAGE_READY_TASK, "PN snapshot plan": PN_PLAN_TASK,
              "kpnd stop and snapshot": SNAPSHOT_TASK, "kpnd start": START_KPND_TASK, "kpnd back": KPND_BACK_TASK,
              "snapshot complete": SNAPSHOT_DONE_TASK, "image retention": OLD_IMAGES_TASK,
              "snapshot retention": OLD_SNAPSHOTS_TASK}


class MaintenanceError(RuntimeError):
    pass


def _cell(cell: Cell | str) -> Cell:
    """The cell a step holds already, or one named (a script, a test)."""
    return cell if isinstance(cell, Cell) else load_inventory().cell(cell)


def validator_node(cell: Cell) -> tuple[KaiaNodeHook, str]:
    """SSH to the node that runs the validator now (live placement), and its name for messages."""
    placement = live.current(cell)
    where = placement.active.instance_id or placement.active.host
    return live.active_node(cell, placement), (cell.validator.name if where == cell.validator.name
                                               else f"{cell.validator.name} (on {where})")


# ----- 1. nodekey backup -------------------------------------------------------------------------------------
def read_live_identity(cell: Cell) -> tuple[KeyBackup, Probe, str]:
    """The validator's keys as the node running it now uses them, checked against the node itself."""
    cn = cell.validator
    node, name = validator_node(cell)
    nodekey, path = node.read_key("nodekey")
    if nodekey is None:
        raise MaintenanceError(f"{name}: no nodekey in {cn.data_dir} or {cn.data_dir}/klay")
    bls, _ = node.read_key("bls-nodekey")
    probe = node.probe()
    if probe.node_id != nodekey.node_id:
        raise MaintenanceError(
            f"{name}: the nodekey at {path} (node ID {nodekey.node_id[:16]}…) is not the key the running node "
            f"uses ({probe.node_id[:16]}…): the file changed after kcnd started; not backing it up"
        )
    return KeyBackup(nodekey, bls, probe.bls_public_key, source=name), probe, path


@needs("secretsmanager:GetSecretValue", "secretsmanager:CreateSecret", "secretsmanager:PutSecretValue",
       "secretsmanager:TagResource")
def backup_nodekey(cell: Cell | str, run_id: str) -> dict:
    """Keep the active CN's nodekey and bls-nodekey in Secrets Manager; alert when they changed."""
    cell = _cell(cell)
    cn = cell.validator
    backup, probe, path = read_live_identity(cell)
    if cn.node_id and backup.node_id != cn.node_id:
        notify(cell, f"[kaia-ha] {cn.name} runs with an unexpected node ID",
               f"{cn.name} in {cell.name} runs as node {backup.node_id} but the inventory expects {cn.node_id}. "
               "The validator's identity changed (a regenerated or replaced nodekey). The backup was NOT overwritten.")
        raise MaintenanceError(f"{cn.name}: running node ID {backup.node_id[:16]}… is not the inventory's node_id "
                               f"{cn.node_id[:16]}…")
    client = shared(("secretsmanager", cell.aws_conn_id, cell.region),
                    lambda: SecretsManagerHook(aws_conn_id=cell.aws_conn_id, region_name=cell.region).conn)
    token = T.client_token(run_id, cell.name, cn.name, "nodekey-backup")
    try:
        current = KeyBackup.from_secret_string(client.get_secret_value(SecretId=cn.nodekey_secret_id)["SecretString"],
                                               cn.nodekey_secret_id)
    except client.exceptions.ResourceNotFoundException:
        current = None
    if current is None:
        client.create_secret(
            Name=cn.nodekey_secret_id, SecretString=backup.to_secret_string(), ClientRequestToken=token,
            Description=f"nodekey and bls-nodekey of Kaia CN {cn.name} ({cell.name})",
            Tags=[{"Key": T.CELL, "Value": cell.name}, {"Key": T.NODE, "Value": cn.name},
                  {"Key": "managed-by", "Value": T.MANAGED_BY}],
        )
        action = "created"
    elif current.same_keys(backup):
        action = "unchanged"
    else:
        client.put_secret_value(SecretId=cn.nodekey_secret_id, SecretString=backup.to_secret_string(),
                                ClientRequestToken=token)
        action = "updated"
        notify(cell, f"[kaia-ha] nodekey of {cn.name} changed",
               f"The keys of running validator {cn.name} ({cell.name}) differ from the backup in "
               f"{cn.nodekey_secret_id} (node ID {current.node_id[:16]}… -> {backup.node_id[:16]}…). The backup now "
               "holds the running keys; the previous version stays as AWSPREVIOUS. Investigate: a changed nodekey on "
               "a running validator is an incident.")
    result = {"cn": cn.name, "node_id": backup.node_id, "secret_id": cn.nodekey_secret_id, "action": action,
              "bls_nodekey": backup.bls is not None, "key_path": path}
    if path != f"{cn.data_dir}/klay/nodekey":
        result["warning"] = f"the nodekey in use is {path}, which shadows {cn.data_dir}/klay/nodekey"
    log.info("Nodekey backup of %s: %s (node %s…)", cn.name, action, backup.node_id[:16])
    return result


# ----- 2. CN image -------------------------------------------------------------------------------------------
def cn_fingerprint(cell: Cell, node: KaiaNodeHook, name: str, settings: dict[str, str]) -> dict:
    """What the image must carry: kcnd.conf and the kcn version (the "configuration or software"); ``settings``:
    the node's ``conf()``."""
    cn = cell.validator
    conf = node.run(f"sudo cat {shlex.quote(cn.conf_path)}").stdout
    version = node.version()
    if node.run(f"mountpoint -q {shlex.quote(cn.data_dir)}", check=False).rc != 0:
        raise MaintenanceError(
            f"{name}: DATA_DIR {cn.data_dir} is not a mount point, so it lives on the root volume and an image "
            "would carry the chain data and the nodekey. Put DATA_DIR on its own volume (inventory data_device)."
        )
    digest = hashlib.sha256(f"{version}\n{conf}".encode()).hexdigest()[:16]
    return {"fingerprint": digest, "kcn_version": version,
            "db_flags": compat.db_flags(settings.get("ADDITIONAL", ""))}


KEY_FILES = ("nodekey", "bls-nodekey", "klay/nodekey", "klay/bls-nodekey")


def root_disk_key_material(node: KaiaNodeHook, data_dir: str, additional: str) -> list[str]:
    """Key files on the CN's ROOT disk, which an image would carry: a `--nodekey` file outside DATA_DIR, keys under
    the DATA_DIR mount point (hidden by the volume, seen through a non-recursive bind of /), keys set aside beside
    DATA_DIR by a fencing or a takeover. The volume's own keys are fine: the image excludes that volume."""
    flag = compat.nodekey_file(additional)
    outside = [flag] if flag and not flag.startswith(data_dir.rstrip("/") + "/") else []
    under = " ".join(shlex.quote(f"{data_dir}/{name}") for name in KEY_FILES)
    aside = shlex.quote(data_dir.rstrip("/") + ".keys-aside")
    # Not `set -e`: a test that finds nothing is not an error; a bind that fails is (exit 3).
    script = ('d=$(mktemp -d) || exit 3; trap \'umount "$d" 2>/dev/null; rmdir "$d"\' EXIT; mount --bind / "$d" || '
              'exit 3; '
              f'for p in {under}; do [ -e "$d$p" ] && echo "$p (under the DATA_DIR mount point)"; done; '
              f'[ -d "$d"{aside} ] && find "$d"{aside} -type f | sed "s|^$d||; s|$| (set aside)|"; '
              + "".join(f'[ -e {shlex.quote(p)} ] && echo {shlex.quote(p + " (--nodekey in ADDITIONAL)")}; '
                        for p in outside)
              + "true")
    return node.run(f"sudo bash -c {shlex.quote(script)}", secret_output=False).stdout.splitlines()


def image_plan(cell: Cell | str, run_id: str, run_after: datetime) -> dict:
    """Decide whether this run makes a new CN image."""
    cell = _cell(cell)
    cn = cell.validator
    source = live.current(cell).active.instance_id  # the replacement, after a failover
    node, name = validator_node(cell)
    settings = node.conf()
    fp = cn_fingerprint(cell, node, name, settings)
    found = root_disk_key_material(node, cn.data_dir, settings.get("ADDITIONAL", ""))
    if found:
        raise MaintenanceError(f"{name}: its root disk holds key material, which a CN image would carry to every "
                               f"replacement: {'; '.join(found)}. Move or shred it, then clear this task")
    ec2 = ec2_hook(cell)
    images = [i for i in ec2.find_images({T.CELL: cell.name, T.NODE: cn.name, T.KIND: T.KIND_CN_IMAGE})
              if i["State"] in ("available", "pending")]
    name = T.safe_name("kaia-cn", cell.name, cn.name, run_id)
    newest = images[0] if images else None
    if newest is None:
        create, reason = True, "no CN image yet"
    elif newest["Name"] == name:
        create, reason = True, f"this run's image {newest['ImageId']} exists already (a retry): wait for it"
    elif T.tag_dict(newest).get(T.FINGERPRINT) != fp["fingerprint"]:
        create, reason = True, f"kcnd.conf or kcn version changed since {newest['ImageId']}"
    elif T.tag_dict(newest).get(T.SOURCE_INSTANCE, cn.instance_id) != source:
        create, reason = True, f"the validator runs on {source} now, {newest['ImageId']} is of another instance"
    else:
        age = run_after - datetime.fromisoformat(newest["CreationDate"].replace("Z", "+00:00"))
        create = age > timedelta(hours=cell.maintenance.image_max_age_hours)
        reason = f"newest image {newest['ImageId']} is {age} old" + (" (too old)" if create else ", current")
    image_tags = T.base_tags(cell.name, T.KIND_CN_IMAGE, run_id, DAG_ID, cn.name) | {
        T.FINGERPRINT: fp["fingerprint"], T.KCN_VERSION: fp["kcn_version"], T.DB_FLAGS: fp["db_flags"], "Name": name,
        T.SOURCE_INSTANCE: source,
    }
    log.info("CN image of %s: %s (%s)", cn.name, "create" if create else "skip", reason)
    return {"create": create, "reason": reason, "name": name, "instance_id": source,
            "exclude_devices": [cn.data_device],
            "tags": image_tags, "newest": newest["ImageId"] if newest else None, **fp}


# ----- 3. PN pre-snapshot ---------------------------------------------------------------------------------
def pn_snapshot_plan(cell: Cell | str, run_id: str, failover_running: bool = False) -> dict:
    """Pick the PN to snapshot (the inventory's choice, else the one with the oldest snapshot) and
    make sure every PN of the cell is healthy first: never two PNs of a cell down at once. While a cloud
    failover runs (it may take a fresh snapshot of a PN itself) no PN is taken down: the cell is skipped.
    """
    cell = _cell(cell)
    # One DescribeSnapshots for the cell, newest first: each PN's newest, and whether this run took one already.
    snaps = [s for s in ec2_hook(cell).find_snapshots({T.CELL: cell.name, T.KIND: T.KIND_PN_CHAINDATA})
             if s["State"] != "error"]
    newest = {pn.name: next((s["StartTime"].isoformat() for s in snaps if T.tag_dict(s).get(T.NODE) == pn.name), "")
              for pn in cell.pns}
    # A retry of this run keeps the PN its first try chose (the snapshot tagged with this run).
    ours = {T.tag_dict(s).get(T.NODE) for s in snaps if T.tag_dict(s).get(T.RUN_ID) == run_id}
    this_run = [pn for pn in cell.pns if pn.name in ours]
    if failover_running and not this_run:
        raise CellSkipped("a cloud failover is running: no PN goes down for a pre-taken snapshot meanwhile; "
                          "the next run takes it")
    if this_run:
        pn, why = this_run[0], "chosen by an earlier try of this run"
    elif cell.maintenance.snapshot_pn:
        pn, why = next(p for p in cell.pns if p.name == cell.maintenance.snapshot_pn), "the inventory's choice"
    else:
        pn = min(cell.pns, key=lambda p: newest[p.name])
        why = f"oldest snapshot ({newest[pn.name] or 'none yet'})"
    sick = None if this_run else first_unhealthy(cell.pns)
    if sick:
        raise MaintenanceError(f"{sick[0]} is not healthy ({sick[1]}); not taking {pn.name} of {cell.name} down now")
    tags = T.base_tags(cell.name, T.KIND_PN_CHAINDATA, run_id, DAG_ID, pn.name) | {T.CLEAN_STOP: "true",
                                                                                   "Name": f"{pn.name}-chaindata"}
    log.info("PN snapshot of %s: %s (%s)", cell.name, pn.name, why)
    return {"pn": pn.name, "volume_id": pn.data_volume_id, "why": why, "tags": tags}


def _this_run_snapshot(ec2: CoreCellEC2Hook, cell: Cell, run_id: str) -> dict | None:
    """The snapshot of a PN of the cell that this run took already (an earlier try), if any."""
    tags = {T.RUN_ID: run_id, T.CELL: cell.name, T.KIND: T.KIND_PN_CHAINDATA}
    found = [s for s in ec2.find_snapshots(tags) if s["State"] != "error"]
    return found[0] if found else None


# ----- 4. retention -------------------------------------------------------------------------------------------
def _retention(cell: Cell, run_after: datetime, kind: str) -> list[str]:
    keep = cell.maintenance
    ec2 = ec2_hook(cell)
    if kind == T.KIND_CN_IMAGE:
        found = ec2.find_images({T.CELL: cell.name, T.KIND: kind})
        count, state, key = keep.keep_images, "available", "ImageId"
    else:
        found = ec2.find_snapshots({T.CELL: cell.name, T.KIND: kind})
        count, state, key = keep.keep_snapshots, "completed", "SnapshotId"
    delete, kept = retention.plan(found, keep=count, usable_state=state, id_key=key, now=run_after)
    for item in kept:
        log.info("keep %s: %s", item["id"], item["why"])
    log.info("delete %s", delete or "nothing")
    return delete


@needs("ec2:DeregisterImage", "ec2:DeleteSnapshot")
def delete_old(cell: Cell | str, run_after: datetime, kind: str) -> list[str]:
    """Delete the cell's CN images (with their snapshots) or PN snapshots past the inventory's retention; already
    gone counts as done (a retry). Returns what is gone."""
    cell = _cell(cell)
    ec2 = ec2_hook(cell)
    delete = ec2.deregister_image if kind == T.KIND_CN_IMAGE else ec2.delete_snapshot
    old = _retention(cell, run_after, kind)
    for resource_id in old:
        log.info("%s %s: %s", cell.name, resource_id, "deleted" if delete(resource_id) else "was already gone")
    return old


# ----- the tasks: each step over every cell ------------------------------------------------------------------
def _cells(scheme: str | None = None) -> list[Cell]:
    return [c for c in load_inventory().cells if scheme is None or c.scheme == scheme]


def cells_of(ti, task_id: str) -> dict:
    """What a step over cells recorded (``{"done", "skipped", "failed"}``; empty parts when it did not run)."""
    got = ti.xcom_pull(task_ids=task_id, key=CELLS_KEY, default=None) or {}
    return {part: got.get(part) or {} for part in ("done", "skipped", "failed")}


def _finish(ti, outcome: Outcome, what: str, cells: int) -> str:
    """Record each cell's outcome for the next step and the report; fail naming the failed cells (after all were
    tried), skip the task when it had nothing to do in any cell."""
    ti.xcom_push(key=CELLS_KEY, value=outcome.as_xcom())
    if outcome.failed:
        raise MaintenanceError(f"{what} failed in {len(outcome.failed)} of {cells} core cells: "
                               + "; ".join(f"{cell}: {why}" for cell, why in sorted(outcome.failed.items())))
    if outcome.skipped and not outcome.done:
        raise AirflowSkipException(f"{what}: nothing to do in any core cell: "
                                   + "; ".join(f"{cell}: {why}" for cell, why in sorted(outcome.skipped.items())))
    return outcome.summary()


def _over(ti, cells: list[Cell], work, what: str) -> str:
    return _finish(ti, each_cell(cells, work, what=what), what, len(cells))


def _after(parts: dict, cell: Cell, step_name: str):
    """The cell's result of an earlier step (``parts``: its ``cells_of``), or skip the cell (that step failed or had
    nothing to do there)."""
    if cell.name in parts["done"]:
        return parts["done"][cell.name]
    why = parts["failed"].get(cell.name) or parts["skipped"].get(cell.name) or "did not run"
    raise CellSkipped(f"no {step_name} ({why[:200]})")


@step
def backup_nodekeys(ti, run_id: str) -> str:
    return _over(ti, _cells(), lambda cell: backup_nodekey(cell, run_id), "nodekey backup")


@step
def image_plans(ti, run_id: str, run_after: datetime) -> str:
    return _over(ti, _cells("cloud"), lambda cell: image_plan(cell, run_id, run_after), "CN image plan")


@step
def create_images(ti) -> str:
    """Create the CN images the plans asked for (NoReboot, DATA_DIR left out); a retry finds them by name."""

    plans = cells_of(ti, IMAGE_PLAN_TASK)

    def create(cell: Cell) -> dict:
        plan = _after(plans, cell, "image plan")
        if not plan["create"]:
            raise CellSkipped(plan["reason"])
        ec2 = ec2_hook(cell)
        # NoReboot: this is the running validator; a reboot costs proposals. The root volume holds only config and
        # binaries (DATA_DIR is excluded), so a crash-consistent copy is enough.
        image_id, created = ec2.create_image(
            instance_id=plan["instance_id"], name=plan["name"], exclude_devices=plan["exclude_devices"],
            tags=plan["tags"], no_reboot=True, description=f"Kaia CN image of {plan['instance_id']}")
        log.info("%s image %s (%s) of %s", "Created" if created else "Found", image_id, plan["name"],
                 plan["instance_id"])
        return {"image_id": image_id, "created": created}

    return _over(ti, _cells("cloud"), create, "CN image")


def _ready(ti, task_id: str, cells: list[Cell], state_of, what: str) -> dict | None:
    """One poke of a wait over cells: ``state_of(cell, result)`` is a resource's state, ``"done"`` or ``"pending"``
    (a failure raises). None while any cell is pending, else each cell's result (the task fails on a failed one)."""
    earlier = cells_of(ti, task_id)
    outcome = each_cell(cells, lambda cell: state_of(cell, _after(earlier, cell, what)), what=what)
    pending = sorted(c for c, (state, _) in outcome.done.items() if state == "pending")
    if pending:
        log.info("%s: waiting for %s", what, ", ".join(pending))
        return None
    outcome.done = {c: {"completed_at": time.time(), **result} for c, (_, result) in outcome.done.items()}
    _finish(ti, outcome, what, len(cells))
    return outcome.done


@needs("ec2:DescribeImages")
def images_ready(ti) -> dict | None:
    """Every image this run created is available (a first image copies the whole root volume: minutes to an hour)."""

    def state(cell: Cell, made: dict) -> tuple[str, dict]:
        ec2 = ec2_hook(cell)
        found = ec2.conn.describe_images(ImageIds=[made["image_id"]])["Images"]
        if not found or found[0]["State"] in ("failed", "invalid", "deregistered", "error"):
            raise MaintenanceError(f"image {made['image_id']} is {found[0]['State'] if found else 'gone'}: "
                                   f"{found[0].get('StateReason', {}).get('Message', '') if found else ''}")
        return ("done" if found[0]["State"] == "available" else "pending"), made

    return _ready(ti, CREATE_IMAGE_TASK, _cells("cloud"), state, "CN image ready")


@step
def snapshot_plans(ti, run_id: str, failover_running: bool) -> str:
    return _over(ti, _cells("cloud"), lambda cell: pn_snapshot_plan(cell, run_id, failover_running),
                 "PN snapshot plan")


def _start_again(cell: Cell, record: KeptRecord) -> str | None:
    """Start kpnd again in the cell's own thread, on every PN this run stopped and did not start yet; a start that
    fails is left to the teardown (it says why)."""
    try:
        started = start_recorded(cell, record)
    except Exception as exc:
        log.error("%s: kpnd not started again in the stop step (%s); the teardown starts it", cell.name, exc)
        return f"not started here ({type(exc).__name__}: {str(exc)[:300]}); the teardown starts it"
    if started:
        log.info("%s: kpnd started again on %s", cell.name, ", ".join(started))
    return None


@step
@needs("ec2:CreateSnapshot", "ec2:DescribeSnapshots")
def stop_and_snapshot(ti, run_id: str, failover_running: bool = False) -> str:
    """In each cell at once: stop the planned PN's kpnd cleanly (``pn.stop_cleanly``, in the PN downtime pool's slot),
    snapshot its DATA_DIR volume and start kpnd again as soon as the snapshot is pending (it is point in time). So a
    PN is down for its own stop, one CreateSnapshot call and its start, whatever the other cells do; and whatever
    fails after the SIGTERM, the cell's thread starts the PN again. The teardown is the safety net for a try that
    died.

    The stop record is kept in the state store (``pn.KeptRecord``), which a retry does not clear: a retry starts
    what an earlier try left stopped, and does not stop a PN again in a cell whose snapshot this run took. While a
    cloud failover runs (``failover_running``, checked on every try) a retry does only that."""
    plans = cells_of(ti, PN_PLAN_TASK)

    def stop_and_take(cell: Cell) -> dict:
        plan = _after(plans, cell, "PN snapshot plan")
        record = KeptRecord(cell.name, run_id)
        earlier = record.earlier  # an earlier try's SIGTERM that no start followed (that try died)
        ec2 = ec2_hook(cell)
        taken = _this_run_snapshot(ec2, cell, run_id)
        if taken or failover_running:
            trouble = _start_again(cell, record)
            if trouble:
                raise MaintenanceError(f"kpnd on {', '.join(earlier)}, left stopped by an earlier try: {trouble}")
            if not taken:
                again = f" (started {', '.join(earlier)} again: an earlier try left it)" if earlier else ""
                raise CellSkipped(f"a cloud failover is running: no PN goes down for a pre-taken snapshot{again}")
            name = T.tag_dict(taken)[T.NODE]
            log.info("%s: this run's snapshot %s of %s exists (an earlier try): not stopping a PN again", cell.name,
                     taken["SnapshotId"], name)
            return {"pn": name, "snapshot_id": taken["SnapshotId"], "created": False}
        try:
            stopped = stop_cleanly(cell, plan["pn"], record, plan["tags"])
            made, created = ec2.create_snapshot(volume_id=stopped["volume_id"], tags=stopped["tags"],
                                                description=f"Kaia PN chain data ({cell.name})")
            record.note(pn=stopped["pn"], stop_began=stopped["stop_began"], stopped_at=stopped["stopped_at"],
                        snapshot_id=made["SnapshotId"])
        finally:  # the snapshot is point in time once asked for, and after a failure the PN must not wait either
            trouble = _start_again(cell, record)
        log.info("%s snapshot %s of %s (%s), %.1f s after kpnd's stop began; kpnd %s",
                 "Created" if created else "Found", made["SnapshotId"], stopped["pn"], made.get("State"),
                 time.time() - stopped["stop_began"],
                 trouble or f"running again {record.doc['started_at'] - stopped['stop_began']:.1f} s after it")
        return stopped | {"snapshot_id": made["SnapshotId"], "created": created} | (
            {"kpnd_start": trouble} if trouble else {})

    return _over(ti, _cells("cloud"), stop_and_take, "kpnd stop and snapshot")


@step
def start_kpnds(ti, run_id: str) -> str:
    """The teardown, a safety net: start kpnd on every PN this run stopped and did not start again, in every cell
    (the stop starts each itself as soon as its snapshot is pending; a try that died or a start that failed leaves
    one here)."""

    def start(cell: Cell) -> dict:
        started = start_recorded(cell, KeptRecord(cell.name, run_id))
        if not started:
            log.info("%s: no PN is left stopped by this run", cell.name)
        return {"pns": started}

    return _over(ti, _cells("cloud"), start, "kpnd start")


def _back_state(cell: Cell, run_id: str) -> tuple[str, dict]:
    names = KeptRecord(cell.name, run_id).doc.get("kpnd_started") or []
    if not names:
        raise CellSkipped("this run started no kpnd here")
    back = pns_back(cell, names)
    return ("pending", {}) if back is None else ("done", back)


def kpnds_back(ti, run_id: str) -> dict | None:
    """Every PN this run started again serves (peers, head rising)."""
    return _ready(ti, START_KPND_TASK, _cells("cloud"), lambda cell, _: _back_state(cell, run_id), "kpnd back")


@needs("ec2:DescribeSnapshots")
def snapshots_ready(ti) -> dict | None:
    """Every snapshot of this run completed (they finish in the background; kpnd is running again)."""

    def state(cell: Cell, made: dict) -> tuple[str, dict]:
        ec2 = ec2_hook(cell)
        found = ec2.conn.describe_snapshots(SnapshotIds=[made["snapshot_id"]])["Snapshots"][0]
        if found["State"] == "error":
            raise MaintenanceError(f"snapshot {made['snapshot_id']} failed: {found.get('StateMessage', 'error')}")
        if found["State"] != "completed":
            return "pending", made
        # The snapshot's own completion (this poke may come long after it, and it waits for every cell's).
        return "done", made | ({"completed_at": found["CompletionTime"].timestamp()} if "CompletionTime" in found
                               else {})

    return _ready(ti, SNAPSHOT_TASK, _cells("cloud"), state, "PN snapshot complete")


@step
def retention_cells(ti, run_after: datetime, kind: str) -> str:
    """Delete each cloud cell's CN images or PN snapshots past the inventory's retention."""
    what = "image retention" if kind == T.KIND_CN_IMAGE else "snapshot retention"
    return _over(ti, _cells("cloud"), lambda cell: delete_old(cell, run_after, kind), what)


# ----- 5. report ------------------------------------------------------------------------------------------------
def _outcomes(records: dict[str, dict], cell: str) -> dict[str, str]:
    """Each step's outcome for one cell, as the report lists it (``records``: each step's ``cells_of``)."""
    out = {}
    for name, task_id in STEP_TASKS.items():
        parts = records[task_id]
        if cell in parts["failed"]:
            out[name] = f"failed: {parts['failed'][cell]}"
        elif cell in parts["skipped"]:
            out[name] = f"skipped: {parts['skipped'][cell]}"
        elif cell in parts["done"]:
            out[name] = "done"
    return out


def _at(seconds: float | None) -> str | None:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds") if seconds else None


def _pn_snapshot(kept: dict, complete: dict | None, pn_name: str | None) -> dict:
    """A cell's PN snapshot in the report, from the stop record the state store keeps (it outlives a retry)."""
    began, started = kept.get("stop_began"), kept.get("started_at")
    return {
        "pn": kept.get("pn") or pn_name,  # the PN that stopped (the plan's, or the next one when that did not)
        "skipped": [a for a in kept.get(ATTEMPTS_KEY) or [] if a["outcome"] != "stopped cleanly"],
        "snapshot_id": kept.get("snapshot_id"),
        "left_stopped": kept.get(STOPPED_KEY) or [],
        "kpnd_stopped_at": _at(began), "kpnd_started_at": _at(started),
        "kpnd_down_seconds": round(started - began, 2) if began and started and started > began else None,
        "snapshot_complete_seconds": round(complete["completed_at"] - kept["stopped_at"], 2)
        if complete and kept.get("stopped_at") else None,
    }


def build_report(ti, dag_id: str, run_id: str) -> dict:
    """One report for the run: per cell what was created, skipped, deleted, and kpnd's down time."""
    steps, states = timeline(ti, dag_id, run_id)
    records = {task_id: cells_of(ti, task_id) for task_id in STEP_TASKS.values()}  # one read each, not one a cell

    def done(task_id: str, cell: str):
        return records[task_id]["done"].get(cell)

    cells = []
    for cell in load_inventory().cells:
        name = cell.name
        entry = {"cell": name, "scheme": cell.scheme, "nodekey": done(BACKUP_TASK, name)}
        try:  # where each validator runs now: the UI's answer to "which node is it on?"
            entry["placement"] = live.current(cell).summary()
        except Exception as exc:  # the report must still be written
            entry["placement"] = f"unknown ({type(exc).__name__}: {str(exc)[:200]})"
        if cell.scheme == "cloud":
            plan = done(IMAGE_PLAN_TASK, name) or {}
            entry["image"] = {"decision": "create" if plan.get("create") else "skip", "reason": plan.get("reason"),
                              "image_id": (done(CREATE_IMAGE_TASK, name) or {}).get("image_id"),
                              "fingerprint": plan.get("fingerprint")}
            entry["pn_snapshot"] = _pn_snapshot(KeptRecord(name, run_id).doc, done(SNAPSHOT_DONE_TASK, name),
                                                (done(SNAPSHOT_TASK, name) or done(PN_PLAN_TASK, name) or {}).get("pn"))
            if entry["pn_snapshot"]["left_stopped"]:
                entry["urgent"] = kpnd_urgent(", ".join(entry["pn_snapshot"]["left_stopped"]),
                                              f"{START_KPND_TASK} (for {name})")
            entry["retention"] = {"images": done(OLD_IMAGES_TASK, name), "snapshots": done(OLD_SNAPSHOTS_TASK, name)}
        entry["steps"] = _outcomes(records, name)
        cells.append(entry)
    failed = sorted(t for t, s in states.items() if s in ("failed", "upstream_failed"))
    urgent = [c["urgent"] for c in cells if c.get("urgent")]
    return {"dag_id": dag_id, "run_id": run_id, "ok": not failed, "failed_tasks": failed, "urgent": urgent,
            "cells": cells, "steps": steps}


def render_report(report: dict) -> str:
    lines = [f"# Kaia CN maintenance: {report['run_id']}", ""] + [f"**{u}**" for u in report["urgent"]] + [
        f"Result: {'OK' if report['ok'] else 'FAILED: ' + ', '.join(report['failed_tasks'])}", ""]
    for cell in report["cells"]:
        lines += [f"## {cell['cell']} ({cell['scheme']})", "", f"- live placement: {cell.get('placement')}"]
        key = cell.get("nodekey") or {}
        lines.append(f"- nodekey backup: {key.get('action', 'not done')} (node {str(key.get('node_id', ''))[:16]}…, "
                     f"secret {key.get('secret_id', '-')})")
        if key.get("warning"):
            lines.append(f"- WARNING: {key['warning']}")
        if cell["scheme"] == "cloud":
            image, snap = cell["image"], cell["pn_snapshot"]
            lines.append(f"- CN image: {image['decision']} ({image['reason']}) -> {image['image_id'] or '-'}")
            lines.append(f"- PN snapshot: {snap['pn']} -> {snap['snapshot_id'] or '-'}; kpnd down "
                         f"{snap['kpnd_down_seconds']} s ({snap['kpnd_stopped_at'] or '-'} to "
                         f"{snap['kpnd_started_at'] or '-'}); snapshot complete {snap['snapshot_complete_seconds']} s "
                         "after the stop")
            lines += [f"- WARNING: PN {a['pn']} skipped: {a['why']}" for a in snap.get("skipped", [])]
            ret = cell.get("retention") or {}
            lines.append(f"- retention: deleted images {ret.get('images') or []}, "
                         f"snapshots {ret.get('snapshots') or []}")
        lines += [f"- {name} FAILED here: {how[len('failed: '):]}" for name, how in cell.get("steps", {}).items()
                  if how.startswith("failed")]
        lines.append("")
    lines += ["## Steps", "", table(report["steps"], ["task", "try", "seconds", "state", "outcome"])]
    return "\n".join(lines)


def report(ti, dag_id: str, run_id: str) -> dict:
    data = build_report(ti, dag_id, run_id)
    text = render_report(data)
    paths = write(dag_id, run_id, data, text)
    log.info("Maintenance report (%s):\n%s", paths["markdown"], text)
    unsent = []
    for entry in data["cells"]:  # the run's failure alert names only a failed task: a PN down gets its own
        if entry.get("urgent"):
            unsent.append(alert(_cell(entry["cell"]), f"[kaia-ha] URGENT: a PN of {entry['cell']} may be DOWN after "
                                "maintenance", f"{entry['urgent']}. Report: {paths['markdown']}"))
    unsent = [u for u in unsent if u]
    if not data["ok"]:
        verdict = f"maintenance run {run_id} failed: {', '.join(data['failed_tasks'])} (report {paths['markdown']})"
        raise MaintenanceError("; ".join([*data["urgent"], verdict, *unsent]))
    return {"ok": data["ok"], "report": paths["markdown"]}
