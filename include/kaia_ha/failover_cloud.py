"""The steps of the cloud failover: replace a failed CN from the CN image and a PN snapshot.

Every step reads the preflight's plan (JSON-safe, no keys), is safe to retry or clear (names and
ClientTokens derive from the run id; each step checks what is already done), and records its timing
for the report. The order is the seed's, with the slow parts in parallel: the replacement launches
while the chain data volume is prepared.
"""

from __future__ import annotations

import logging
import math
import shlex
import time
from datetime import datetime, timedelta, timezone

import botocore.exceptions
from airflow.sdk.exceptions import AirflowSkipException

from kaia_ha import dag_ids, live
from kaia_ha.alerts import alert
from kaia_ha.model import compat, settings
from kaia_ha.model import tags as T
from kaia_ha.model.inventory import CN, Cell, load_inventory
from kaia_ha.model.placement import Active, Fenced, Placement, after_failover
from kaia_ha.pn import (
    ATTEMPTS_KEY,
    STOPPED_KEY,
    candidates,
    fitting,
    incremental,
    kpnd_left_stopped,
    kpnd_urgent,
    stop_for_snapshot,
    why_none,
)
from kaia_ha.pn import pretaken_fallback as newest_pretaken
from kaia_ha.report import step
from kaia_ha.takeover import (
    FailoverInputError,
    Refused,
    TakeoverError,
    answers_ssh,
    failover_report,
    fence_kcnd,
    install_identity,
    load_backup,
    refuse_unknown_params,
    sync_check,
    verify_identity_on_disk,
)
from kaia_ha_airflow.hooks.ec2 import CoreCellEC2Hook, error_code
from kaia_ha_airflow.hooks.kaia_node import KaiaNodeHook, NodeCommandError
from kaia_ha_airflow.iam import needs

log = logging.getLogger(__name__)
DAG_ID = dag_ids.FAILOVER_CLOUD
WARMUP = ("none", "initialization-rate", "fast-snapshot-restore", "read-through")
# The DAG's task ids that this module and the DAG read (XCom, states, the clears the report names): the DAG file
# names its tasks with these, so each id is written once.
PREFLIGHT_TASK = "preflight"
FENCE_TASK = "fence.fence"
WAIT_STOPPED_TASK = "fence.wait_stopped"
DEFUSE_TASK = "fence.defuse"
RESERVE_PN_TASK = "chain_data.fresh_snapshot.reserve_pn"
STOP_KPND_TASK = "chain_data.fresh_snapshot.stop_kpnd"
START_KPND_TASK = "chain_data.fresh_snapshot.start_kpnd"
WAIT_SNAPSHOT_TASK = "chain_data.fresh_snapshot.wait_snapshot"
CHAINDATA_SNAPSHOT_TASK = "chain_data.chaindata_snapshot"
CREATE_VOLUME_TASK = "chain_data.create_volume"
LAUNCH_TASK = "launch.launch"
WAIT_RUNNING_TASK = "launch.wait_running"
IN_SYNC_TASK = "verify.in_sync"
RECORD_TASK = "verify.record_placement"
# cloud-init, first boot only, before services start: the image's kcnd (enabled at boot) must not run until the
# replacement has its chain data, its identity and confirmed fencing; start_kcnd enables it.
REPLACEMENT_USER_DATA = """#cloud-config
bootcmd:
  - [cloud-init-per, once, kaia-kcnd-off, systemctl, disable, --now, kcnd]
"""
PARAMS = ("failed_cn", "fence", "graceful_stop", "use_presnapshot", "max_snapshot_age_hours", "snapshot_pn", "warmup",
          "dry_run")


def cloud_cns() -> list[str]:
    """The validators of the cloud cells; a broken inventory raises its own error (naming the field)."""
    return [cell.validator.name for cell in load_inventory().cells_of("cloud")]


def _ctx(plan: dict) -> tuple[Cell, CN, CoreCellEC2Hook]:
    cell, cn = load_inventory().find_cn(plan["failed_cn"])
    return cell, cn, CoreCellEC2Hook(aws_conn_id=cell.aws_conn_id, region_name=cell.region)


def failed_node(plan: dict, cell: Cell) -> KaiaNodeHook:
    """SSH to the node that ran the validator when the run began (the live placement's active)."""
    return live.active_node(cell, Placement.model_validate(plan["placement"]))


def replacement(plan: dict, cell: Cell, cn: CN) -> KaiaNodeHook:
    """SSH to the new instance: the template connection's login and key, its private IP, the learned host key."""
    return KaiaNodeHook(cn, ssh_conn_id=cell.launch.ssh_conn_template, remote_host=plan["new_private_ip"],
                        host_key=plan["new_host_key"])


# ----- 1. preflight --------------------------------------------------------------------------------------------
def _check_params(conf: dict) -> dict:
    """The trigger's params, checked against the inventory only (no AWS, no SSH)."""
    refuse_unknown_params(conf, PARAMS)
    names = cloud_cns()
    failed = conf.get("failed_cn")
    if not isinstance(failed, str) or failed not in names:
        raise FailoverInputError(f"failed_cn: {failed!r} is not an active CN of a cloud core cell; "
                                 f"choose one of {names}")
    # Booleans must be booleans: bool("false") is True, and bool(0) would silently turn fencing off.
    for field, default in (("use_presnapshot", True), ("fence", True), ("graceful_stop", False), ("dry_run", False)):
        if not isinstance(conf.get(field, default), bool):
            raise FailoverInputError(f"{field}: must be true or false, got {conf.get(field)!r}")
    if not isinstance(conf.get("warmup", "none"), str) or conf.get("warmup", "none") not in WARMUP:
        raise FailoverInputError(f"warmup: {conf.get('warmup')!r} is not one of {list(WARMUP)}")
    age = conf.get("max_snapshot_age_hours", 24)
    # bool is an int in Python; NaN and infinity pass "> 0" but break the age comparison later.
    if isinstance(age, bool) or not isinstance(age, (int, float)) or not math.isfinite(age) or age <= 0:
        raise FailoverInputError(f"max_snapshot_age_hours: must be a number of hours above 0, got {age!r}")
    pn = conf.get("snapshot_pn") or "auto"
    pns = [p.name for p in load_inventory().find_cn(failed)[0].pns]
    if not isinstance(pn, str) or pn not in ("auto", *pns):  # checked here, before preflight builds any hook
        raise FailoverInputError(f"snapshot_pn: {pn!r} is not a PN of the failed CN's cell; "
                                 f"choose one of {pns} or auto")
    return {"failed_cn": failed, "use_presnapshot": conf.get("use_presnapshot", True),
            "max_snapshot_age_hours": float(age), "snapshot_pn": pn, "warmup": conf.get("warmup", "none"),
            "fence": conf.get("fence", True), "graceful_stop": conf.get("graceful_stop", False),
            "dry_run": conf.get("dry_run", False)}


def _dry_run(call, what: str) -> str:
    """A mutating call with DryRun=True: ``DryRunOperation`` means permitted."""
    try:
        call()
    except botocore.exceptions.ClientError as exc:
        code = error_code(exc)
        if code == "DryRunOperation":
            return "permitted"
        if code in ("UnauthorizedOperation", "AccessDenied"):
            raise TakeoverError(f"not permitted: {what} ({code}); grant it before an incident") from None
        return f"not checked ({code})"
    return "not checked (no DryRun answer)"


LIVE = ("pending", "running", "stopping", "shutting-down")


def other_live_replacements(ec2: CoreCellEC2Hook, cell: Cell, cn: CN, run_id: str, failed_instance_id: str) -> None:
    """Refuse while a replacement an earlier run launched for this CN is not stopped: it holds (or may hold) the
    validator key, and a second replacement would be a second live node with it. The failed instance itself (which
    may be the replacement of an earlier failover) is this run's to fence."""
    running = [i for i in ec2.find_instances({T.CELL: cell.name, T.NODE: cn.name, T.KIND: T.KIND_REPLACEMENT_CN}, LIVE)
               if i["InstanceId"] != failed_instance_id and T.tag_dict(i).get(T.RUN_ID) != run_id]
    if running:
        found = ", ".join(f"{i['InstanceId']} ({i['State']['Name']}, run {T.tag_dict(i).get(T.RUN_ID)})"
                          for i in running)
        raise Refused(f"failed_cn: {cn.name} already has a replacement from an earlier run that is not stopped: "
                      f"{found}. It may hold the validator key. Go on with that run (clear its failed task), "
                      "or stop or terminate that instance first, then trigger again")


@step
@needs("ec2:DescribeSubnets", "ec2:RunInstances", "ec2:CreateVolume", "ec2:AttachVolume", "ec2:CreateTags",
       "ec2:AssociateAddress", "ec2:StopInstances", "ec2:CreateSnapshot")
def preflight(conf: dict, run_id: str, run_after: datetime) -> dict:
    """Check everything the failover needs, changing nothing; return the plan. The permissions of the later steps
    are tried with DryRun (the permission, not every parameter: RunInstances is tried without tags)."""
    plan = _check_params(conf)
    cell, cn, ec2 = _ctx(plan)
    # the node that runs the validator now, not the inventory's first one
    placement = live.for_run(cell, DAG_ID, run_id)
    failed_id = placement.active.instance_id
    other_live_replacements(ec2, cell, cn, run_id, failed_id)
    backup = load_backup(cell, cn)
    failed = ec2.instance(failed_id)
    eip = ec2.address(cn.elastic_ip_allocation_id)
    images = [i for i in ec2.find_images({T.CELL: cell.name, T.NODE: cn.name, T.KIND: T.KIND_CN_IMAGE})
              if i["State"] == "available"]
    if not images:
        raise TakeoverError(f"no available CN image of {cn.name}: run kaia_cn_maintenance (it makes one) "
                            "before failing over")
    image = images[0]
    zone = ec2.conn.describe_subnets(SubnetIds=[cell.launch.subnet_id])["Subnets"][0]["AvailabilityZone"]
    snapshot, why = None, "use_presnapshot is off"
    if plan["use_presnapshot"]:
        usable = [s for s in ec2.find_snapshots({T.CELL: cell.name, T.KIND: T.KIND_PN_CHAINDATA, T.CLEAN_STOP: "true"})
                  if s["State"] == "completed"]
        if usable and run_after - usable[0]["StartTime"] <= timedelta(hours=plan["max_snapshot_age_hours"]):
            snapshot, why = usable[0], "newest pre-taken snapshot"
        else:
            why = ("no completed pre-taken snapshot" if not usable
                   else f"newest pre-taken snapshot {usable[0]['SnapshotId']} is older than "
                        f"{plan['max_snapshot_age_hours']} h")
    source_pn = T.tag_dict(snapshot).get(T.NODE) if snapshot else (
        plan["snapshot_pn"] if plan["snapshot_pn"] != "auto" else cell.maintenance.snapshot_pn or cell.pns[0].name)
    pn = next(p for p in cell.pns if p.name == source_pn)
    pn_node = KaiaNodeHook(pn)
    image_tags = T.tag_dict(image)
    issues = compat.problems(image_tags.get(T.DB_FLAGS, compat.db_flags("")), image_tags.get(T.KCN_VERSION, "v0.0.0"),
                             compat.db_flags(pn_node.conf().get("ADDITIONAL", "")), pn_node.version(), pn.name)
    if issues:
        raise TakeoverError("the PN's chain data does not fit the CN image: " + "; ".join(issues))
    permissions = {
        "RunInstances": _dry_run(lambda: ec2.conn.run_instances(ImageId=image["ImageId"], MinCount=1, MaxCount=1,
                                                                InstanceType=cell.launch.instance_type,
                                                                SubnetId=cell.launch.subnet_id, DryRun=True),
                                 "ec2:RunInstances"),
        "AssociateAddress": _dry_run(lambda: ec2.conn.associate_address(AllocationId=cn.elastic_ip_allocation_id,
                                                                        InstanceId=failed_id,
                                                                        AllowReassociation=True, DryRun=True),
                                     "ec2:AssociateAddress"),
        "StopInstances": _dry_run(lambda: ec2.conn.stop_instances(InstanceIds=[failed_id], DryRun=True),
                                  "ec2:StopInstances"),
        "CreateVolume": _dry_run(lambda: ec2.conn.create_volume(AvailabilityZone=zone, DryRun=True, **(
            {"SnapshotId": snapshot["SnapshotId"]} if snapshot else {"Size": 1})), "ec2:CreateVolume"),
        "AttachVolume": _dry_run(lambda: ec2.conn.attach_volume(VolumeId=pn.data_volume_id, InstanceId=failed_id,
                                                                Device=cn.data_device, DryRun=True),
                                 "ec2:AttachVolume"),
        # what chaindata_snapshot tags: the snapshot (the image if none yet)
        "CreateTags": _dry_run(lambda: ec2.conn.create_tags(
            Resources=[snapshot["SnapshotId"] if snapshot else image["ImageId"]],
            Tags=[{"Key": T.IN_USE_BY, "Value": run_id}], DryRun=True),
            "ec2:CreateTags"),
    }
    if not snapshot:
        permissions["CreateSnapshot"] = _dry_run(
            lambda: ec2.conn.create_snapshot(VolumeId=pn.data_volume_id, DryRun=True), "ec2:CreateSnapshot")
    plan |= {
        "cell": cell.name, "aws_conn_id": cell.aws_conn_id, "region": cell.region, "run_id": run_id,
        "failed_instance_id": failed_id, "placement": placement.model_dump(mode="json"),
        "failed_state": failed["State"]["Name"],
        "expected_node_id": backup.node_id, "image_id": image["ImageId"], "image_created": image.get("CreationDate"),
        "zone": zone, "allocation_id": cn.elastic_ip_allocation_id, "public_ip": eip["PublicIp"],
        "eip_holder": eip.get("InstanceId"), "snapshot_id": snapshot["SnapshotId"] if snapshot else None,
        "snapshot_why": why, "snapshot_pn": pn.name, "pn_volume_id": pn.data_volume_id, "permissions": permissions,
        # For a fresh snapshot: the chosen PN first, then the others whose chain data fits the image and whose volume
        # was snapshotted before (kaia_ha.pn).
        "snapshot_pns": [] if snapshot else [pn.name, *incremental(
            cell, fitting(cell, candidates(cell, pn.name)[1:], image_tags))],
        "snapshot_tags": T.base_tags(cell.name, T.KIND_PN_CHAINDATA, run_id, DAG_ID, pn.name) | {T.CLEAN_STOP: "true"},
    }
    log.info("Failover plan for %s: image %s, chain data %s (%s), EIP %s, node %s…", cn.name, image["ImageId"],
             plan["snapshot_id"] or f"fresh snapshot of {pn.name}", why, plan["public_ip"], backup.node_id[:16])
    return plan


# ----- 2. fence --------------------------------------------------------------------------------------------------
@step
def fence(plan: dict) -> dict:
    """Make sure the failed CN cannot sign again: autostart off (if its host answers), instance stopped.
    With fencing off, only proceed when it is already down."""
    cell, cn, ec2 = _ctx(plan)
    failed_id = plan["failed_instance_id"]
    state = ec2.instance(failed_id)["State"]["Name"]
    if not plan["fence"]:
        if state not in ("stopped", "terminated"):
            raise TakeoverError(f"fence is off but {failed_id} is {state}: a second live node with the same key would "
                                "double-sign. Stop it yourself or trigger again with fence on.")
        return {"fenced": False, "instance_state": state}
    node = failed_node(plan, cell)
    over_ssh = False  # kcnd disabled and the keys set aside on the host itself; else they stay on its disk
    try:  # a dead host is the usual case: then the instance stop alone fences it
        up, why = answers_ssh(node, attempts=2, pause=1.0)
        if up:
            host, over_ssh = fence_kcnd(node, plan["run_id"]), True
        else:
            host = f"host not reachable over SSH ({why}); fencing by stopping the instance"
    except (TakeoverError, NodeCommandError) as exc:
        host = f"kcnd not fenced over SSH ({exc}); fencing by stopping the instance"
    finally:
        node.close()
    # Without the OS shutdown by default: the failed CN's OS has nothing left to give (its chain data is not reused,
    # its keys come from the backup) and a graceful stop keeps the validator down a minute longer.
    graceful = plan.get("graceful_stop", False)
    before = ec2.stop_instance(failed_id, skip_os_shutdown=not graceful)
    return {"fenced": True, "instance_state_before": before, "host": host, "over_ssh": over_ssh,
            "stop_requested_at": time.time(),
            "stop": "graceful (OS shutdown)" if graceful else "without the OS shutdown (SkipOsShutdown)"}


@step
def wait_stopped(plan: dict, fence_result: dict) -> dict | None:
    """One poke: is the fenced instance stopped? A stop still not confirmed after ``force_stop_after()`` seconds is
    repeated with Force (an instance stuck in ``stopping``); the report says so."""
    _, _, ec2 = _ctx(plan)
    failed_id = plan["failed_instance_id"]
    state = ec2.instance(failed_id)["State"]["Name"]
    waited = time.time() - fence_result.get("stop_requested_at", time.time())
    forced = bool(fence_result.get("fenced")) and waited > settings.force_stop_after()
    if state in ("stopped", "terminated"):
        return {"state": state, "seconds": round(waited, 1), "forced": forced}
    if not fence_result.get("fenced"):
        raise TakeoverError(f"fence is off and {failed_id} is {state}")
    # Force again only after another limit has passed: the pokes come every second, a forced stop takes seconds.
    if forced and state == "stopping" and time.time() - _forced_at.get(failed_id, 0) > settings.force_stop_after():
        log.warning("%s still stopping after %.0f s: stopping it with Force", failed_id, waited)
        ec2.stop_instance(failed_id, skip_os_shutdown=True, force=True)
        _forced_at[failed_id] = time.time()
    return None


_forced_at: dict[str, float] = {}  # instance -> when this worker process last stopped it with Force (poke mode)


@step
def confirm_fenced(plan: dict) -> dict:
    cell, cn, ec2 = _ctx(plan)
    state = ec2.instance(plan["failed_instance_id"])["State"]["Name"]
    if state not in ("stopped", "terminated"):
        raise TakeoverError(f"{plan['failed_instance_id']} is {state}, not stopped: fencing not confirmed; "
                            "not continuing into a second live node")
    return {"instance_state": state}


def _defuse_instance(ec2: CoreCellEC2Hook, instance_id: str, cn: CN, run_id: str, root: bool) -> dict:
    instance = ec2.instance(instance_id)
    state = instance["State"]["Name"]
    if state == "terminated":
        return {"state": state, "detached": {}}
    if state != "stopped":
        raise TakeoverError(f"{instance_id} is {state}: only a stopped instance is defused (fencing must come first)")
    devices = [cn.data_device] + ([instance["RootDeviceName"]] if root else [])
    detached = {}
    for device in devices:
        volume = ec2.detach_for_good(instance_id, device,
                                     {T.FENCED_BY: run_id, T.FENCED_FROM: f"{instance_id}:{device}"})
        detached[device] = volume or "detached already"
    ec2.tag(instance_id, {T.FENCED_BY: run_id})
    return {"state": state, "detached": detached}


@step
def defuse(plan: dict, fence_result: dict | None) -> dict:
    """Once fencing is confirmed, a fenced CN can no longer run the validator key without a person's deliberate act,
    whoever starts the instance later (an investigation, an auto-recovery, a schedule): its DATA_DIR volume (the keys)
    is detached, tagged and kept for forensics (never deleted). When its host was not fenced over SSH, kcnd is still
    enabled and a `--nodekey` file may sit on its root disk: the root volume is detached too, so it cannot boot at all.
    Stopped replacements of earlier runs of this validator get the same."""
    cell, cn, ec2 = _ctx(plan)
    failed = plan["failed_instance_id"]
    if not (fence_result or {}).get("fenced"):
        return {"skipped": "fence is off: the failed CN was down already and is left as it is"}
    done = {failed: _defuse_instance(ec2, failed, cn, plan["run_id"], root=not fence_result.get("over_ssh"))}
    earlier = ec2.find_instances({T.CELL: cell.name, T.NODE: cn.name, T.KIND: T.KIND_REPLACEMENT_CN}, ("stopped",))
    for instance in earlier:  # superseded: a replacement of an earlier run, never the one this run launched
        tags = T.tag_dict(instance)
        if instance["InstanceId"] != failed and tags.get(T.RUN_ID) != plan["run_id"] and T.FENCED_BY not in tags:
            done[instance["InstanceId"]] = _defuse_instance(ec2, instance["InstanceId"], cn, plan["run_id"], root=True)
    return done


# ----- 3. chain data --------------------------------------------------------------------------------------------
def needs_fresh_snapshot(plan: dict) -> bool:
    return plan["snapshot_id"] is None


@step
def stop_snapshot_pn(plan: dict, ti) -> dict:
    """kpnd stopped cleanly on its own on the chosen PN, else on the next healthy one that fits (``kaia_ha.pn``). None
    stops: this step is skipped, and chaindata_snapshot falls back to the newest pre-taken snapshot."""
    cell = load_inventory().cell(plan["cell"])
    names = plan.get("snapshot_pns") or [plan["snapshot_pn"]]
    result = stop_for_snapshot(cell, names, ti, plan["snapshot_tags"])
    if result["pn"] is None:
        raise AirflowSkipException(f"no PN stopped cleanly ({why_none(result)}): "
                                   "the newest pre-taken snapshot is used")
    return result


def pretaken_fallback(cell: Cell, attempts: list[dict] | None) -> tuple[str, str, str]:
    """(snapshot id, source, warning) when no PN stopped cleanly: the newest pre-taken snapshot whatever its age."""
    why = why_none({"attempts": attempts or []})
    found = newest_pretaken(cell, datetime.now(timezone.utc))
    if not found:
        raise TakeoverError(f"no PN of {cell.name} stopped cleanly for a fresh snapshot ({why}) and there is no "
                            "completed pre-taken snapshot: nothing to build the CN's chain data from. Bring a PN back "
                            "to health, or run kaia_cn_maintenance, then clear chain_data")
    warning = (f"no PN stopped cleanly for a fresh snapshot ({why}); using the newest pre-taken snapshot "
               f"{found['snapshot_id']}, {found['age_hours']} h old: the CN has about {found['blocks_behind']} blocks "
               f"to catch up ({found['blocks_how']})")
    log.warning(warning)
    return found["snapshot_id"], "pre-taken fallback", warning


@step
@needs("ec2:DescribeSnapshots")
def chaindata_snapshot(plan: dict, fresh_snapshot_id: str | None, attempts: list[dict] | None = None) -> dict:
    """The snapshot this run uses, tagged in use so that retention spares it: the pre-taken one, the fresh one, or
    when no PN stopped cleanly the newest pre-taken one whatever its age."""
    cell, cn, ec2 = _ctx(plan)
    snapshot_id, warning = plan["snapshot_id"] or fresh_snapshot_id, None
    source = "pre-taken" if plan["snapshot_id"] else "fresh"
    if not snapshot_id:
        snapshot_id, source, warning = pretaken_fallback(cell, attempts)
    snapshot = ec2.conn.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
    if snapshot["State"] != "completed":
        raise TakeoverError(f"snapshot {snapshot_id} is {snapshot['State']}, not completed")
    ec2.tag(snapshot_id, {T.IN_USE_BY: plan["run_id"]})
    used = {"snapshot_id": snapshot_id, "size": snapshot["VolumeSize"], "source": source}
    return used | ({"warning": warning} if warning else {})


@step
def create_volume(plan: dict, snapshot: dict) -> str:
    """A volume from the snapshot in the replacement's zone, sized from the snapshot (ClientToken from the run)."""
    cell, cn, ec2 = _ctx(plan)
    if plan["warmup"] == "fast-snapshot-restore":
        log.warning("Fast Snapshot Restore must be enabled on the snapshot ahead of time (it is billed per hour); "
                    "falling back to lazy loading for this volume")
    tags = T.base_tags(cell.name, T.KIND_CHAINDATA_VOLUME, plan["run_id"], DAG_ID, cn.name) | {
        "Name": f"{cn.name}-data-failover"}
    return ec2.create_volume(
        snapshot_id=snapshot["snapshot_id"], zone=plan["zone"], size=snapshot["size"], tags=tags,
        client_token=T.client_token(plan["run_id"], "volume"),
        initialization_rate=300 if plan["warmup"] == "initialization-rate" else None,
    )


# ----- 4. launch --------------------------------------------------------------------------------------------------
@step
def launch(plan: dict) -> str:
    """RunInstances from the CN image; the ClientToken makes a retry return the same instance."""
    cell, cn, ec2 = _ctx(plan)
    tags = T.base_tags(cell.name, T.KIND_REPLACEMENT_CN, plan["run_id"], DAG_ID, cn.name) | {
        "Name": f"{cn.name}-replacement", "kaia:replaces": plan["failed_instance_id"]}
    return ec2.launch_instance(image_id=plan["image_id"], launch=cell.launch, tags=tags,
                               user_data=REPLACEMENT_USER_DATA,
                               client_token=T.client_token(plan["run_id"], "launch"))


def running_host(plan: dict, instance_id: str) -> dict | None:
    """One poke: the new instance's address and SSH host key once it runs and cloud-init has printed the key to
    the console output (the EC2 API, not a first connect); None until then."""
    _, _, ec2 = _ctx(plan)
    instance = ec2.instance(instance_id)
    state = instance["State"]["Name"]
    if state in ("stopping", "stopped", "shutting-down", "terminated"):
        reason = instance.get("StateReason", {}).get("Message", "no reason given")
        raise TakeoverError(f"the replacement {instance_id} is {state} ({reason}): clear launch and what follows")
    if state != "running":
        return None
    host_key = ec2.host_key_from_console(instance_id)
    if not host_key:
        log.info("%s runs; no SSH host key in its console output yet (cloud-init prints it at first boot)", instance_id)
        return None
    log.info("%s at %s has host key %s", instance_id, instance["PrivateIpAddress"], host_key)
    return {"new_instance_id": instance_id, "new_private_ip": instance["PrivateIpAddress"], "new_host_key": host_key}


# ----- 5-7. the replacement's disk and identity --------------------------------------------------------------------
@step
def attach_and_mount(plan: dict, host: dict, volume_id: str) -> dict:
    """Attach the volume where DATA_DIR lives and mount it; kcnd (started at boot on an empty DATA_DIR) is
    stopped first."""
    cell, cn, ec2 = _ctx(plan)
    plan = plan | host
    attached = ec2.attach_volume(volume_id=volume_id, instance_id=host["new_instance_id"], device=cn.data_device)
    node = replacement(plan, cell, cn)
    node.run(f"sudo systemctl stop {cn.service}", timeout=120)
    data_dir = shlex.quote(cn.data_dir)
    mounted = node.run(f"mountpoint -q {data_dir}", check=False).rc == 0
    if not mounted:
        node.run(f"sudo mkdir -p {data_dir} && sudo mount {shlex.quote(cn.data_device)} {data_dir}", timeout=120)
    if plan["warmup"] == "read-through":
        # Read every block once so first reads during sync do not wait on S3 (lazy loading).
        node.run(f"sudo sh -c {shlex.quote(f'nohup find {data_dir} -type f -exec cat {{}} + >/dev/null 2>&1 &')}")
    return {"volume": attached, "mounted": "already" if mounted else "now", "volume_id": volume_id}


@step
def prune(plan: dict, host: dict) -> dict:
    """Remove everything but klay/chaindata (top-level files would shadow klay/), after making sure
    kcnd.conf's DATA_DIR is where the chain data is (moving klay/ there when the PN kept it deeper)."""
    cell, cn, _ = _ctx(plan)
    node = replacement(plan | host, cell, cn)
    data_dir = cn.data_dir
    conf_dir = node.conf().get("DATA_DIR", "").rstrip("/")
    if conf_dir != data_dir.rstrip("/"):
        raise Refused(f"kcnd.conf on the replacement says DATA_DIR={conf_dir!r}, the inventory says {data_dir!r}: "
                            "fix one of them (the node would start without the chain data)")
    if node.run(f"mountpoint -q {shlex.quote(data_dir)}", check=False).rc != 0:
        # kcnd ran at boot on the image's empty DATA_DIR and made a klay/chaindata there: pruning that would
        # leave a CN starting from block 0.
        raise Refused(f"{data_dir} is not a mount point on the replacement: the chain data volume is not mounted there")
    found = node.run(f"sudo find {shlex.quote(data_dir)} -maxdepth 4 -type d -path '*/klay/chaindata'",
                     check=False).stdout.split()
    if not found:
        raise Refused(f"no klay/chaindata on the volume mounted at {data_dir}: wrong snapshot or volume")
    target = f"{data_dir}/klay/chaindata"
    moved = None
    if target not in found:
        source = found[0][: -len("/klay/chaindata")]
        move = (f"mkdir -p {data_dir}/klay.new && mv {source}/klay/chaindata {data_dir}/klay.new/chaindata && "
                f"rm -rf {data_dir}/klay && mv {data_dir}/klay.new {data_dir}/klay")
        node.run(f"sudo sh -c {shlex.quote(move)}")
        moved = source
    script = (f"find {shlex.quote(data_dir)} -mindepth 1 -maxdepth 1 ! -name klay -exec rm -rf {{}} + && "
              f"find {shlex.quote(data_dir + '/klay')} -mindepth 1 -maxdepth 1 ! -name chaindata -exec rm -rf {{}} + "
              f"&& chmod 700 {shlex.quote(data_dir + '/klay')}")
    node.run(f"sudo sh -c {shlex.quote(script)}")
    left = node.run(f"sudo find {shlex.quote(data_dir)} -mindepth 1 -maxdepth 2", check=False).stdout.split()
    if sorted(left) != sorted([f"{data_dir}/klay", target]):
        raise TakeoverError(f"after pruning {data_dir} still holds {sorted(left)}")
    if not node.run(f"sudo ls -A {shlex.quote(target)}").stdout.strip():
        raise TakeoverError(f"{target} is empty")
    return {"kept": target, "moved_from": moved}


@step
def install_keys(plan: dict, host: dict) -> dict:
    cell, cn, ec2 = _ctx(plan)
    # the key goes to one replacement only
    other_live_replacements(ec2, cell, cn, plan["run_id"], plan["failed_instance_id"])
    return install_identity(replacement(plan | host, cell, cn), load_backup(cell, cn))


# ----- 8-9. network and start ---------------------------------------------------------------------------------------
@step
def move_ip(plan: dict, host: dict) -> dict:
    """The failed CN's Elastic IP onto the replacement: other operators' firewalls and peers know that IP."""
    cell, cn, ec2 = _ctx(plan)
    # never take the IP off another run's live replacement
    other_live_replacements(ec2, cell, cn, plan["run_id"], plan["failed_instance_id"])
    address = ec2.move_address(allocation_id=plan["allocation_id"], instance_id=host["new_instance_id"])
    if address.get("InstanceId") != host["new_instance_id"]:
        raise TakeoverError(f"the Elastic IP {plan['public_ip']} is on {address.get('InstanceId')}, "
                            "not on the replacement")
    return {"public_ip": address["PublicIp"], "instance_id": address["InstanceId"]}


@step
def start_kcnd(plan: dict, host: dict) -> dict:
    cell, cn, ec2 = _ctx(plan)
    # again before kcnd runs: another run may have begun since
    other_live_replacements(ec2, cell, cn, plan["run_id"], plan["failed_instance_id"])
    node = replacement(plan | host, cell, cn)
    data_dir = cn.data_dir.rstrip("/")
    # What prune and install_keys must have left: a node started with anything else is not the validator.
    allowed = {f"{data_dir}/klay", f"{data_dir}/klay/chaindata", f"{data_dir}/klay/nodekey",
               f"{data_dir}/klay/bls-nodekey"}
    left = set(node.run(f"sudo find {shlex.quote(data_dir)} -mindepth 1 -maxdepth 2", check=False).stdout.split())
    if left - allowed or f"{data_dir}/klay/chaindata" not in left:
        raise Refused(f"not starting {cn.service}: {data_dir} holds {sorted(left - allowed)} besides klay/chaindata "
                      f"and the keys{'' if f'{data_dir}/klay/chaindata' in left else ' and no klay/chaindata'}: "
                      "clear prune (and what follows) and run it again")
    try:
        identity = verify_identity_on_disk(node, load_backup(cell, cn))
    except TakeoverError as exc:  # install_keys did not run or was undone: starting would make a new node
        raise Refused(f"not starting {cn.service}: {exc}; clear install_keys and what follows") from None
    node.set_autostart(True)
    node.start_service()
    return {"state": node.service_state(), "node_id": identity["node_id"][:16] + "…"}


@step
def in_sync(plan: dict, host: dict) -> dict | None:
    """The honest check: identity, BLS key, PN and CN peers (``peers_needed``), not syncing, near a PN's head,
    rising."""
    cell, cn, ec2 = _ctx(plan)
    holder = ec2.address(plan["allocation_id"]).get("InstanceId")
    if holder != host["new_instance_id"]:  # PNs and other CNs accept the validator only at its known IP
        raise Refused(f"the Elastic IP {plan['public_ip']} is on {holder or 'no instance'}, not on the replacement "
                      f"{host['new_instance_id']}: clear move_ip and what follows")
    node = replacement(plan | host, cell, cn)
    state = node.service_state()
    if state == "activating":
        return None
    if state != "active":
        raise Refused(f"{cn.service} is {state} on the replacement, not running: see its log ({node.log_path()}); "
                      "clear start_kcnd and what follows")
    verdict = sync_check(node, cell, load_backup(cell, cn))
    log.info("sync: %s", verdict.summary())
    if verdict.ok:
        return {"checks": verdict.checks}
    identity = [c for c in verdict.checks if c["name"] in ("identity", "bls key") and not c["ok"]]
    if identity:  # waiting cannot fix a wrong key: fail now
        raise Refused("; ".join(c["detail"] for c in identity))
    return None


@step
def record_placement(plan: dict, host: dict, fence_result: dict | None) -> dict:
    """Once the replacement is verified in sync (the only way this task runs): it runs the validator now and the
    failed instance is fenced. A conditional write: a run whose placement changed meanwhile records nothing."""
    cell, cn, _ = _ctx(plan)
    fence_how = "instance stopped" + (
        ", kcnd disabled and keys aside over SSH" if (fence_result or {}).get("over_ssh")
        else ", host not reached over SSH")
    active = Active(host=cn.name, instance_id=host["new_instance_id"], private_ip=host["new_private_ip"],
                    host_key=host["new_host_key"], ssh_conn_id=cell.launch.ssh_conn_template)
    fenced = Fenced(host=cn.name, instance_id=plan["failed_instance_id"], run_id=plan["run_id"], dag_id=DAG_ID,
                    at=live.now(), how=fence_how)
    new = live.update(cell, lambda p: after_failover(p, active, fenced), dag_id=DAG_ID, run_id=plan["run_id"],
                      why=f"failover of {cn.name} from {plan['failed_instance_id']} to {host['new_instance_id']}",
                      since=plan["placement"]["generation"])
    return {"generation": new.generation, "before": new.change.before, "after": new.change.after}


# ----- 10. report -----------------------------------------------------------------------------------------------
def report(ti, dag_run, plan: dict | None, host: dict | None, volume_id: str | None, snapshot: dict | None) -> dict:
    plan, host = plan or {}, host or {}
    facts = {
        "failed CN": f"{plan.get('failed_cn')} ({plan.get('failed_instance_id')}, was {plan.get('failed_state')})",
        "replacement instance": host.get("new_instance_id"), "replacement private IP": host.get("new_private_ip"),
        "Elastic IP": plan.get("public_ip"), "CN image": plan.get("image_id"),
        "chain data snapshot": (f"{(snapshot or {}).get('snapshot_id')} ({(snapshot or {}).get('source')}; "
                                f"{plan.get('snapshot_why')})"),
        "data volume": volume_id, "node ID": (plan.get("expected_node_id") or "")[:16] + "…",
        "dry run": plan.get("dry_run"),
    }
    attempts = ti.xcom_pull(task_ids=STOP_KPND_TASK, key=ATTEMPTS_KEY, default=None) or []
    if attempts:  # a fresh snapshot was tried: which PN stopped, which were skipped and why
        facts["PN stops"] = "; ".join(f"{a['pn']}: {a['outcome']}" + (f" ({a['why']})" if a.get("why") else "")
                                      for a in attempts)
    if (snapshot or {}).get("warning"):
        facts["WARNING"] = snapshot["warning"]
    stop = ti.xcom_pull(task_ids=FENCE_TASK, default=None) or {}
    stopped = ti.xcom_pull(task_ids=WAIT_STOPPED_TASK, default=None) or {}
    facts["fence stop"] = (f"{stop.get('stop', 'not requested')}; " + (
        f"stopped after {stopped['seconds']} s" + (" (Force used: the stop hung)" if stopped.get("forced") else "")
        if stopped else "not confirmed"))
    defused = ti.xcom_pull(task_ids=DEFUSE_TASK, default=None) or {}
    facts["defused"] = defused or "not done"
    todo = [
        f"the fenced instance {plan.get('failed_instance_id')} and the volumes detached from it "
        f"(tag {T.FENCED_BY}={plan.get('run_id')}: "
        f"{defused.get(plan.get('failed_instance_id'), {}).get('detached', 'see defuse')}) are kept for forensics. "
        "To look at a volume: attach it to a separate instance WITHOUT Kaia, mount it read-only "
        "(`mount -o ro,noload`), never to a CN; terminate the instance and delete the volumes once the cause is "
        "understood",
        f"remove the tag {T.IN_USE_BY} from snapshot {(snapshot or {}).get('snapshot_id')} "
        "when the replacement is accepted",
        "run kaia_cn_maintenance: back up the keys and image the new CN",
    ]
    states = ti.get_task_states(dag_id=dag_run.dag_id, run_ids=[dag_run.run_id]).get(dag_run.run_id, {})
    if states.get(DEFUSE_TASK) == "failed":
        todo.insert(0, f"the fenced instance {plan.get('failed_instance_id')} still has its data volume "
                       "(defuse failed): do NOT start it (it would run the validator key beside the replacement); "
                       f"clear {DEFUSE_TASK}")
    recorded = ti.xcom_pull(task_ids=RECORD_TASK, default=None)
    facts["live placement"] = (f"generation {recorded['generation']}: {recorded['after']} "
                               f"(was: {recorded['before']})" if recorded
                               else f"unchanged ({states.get(RECORD_TASK, 'not run')})")
    if states.get(RECORD_TASK) == "failed":
        todo.insert(0, "the replacement runs the validator but the live placement does NOT say so "
                       f"(record_placement failed): clear {RECORD_TASK}, or record it by hand "
                       f"(`python -m kaia_ha.live show {plan.get('cell')}`, then `record`); "
                       "until then maintenance and the next failover act on the fenced instance")
    launched = host.get("new_instance_id") or ti.xcom_pull(task_ids=LAUNCH_TASK, default=None)
    if launched and any(s in ("failed", "upstream_failed") for s in states.values()):
        todo.insert(0, f"the replacement {launched} may hold the validator key: go on with this run "
                       "(clear its failed task), or stop or terminate it before triggering a new run "
                       "(a new run refuses while it is not stopped)")
    left = ti.xcom_pull(task_ids=STOP_KPND_TASK, key=STOPPED_KEY, default=None) or [plan.get("snapshot_pn", "?")]
    urgent = ([kpnd_urgent(", ".join(left), START_KPND_TASK)]
              if kpnd_left_stopped(states, STOP_KPND_TASK, START_KPND_TASK) else [])
    todo = urgent + todo  # first in the list: a PN down hurts the cell now
    data = failover_report(ti, dag_run, title="Kaia CN cloud failover", synced_task=IN_SYNC_TASK, facts=facts,
                           todo=[] if plan.get("dry_run") else todo, urgent=urgent, dry_run=bool(plan.get("dry_run")))
    unsent = None
    if plan.get("cell"):
        subject = (f"[kaia-ha] URGENT: PN {plan.get('snapshot_pn')} may be DOWN; " if urgent else "[kaia-ha] ") + (
            f"failover of {plan['failed_cn']} {'succeeded' if data['ok'] else 'FAILED'}")
        unsent = alert(load_inventory().cell(plan["cell"]), subject, f"RTO {data['rto_seconds']} s. Failed tasks: "
                       f"{data['failed_tasks'] or 'none'}. Report: {data['files']['markdown']}")
    if not data["ok"]:
        verdict = (f"failover not complete: {data['failed_tasks'] or 'the CN is not in sync'} "
                   f"(report {data['files']['markdown']})")
        raise TakeoverError("; ".join([*urgent, verdict] + ([unsent] if unsent else [])))
    return {"ok": data["ok"], "rto_seconds": data["rto_seconds"], "report": data["files"]["markdown"]} | (
        {"alert_not_sent": unsent} if unsent else {})
