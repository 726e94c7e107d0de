"""The steps of the maintenance DAG: keep every core cell ready for a failover.

Each function is one task's work; it takes names and the run id (never keys), returns a small
JSON-safe dict for XCom and the report, and is safe to run again after a retry or a clear.
"""

from __future__ import annotations

import hashlib
import logging
import shlex
from datetime import datetime, timedelta

from airflow.providers.amazon.aws.hooks.secrets_manager import SecretsManagerHook
from airflow.sdk.exceptions import AirflowSkipException

from kaia_ha import dag_ids, live
from kaia_ha.alerts import alert, notify
from kaia_ha.model import compat, retention
from kaia_ha.model import tags as T
from kaia_ha.model.health import Probe
from kaia_ha.model.inventory import Cell, load_inventory
from kaia_ha.model.keys import KeyBackup
from kaia_ha.pn import ATTEMPTS_KEY, first_unhealthy, kpnd_left_stopped, kpnd_urgent
from kaia_ha.report import step, table, timeline, write
from kaia_ha_airflow.hooks.ec2 import CoreCellEC2Hook
from kaia_ha_airflow.hooks.kaia_node import KaiaNodeHook
from kaia_ha_airflow.iam import needs

log = logging.getLogger(__name__)
DAG_ID = dag_ids.MAINTENANCE
# The DAG's task ids inside each cell's group (``<cell>.<id>``) that the report reads: the DAG file names its tasks
# with these, so each id is written once.
BACKUP_TASK = "nodekey_backup.backup_nodekey"
IMAGE_PLAN_TASK, CREATE_IMAGE_TASK = "cn_image.image_plan", "cn_image.create_image"
PN_PLAN_TASK, STOP_KPND_TASK, START_KPND_TASK = "pn_snapshot.plan", "pn_snapshot.stop_kpnd", "pn_snapshot.start_kpnd"
CREATE_SNAPSHOT_TASK, SNAPSHOT_DONE_TASK = "pn_snapshot.create_snapshot", "pn_snapshot.snapshot_done"
OLD_IMAGES_TASK, OLD_SNAPSHOTS_TASK = "retention.images_to_delete", "retention.snapshots_to_delete"


class MaintenanceError(RuntimeError):
    pass


def _cell(name: str) -> Cell:
    return load_inventory().cell(name)


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


@step
@needs("secretsmanager:GetSecretValue", "secretsmanager:CreateSecret", "secretsmanager:PutSecretValue",
       "secretsmanager:TagResource")
def backup_nodekey(cell_name: str, run_id: str) -> dict:
    """Keep the active CN's nodekey and bls-nodekey in Secrets Manager; alert when they changed."""
    cell = _cell(cell_name)
    cn = cell.validator
    backup, probe, path = read_live_identity(cell)
    if cn.node_id and backup.node_id != cn.node_id:
        notify(cell, f"[kaia-ha] {cn.name} runs with an unexpected node ID",
               f"{cn.name} in {cell.name} runs as node {backup.node_id} but the inventory expects {cn.node_id}. "
               "The validator's identity changed (a regenerated or replaced nodekey). The backup was NOT overwritten.")
        raise MaintenanceError(f"{cn.name}: running node ID {backup.node_id[:16]}… is not the inventory's node_id "
                               f"{cn.node_id[:16]}…")
    client = SecretsManagerHook(aws_conn_id=cell.aws_conn_id, region_name=cell.region).conn
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
def cn_fingerprint(cell: Cell) -> dict:
    """What the image must carry: kcnd.conf and the kcn version (the "configuration or software")."""
    cn = cell.validator
    node, name = validator_node(cell)
    conf = node.run(f"sudo cat {shlex.quote(cn.conf_path)}").stdout
    version = node.version()
    if node.run(f"mountpoint -q {shlex.quote(cn.data_dir)}", check=False).rc != 0:
        raise MaintenanceError(
            f"{name}: DATA_DIR {cn.data_dir} is not a mount point, so it lives on the root volume and an image "
            "would carry the chain data and the nodekey. Put DATA_DIR on its own volume (inventory data_device)."
        )
    digest = hashlib.sha256(f"{version}\n{conf}".encode()).hexdigest()[:16]
    return {"fingerprint": digest, "kcn_version": version,
            "db_flags": compat.db_flags(node.conf().get("ADDITIONAL", ""))}


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


@step
def image_plan(cell_name: str, run_id: str, run_after: datetime) -> dict:
    """Decide whether this run makes a new CN image."""
    cell = _cell(cell_name)
    cn = cell.validator
    source = live.current(cell).active.instance_id  # the replacement, after a failover
    fp = cn_fingerprint(cell)
    node, name = validator_node(cell)
    found = root_disk_key_material(node, cn.data_dir, node.conf().get("ADDITIONAL", ""))
    if found:
        raise MaintenanceError(f"{name}: its root disk holds key material, which a CN image would carry to every "
                               f"replacement: {'; '.join(found)}. Move or shred it, then clear this task")
    ec2 = CoreCellEC2Hook(aws_conn_id=cell.aws_conn_id, region_name=cell.region)
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
@step
def pn_snapshot_plan(cell_name: str, run_id: str, failover_running: bool = False) -> dict:
    """Pick the PN to snapshot (the inventory's choice, else the one with the oldest snapshot) and
    make sure every PN of the cell is healthy first: never two PNs of a cell down at once. While a cloud
    failover runs (it may take a fresh snapshot of a PN itself) no PN is taken down: the group is skipped.
    """
    cell = _cell(cell_name)
    ec2 = CoreCellEC2Hook(aws_conn_id=cell.aws_conn_id, region_name=cell.region)
    newest = {}
    for pn in cell.pns:
        snaps = [s for s in ec2.find_snapshots({T.CELL: cell.name, T.NODE: pn.name, T.KIND: T.KIND_PN_CHAINDATA})
                 if s["State"] != "error"]
        newest[pn.name] = snaps[0]["StartTime"].isoformat() if snaps else ""
    # A retry of this run keeps the PN its first try chose (the snapshot tagged with this run).
    this_run = [pn for pn in cell.pns if ec2.find_snapshots({T.RUN_ID: run_id, T.NODE: pn.name,
                                                             T.KIND: T.KIND_PN_CHAINDATA})]
    if failover_running and not this_run:
        raise AirflowSkipException("a cloud failover is running: no PN goes down for a pre-taken snapshot meanwhile; "
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


# ----- 4. retention -------------------------------------------------------------------------------------------
def _retention(cell_name: str, run_after: datetime, kind: str) -> list[str]:
    cell = _cell(cell_name)
    keep = cell.maintenance
    ec2 = CoreCellEC2Hook(aws_conn_id=cell.aws_conn_id, region_name=cell.region)
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


@step
def images_to_delete(cell_name: str, run_after: datetime) -> list[str]:
    """CN images past the inventory's retention."""
    return _retention(cell_name, run_after, T.KIND_CN_IMAGE)


@step
def snapshots_to_delete(cell_name: str, run_after: datetime) -> list[str]:
    """PN snapshots past the inventory's retention."""
    return _retention(cell_name, run_after, T.KIND_PN_CHAINDATA)


# ----- 5. report ------------------------------------------------------------------------------------------------
def build_report(ti, dag_id: str, run_id: str) -> dict:
    """One report for the run: per cell what was created, skipped, deleted, and kpnd's down time."""
    steps, states = timeline(ti, dag_id, run_id)

    def pull(task_id: str, key: str = "return_value"):
        return ti.xcom_pull(task_ids=task_id, key=key, default=None)

    cells = []
    for cell in load_inventory().cells:
        prefix = f"{cell.name}."
        entry = {"cell": cell.name, "scheme": cell.scheme, "nodekey": pull(prefix + BACKUP_TASK)}
        try:  # where each validator runs now: the UI's answer to "which node is it on?"
            entry["placement"] = live.current(cell).summary()
        except Exception as exc:  # the report must still be written
            entry["placement"] = f"unknown ({type(exc).__name__}: {str(exc)[:200]})"
        if cell.scheme == "cloud":
            plan = pull(prefix + IMAGE_PLAN_TASK) or {}
            entry["image"] = {"decision": "create" if plan.get("create") else "skip", "reason": plan.get("reason"),
                              "image_id": pull(prefix + CREATE_IMAGE_TASK),
                              "fingerprint": plan.get("fingerprint")}
            stop, start = pull(prefix + STOP_KPND_TASK), pull(prefix + START_KPND_TASK)
            done = pull(prefix + SNAPSHOT_DONE_TASK)
            # The PN the stop chose (the plan's, or the next one when that did not stop on its own), and those skipped.
            attempts = pull(prefix + STOP_KPND_TASK, ATTEMPTS_KEY) or []
            pn_name = (stop or {}).get("pn") or (pull(prefix + PN_PLAN_TASK) or {}).get("pn")
            if kpnd_left_stopped(states, prefix + STOP_KPND_TASK, prefix + START_KPND_TASK):
                entry["urgent"] = kpnd_urgent(pn_name or "?", prefix + START_KPND_TASK)
            entry["pn_snapshot"] = {
                "pn": pn_name, "skipped": [a for a in attempts if a["outcome"] != "stopped cleanly"],
                "snapshot_id": pull(prefix + CREATE_SNAPSHOT_TASK),
                "kpnd_down_seconds": round(start["started_at"] - stop["stop_began"], 2)
                if stop and start and start["started"] else None,
                "snapshot_complete_seconds": round(done["completed_at"] - stop["stopped_at"], 2) if stop and done
                else None,
            }
            entry["retention"] = {"images": pull(prefix + OLD_IMAGES_TASK),
                                  "snapshots": pull(prefix + OLD_SNAPSHOTS_TASK)}
        entry["tasks"] = {t[len(prefix):]: s for t, s in sorted(states.items()) if t.startswith(prefix)}
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
                         f"{snap['kpnd_down_seconds']} s; snapshot complete {snap['snapshot_complete_seconds']} s "
                         "after the stop")
            lines += [f"- WARNING: PN {a['pn']} skipped: {a['why']}" for a in snap.get("skipped", [])]
            ret = cell.get("retention") or {}
            lines.append(f"- retention: delete images {ret.get('images', [])}, snapshots {ret.get('snapshots', [])}")
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
