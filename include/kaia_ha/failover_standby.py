"""The steps of the bare-metal failover: the standby CN takes the failed active's identity and floating IP.

The seed's four steps (stop the standby, swap the nodekey, move the IP, start) plus what the node's
source demands: the standby's own derived ``bls-nodekey`` goes with its nodekey, a top-level nodekey
would shadow ``klay/nodekey``, a malformed key would silently become a new identity (so the identity is
proved on disk before the start and on the running node after it), and the failed active is fenced
first so that two live nodes never hold one key.

Every step reads the preflight's plan (JSON-safe, no keys), is safe to retry or clear (each checks what
is already done first), and records its timing for the report. Keys are fetched from Secrets Manager
by the step that writes them and reach a host only over SSH stdin.
"""

from __future__ import annotations

import logging
import shlex
import time

from kaia_ha import dag_ids, live
from kaia_ha.alerts import alert, notify
from kaia_ha.floating_ip import holds_ip, ip_answered_elsewhere, ip_configured, release_floating_ip, take_floating_ip
from kaia_ha.model.health import ProbeError
from kaia_ha.model.inventory import CN, Cell, FloatingIP, load_inventory
from kaia_ha.model.keys import InvalidKeyError, KeyBackup, NodeKey
from kaia_ha.model.placement import Active, Fenced, after_failover
from kaia_ha.report import step
from kaia_ha.standby import standby_conf_problems
from kaia_ha.takeover import (
    FailoverInputError,
    TakeoverError,
    answers_ssh,
    aside_dir,
    failover_report,
    fence_kcnd,
    install_identity,
    keep_aside,
    load_backup,
    refuse_unknown_params,
    sync_check,
    verify_identity_on_disk,
)
from kaia_ha_airflow.hooks.kaia_node import HostUnreachable, KaiaNodeHook, NodeCommandError

log = logging.getLogger(__name__)
DAG_ID = dag_ids.FAILOVER_STANDBY
# what may shadow klay/ on a standby (its static-nodes.json is its PN list: kept)
KEY_FILES = ("nodekey", "bls-nodekey")
# The DAG's task ids that this module and the DAG read (XCom, states, branch targets): the DAG file names its tasks
# with these, so each id is written once.
VALIDATE_TASK = "preflight.validate"
CHECK_BACKUP_TASK, CHECK_STANDBY_TASK = "preflight.check_backup", "preflight.check_standby"
CHECK_FAILED_ACTIVE_TASK = "preflight.check_failed_active"
FENCE_OVER_SSH, CONFIRM_DOWN, DECLARED_DOWN = "fence.fence_over_ssh", "fence.confirm_down", "fence.declared_down"
VERIFY_FENCED_TASK = "fence.verify_fenced"
STOP_STANDBY_TASK, REPLACE_IDENTITY_TASK = "takeover.stop_standby", "takeover.replace_identity"
MOVE_FLOATING_IP_TASK = "takeover.move_floating_ip"
START_STANDBY_TASK = "start.start_standby"
SYNCED_TASK = "start.standby_synced"
RECORD_TASK = "start.record_placement"
IPC_WAIT = 30  # seconds for kcnd's console to open after `systemctl start`
PARAMS = ("failed_cn", "standby_cn", "fence_failed_active", "host_known_dead", "dry_run")
# `systemctl is-active` answers that mean kcnd runs or is about to (a crash loop shows "activating").
KCND_UP = ("active", "activating", "reloading", "deactivating")


def metal_actives() -> list[str]:
    """The validators of the bare-metal cells; a broken inventory raises its own error (naming the field). Where
    each runs now is live placement, read by the preflight."""
    return [cell.validator.name for cell in load_inventory().cells_of("bare-metal")]


def failed_host(cn: CN) -> KaiaNodeHook:
    """SSH to the failed active: one connection attempt per try (``answers_ssh`` decides how often to try)."""
    return KaiaNodeHook(cn, connect_timeout=10, connect_attempts=1)


def _ctx(plan: dict) -> tuple[Cell, CN, CN]:
    inventory = load_inventory()
    cell = inventory.cell(plan["cell"])
    return cell, cell.cn(plan["failed_host"]), cell.cn(plan["standby_cn"])


def _state_command(node: KaiaNodeHook, fip: FloatingIP) -> str:
    return f"systemctl is-active {node.node.service}; ip -4 addr show dev {shlex.quote(fip.interface)}"


def _state(out: str, fip: FloatingIP) -> dict:
    state, _, addresses = out.partition("\n")
    return {"kcnd": state.strip() or "unknown", "holds_floating_ip": ip_configured(addresses, fip)}


def node_state(node: KaiaNodeHook, fip: FloatingIP) -> dict:
    """In one round trip: is kcnd active, is the floating IP configured on this host. SSH trouble raises."""
    return _state(node.run(_state_command(node, fip), check=False).stdout, fip)


def host_state(node: KaiaNodeHook, fip: FloatingIP, attempts: int = 3) -> dict:
    """``node_state`` of a host that may be down (the failed active): whether it answers over SSH at all."""
    reachable, out = answers_ssh(node, attempts=attempts, command=_state_command(node, fip))
    if not reachable:
        return {"reachable": False, "detail": out}
    return {"reachable": True, "detail": "answers over SSH", **_state(out, fip)}


def _key_on_disk(node: KaiaNodeHook) -> NodeKey | None:
    """The nodekey the node would read, or None when it is missing or malformed (never printed)."""
    try:
        key, _ = node.read_key("nodekey")
    except InvalidKeyError:
        return None
    return key


def _holds_failed_key(node: KaiaNodeHook, backup: KeyBackup) -> bool:
    key = _key_on_disk(node)
    return key is not None and key.node_id == backup.node_id


# ----- 1. preflight (changes nothing) --------------------------------------------------------------------------
@step
def validate(conf: dict, run_id: str) -> dict:
    """The trigger's params checked against the inventory; the plan every later step reads."""
    refuse_unknown_params(conf, PARAMS)
    actives = metal_actives()
    failed_name = conf.get("failed_cn")
    if not failed_name:
        raise FailoverInputError(f"failed_cn: choose the active CN that failed, one of {actives}")
    if failed_name not in actives:
        raise FailoverInputError(f"failed_cn: {failed_name!r} is not the validator of a bare-metal core cell; choose "
                                 f"one of {actives}")
    for field in ("fence_failed_active", "host_known_dead", "dry_run"):
        if not isinstance(conf.get(field, False), bool):
            raise FailoverInputError(f"{field}: must be true or false, got {conf.get(field)!r}")
    cell, _ = load_inventory().find_cn(failed_name)
    wanted = conf.get("standby_cn") or ""
    hosts = [cn.name for cn in cell.cns]
    if wanted and wanted not in hosts:  # checked before anything is read: the live placement is in S3
        raise FailoverInputError(f"standby_cn: {wanted!r} is not a CN of {cell.name}; choose one of {hosts} or leave "
                                 "it empty")
    # which host runs the validator now and which stand by: not the inventory's roles
    placement = live.for_run(cell, DAG_ID, run_id)
    failed = cell.cn(placement.active.host)
    standbys = [s.host for s in placement.standbys]
    if wanted and wanted not in standbys:
        raise FailoverInputError(f"standby_cn: {wanted!r} is not a standby of {cell.name} now (live placement: "
                                 f"{placement.summary()}); choose one of {standbys} or leave it empty")
    if not standbys:
        raise FailoverInputError(f"failed_cn: core cell {cell.name} has no standby now ({placement.summary()}): "
                                 "nothing to fail over to. Enrol one with kaia_cn_enroll_standby")
    fip = cell.floating_ip
    standby = placement.standby(wanted or standbys[0])
    plan = {
        "cell": cell.name, "failed_cn": failed_name, "failed_host": failed.name, "standby_cn": standby.host,
        "standby_node_id": standby.node_id or cell.cn(standby.host).node_id, "run_id": run_id,
        "placement": placement.model_dump(mode="json"),
        "fence": conf.get("fence_failed_active", True), "known_dead": conf.get("host_known_dead", False),
        "dry_run": conf.get("dry_run", False), "floating_ip": fip.address, "interface": fip.interface,
        "gateway": fip.gateway,
    }
    log.info("Failover plan: %s takes over %s from %s in %s (floating IP %s)", plan["standby_cn"], failed_name,
             failed.name,
             cell.name, fip.address)
    return plan


@step
def check_backup(plan: dict) -> dict:
    """The failed active's keys exist in Secrets Manager and are the inventory's node."""
    cell, failed, standby = _ctx(plan)
    backup = load_backup(cell, cell.validator)
    if plan["standby_node_id"] == backup.node_id:
        raise TakeoverError(f"{standby.name} is recorded with the validator's node ID: a standby must run its own "
                            "key; enrol it again (kaia_cn_enroll_standby) or fix the inventory")
    return {"secret_id": cell.validator.nodekey_secret_id, "node_id": backup.node_id,
            "bls_nodekey": backup.bls is not None,
            "bls_public_key": backup.bls_public_key is not None}


@step
def check_standby(plan: dict) -> dict:
    """The standby answers, its kcnd.conf reads the key where the failover writes it, and it is in sync
    (the honest check: PN peers, not syncing, near a PN's head, rising) with its OWN identity. A standby
    that already holds the failed CN's key is a takeover an earlier try began: accepted."""
    cell, failed, standby = _ctx(plan)
    node = KaiaNodeHook(standby)
    problems = standby_conf_problems(node, standby)
    if problems:
        raise TakeoverError(f"{standby.name} is not ready to take over: " + "; ".join(problems))
    backup = load_backup(cell, cell.validator)
    facts = {"standby": standby.name}
    if _holds_failed_key(node, backup):
        return facts | {"state": f"holds the key of {failed.name} already (a takeover an earlier run began); "
                                 "continuing it"}
    verdict = sync_check(node, cell, None, expected_node_id=plan["standby_node_id"])
    if not verdict.ok:
        raise TakeoverError(f"{standby.name} is not in sync, so it cannot take over now: "
                            f"{'; '.join(verdict.failed())}. Fix it, or choose another standby (standby_cn)")
    return facts | {"state": "in sync with its own identity", "checks": verdict.checks}


@step
def check_failed_active(plan: dict) -> dict:
    """Read only: does the failed active's host answer, does kcnd run there, does it hold the floating IP?
    Tells the operator which way it will be fenced. Never fails on an unreachable host (that is the incident)."""
    cell, failed, _ = _ctx(plan)
    facts = host_state(failed_host(failed), cell.floating_ip)
    if facts["reachable"]:
        facts["fence"] = ("over SSH: stop kcnd, disable it, release the IP, keys aside" if plan["fence"]
                          else "fencing off: the run stops if kcnd runs there" if facts["kcnd"] in KCND_UP
                          else "fencing off; kcnd not running")
    else:
        facts["fence"] = ("declared dead by the host_known_dead param" if plan["known_dead"]
                          else "the run will ask you to confirm it is down")
    return facts


@step
def check_floating_ip(plan: dict) -> dict:
    """The floating IP and the site's commands to move it; where it is configured now."""
    cell, _, standby = _ctx(plan)
    fip = cell.floating_ip
    shown = KaiaNodeHook(standby).run(f"ip -4 addr show dev {shlex.quote(fip.interface)}", check=False)
    if shown.rc != 0:
        raise TakeoverError(f"floating_ip.interface: {standby.name} has no interface {fip.interface!r}: "
                            f"{shown.stderr.strip()[-200:]}")
    commands = {w: fip.command(w) for w in ("add", "announce", "check_free", "del") if getattr(fip, f"{w}_cmd")}
    if fip.gateway:
        commands |= {"source": fip.command("source"), "unsource": fip.command("unsource")}
    return {"address": fip.address, "interface": fip.interface, "gateway": fip.gateway,
            "standby_holds": ip_configured(shown.stdout, fip), "commands": commands}


# ----- 2. fence the failed active --------------------------------------------------------------------------------
def fence_path(plan: dict) -> str:
    """Which way to fence (the branch): over SSH if the host answers, else the operator's word."""
    cell, failed, _ = _ctx(plan)
    host = host_state(failed_host(failed), cell.floating_ip)
    if host["reachable"]:
        if plan["fence"]:
            return FENCE_OVER_SSH
        if host["kcnd"] in KCND_UP:
            raise TakeoverError(f"fence_failed_active is off but kcnd is running on {failed.name}: two live nodes "
                                "with one key double-sign. Stop it yourself, or trigger again with fencing on")
        return DECLARED_DOWN
    detail = host["detail"]
    log.warning("%s does not answer over SSH: %s", failed.name, detail)
    if plan["known_dead"]:
        return DECLARED_DOWN
    notify(cell, f"[kaia-ha] confirm {failed.name} is down",
           f"The failover of {failed.name} ({cell.name}) to {plan['standby_cn']} waits for you: {failed.name} does "
           f"not answer over SSH ({detail}). Make sure it is powered off or cut off, then approve 'confirm_down' "
           f"under Required actions in Airflow (DAG {DAG_ID}, run {plan['run_id']}).")
    return CONFIRM_DOWN


@step
def fence_over_ssh(plan: dict) -> dict:
    """The failed active's host answers: kcnd stopped, disabled, no auto-restart, keys aside, floating IP released."""
    cell, failed, _ = _ctx(plan)
    node = KaiaNodeHook(failed)
    fenced = fence_kcnd(node, plan["run_id"])
    return fenced | {"floating_ip": release_floating_ip(node, cell.floating_ip)}


@step
def declared_down(plan: dict) -> dict:
    """No change on the failed host: it does not answer and the operator declared it dead, or fencing is off and kcnd
    is not running."""
    _, failed, _ = _ctx(plan)
    why = ("host_known_dead: the operator declared the host dead" if plan["known_dead"]
           else "fencing off; kcnd not running there")
    return {"how": why, "cn": failed.name}


@step
def verify_fenced(plan: dict) -> dict:
    """Whatever the path: if the failed host answers, kcnd is not running there and it does not hold the IP;
    and no other host answers ARP for the floating IP (a host whose SSH is cut may still run)."""
    cell, failed, standby = _ctx(plan)
    fip = cell.floating_ip
    host = host_state(failed_host(failed), fip, attempts=2)
    reachable = host["reachable"]
    if reachable:
        if host["kcnd"] in KCND_UP:
            raise TakeoverError(f"kcnd runs on {failed.name} again: not fenced. Stop and disable it, then clear this "
                                "task")
        if host["holds_floating_ip"]:
            raise TakeoverError(f"{failed.name} still holds {fip.ip}: release it there (`{fip.command('del')}`), then "
                                "clear this task")
    node = KaiaNodeHook(standby)
    if not holds_ip(node, fip) and ip_answered_elsewhere(node, fip):
        raise TakeoverError(
            f"another host still answers ARP for {fip.ip} (`{fip.command('check_free')}` on {standby.name}): "
            f"{failed.name} may still be up with the address (its SSH may be cut while kcnd runs). Power it off "
            "(BMC/IPMI, PDU) or unplug it, then clear this task. Not continuing: two live nodes with one key "
            "double-sign")
    return {"failed_host": "answers over SSH, kcnd stopped, IP released" if reachable else "does not answer over SSH",
            "arp": "no other host answers for the floating IP" if fip.check_free_cmd
            else "not checked (no check_free_cmd)"}


# ----- 3-5. the standby takes over ----------------------------------------------------------------------------------
@step
def stop_standby(plan: dict) -> dict:
    """Stop kcnd on the standby and prove the stop was clean (a killed node's database does not open)."""
    cell, failed, standby = _ctx(plan)
    node = KaiaNodeHook(standby)
    now = node_state(node, cell.floating_ip)
    if (now["kcnd"] == "active" and now["holds_floating_ip"]
            and node.probe().node_id == load_backup(cell, cell.validator).node_id):
        return {"state": "active", "skipped": "already runs as the validator (an earlier try took over): not stopped"}
    stopped = node.stop_service()
    if not stopped["clean"]:
        raise TakeoverError(
            f"{standby.name}: kcnd did not stop cleanly (no 'Blockchain manager stopped' then 'Database closed'; "
            f"killed after STOP_TIMEOUT?): its database may not open. Last log lines:\n{stopped['log_tail']}")
    return {"state": stopped["state"], "stop_seconds": stopped["stop_seconds"]}


@step
def replace_identity(plan: dict) -> dict:
    """The standby's own nodekey and bls-nodekey aside (for a fail-back), the failed active's installed in
    DATA_DIR/klay (0600, atomic) with nothing at the top level to shadow them; proved on disk."""
    cell, failed, standby = _ctx(plan)
    node = KaiaNodeHook(standby)
    backup = load_backup(cell, cell.validator)
    aside = aside_dir(standby.data_dir, plan["run_id"])
    if node.service_state() == "active":
        if node.probe().node_id != backup.node_id:
            raise TakeoverError(f"kcnd runs on {standby.name}: its keys are not replaced under a running node (clear "
                                "stop_standby first)")
        # It runs as the validator already (an earlier try): nothing to change under it, only prove the files.
        return {"own_keys": "aside by an earlier try", "own_keys_dir": aside, **verify_identity_on_disk(node, backup)}
    if _holds_failed_key(node, backup):  # an earlier try or run installed it: the own keys are aside already
        listing = f"ls -d {shlex.quote(aside_dir(standby.data_dir, ''))}*/ 2>/dev/null; true"
        earlier = node.run(f"sudo sh -c {shlex.quote(listing)}").stdout.split()
        own = (f"aside by an earlier try or run ({', '.join(earlier)})" if earlier
               else "not found (the failed CN's key was there already)")
        aside = aside if aside + "/" in earlier else (earlier[-1].rstrip("/") if earlier else aside)
    else:
        moved = keep_aside(node, plan["run_id"])
        own = "aside" if moved or node.existing([aside]) else "none found"  # existing: a try whose answer was lost
    installed = install_identity(node, backup, shadowing=KEY_FILES)
    return {"own_keys": own, "own_keys_dir": aside, **installed}


@step
def move_floating_ip(plan: dict) -> dict:
    """Configure the floating IP on the standby (the site's commands), announce it (gratuitous ARP), make it
    the source of outbound connections when the inventory names a gateway, and prove it is there."""
    cell, _, standby = _ctx(plan)
    fip = cell.floating_ip
    done = take_floating_ip(KaiaNodeHook(standby), fip)
    return {"floating_ip": fip.address, "on": standby.name, "done": done}


# ----- 6. start and verify --------------------------------------------------------------------------------------------
@step
def start_standby(plan: dict) -> dict:
    """Right before the start: the keys the node will read are the failed CN's, and the floating IP is here.
    Then kcnd enabled and started, and the running node's ID checked at once."""
    cell, failed, standby = _ctx(plan)
    fip = cell.floating_ip
    node = KaiaNodeHook(standby)
    backup = load_backup(cell, cell.validator)
    on_disk = verify_identity_on_disk(node, backup)
    if not holds_ip(node, fip):
        raise TakeoverError(
            f"the floating IP {fip.ip} is not on {standby.name} (`ip addr show dev {fip.interface}`): the IP move was "
            f"skipped or undone. Started now, the validator would come up at {standby.name}'s own address, where "
            "neither the PNs nor the other operators' CNs accept it. Run move_floating_ip first")
    # Enabled: the validator now, it must come back after a reboot.
    started = node.run(f"sudo systemctl enable {standby.service} && sudo systemctl start {standby.service}",
                       check=False, timeout=120)
    deadline = time.monotonic() + IPC_WAIT
    while True:  # the console opens a moment after the init script returns
        try:
            running = node.probe().node_id
            break
        except HostUnreachable:
            raise
        except (NodeCommandError, ProbeError) as exc:
            if time.monotonic() > deadline or node.service_state() != "active":
                raise TakeoverError(f"{standby.name}: kcnd does not answer after `systemctl start` (exit {started.rc}: "
                                    f"{started.stderr.strip()[-200:]}; {exc}). Last log lines:\n"
                                    f"{_log_tail(node)}") from None
            time.sleep(1)
    if running != backup.node_id:
        raise TakeoverError(f"{standby.name} runs as node {running[:16]}…, not {failed.name}'s "
                            f"{backup.node_id[:16]}…: the node generated or read another key (its log says 'Generated "
                            "nodekey'?)")
    return {"state": "active", "node_id": running, "key_path": on_disk["nodekey_path"]}


@step
def standby_synced(plan: dict) -> dict | None:
    """One poke of the honest check with the failed CN's identity: node ID and BLS key, PN AND CN peers (the
    other operators accept the node at the floating IP), not syncing, near a PN's head, rising. None: not yet."""
    cell, failed, standby = _ctx(plan)
    node = KaiaNodeHook(standby)
    try:
        verdict = sync_check(node, cell, load_backup(cell, cell.validator))
    except (HostUnreachable, TakeoverError) as exc:  # a dropped session, or no PN answered: judge at the next poke
        log.warning("%s", exc)
        return None
    except (NodeCommandError, ProbeError):
        if node.service_state() != "active":
            raise TakeoverError(f"kcnd stopped running on {standby.name}. Last log lines:\n{_log_tail(node)}") from None
        raise
    log.info("sync: %s", verdict.summary())
    if verdict.ok:
        return {"checks": verdict.checks}
    wrong = [c["detail"] for c in verdict.checks if c["name"] in ("identity", "bls key") and not c["ok"]]
    if wrong:  # waiting cannot fix a wrong key
        raise TakeoverError(f"{standby.name}: " + "; ".join(wrong))
    return None


def _log_tail(node: KaiaNodeHook, lines: int = 5) -> str:
    return node.run(f"sudo tail -n {lines} {shlex.quote(node.log_path())}", check=False).stdout


@step
def record_placement(plan: dict, ti) -> dict:
    """Once the standby is verified in sync (the only way this task runs): it is the active now, stands by no more,
    and the failed host is fenced. A conditional write: a run whose placement changed meanwhile records nothing."""
    cell, failed, standby = _ctx(plan)
    states = ti.get_task_states(dag_id=DAG_ID, run_ids=[plan["run_id"]]).get(plan["run_id"], {})
    how = fencing(states, lambda t: ti.xcom_pull(task_ids=t, default=None) or {}, plan)["path"]
    new = live.update(
        cell, lambda p: after_failover(p, Active(host=standby.name), Fenced(
            host=failed.name, run_id=plan["run_id"], dag_id=DAG_ID, at=live.now(),
            how="over SSH (kcnd stopped and disabled, keys aside, IP released)" if how == "over SSH"
            else f"without SSH ({how})")),
        dag_id=DAG_ID, run_id=plan["run_id"], why=f"failover of {plan['failed_cn']} from {failed.name} to "
                                                  f"{standby.name}",
        since=plan["placement"]["generation"])
    return {"generation": new.generation, "before": new.change.before, "after": new.change.after}


# ----- 7. report ------------------------------------------------------------------------------------------------
def fencing(states: dict, pull, plan: dict) -> dict:
    """How the failed active was fenced, from whichever fence path ran."""
    approval = pull(CONFIRM_DOWN)
    if states.get(FENCE_OVER_SSH) == "success":
        return {"path": "over SSH", **pull(FENCE_OVER_SSH)}
    if states.get(CONFIRM_DOWN) == "success":
        # A rejection skips what follows and leaves no return value (Airflow ends the task on the skip).
        rejected = not approval and states.get(VERIFY_FENCED_TASK) == "skipped"
        return {"path": "operator's answer", "answer": ["Reject"] if rejected else approval.get("chosen_options"),
                "by": (approval.get("responded_by_user") or {}).get("name", "see the task's Required action"),
                "at": str(approval.get("responded_at", ""))}
    if states.get(DECLARED_DOWN) == "success":
        return {"path": "declared", **pull(DECLARED_DOWN)}
    return {"path": "not done" + (" (dry run)" if plan.get("dry_run") else "")}


def report(ti, dag_run, plan: dict | None) -> dict:
    """Timeline, RTO, the checks and what the operator must still do; SNS with the outcome."""
    plan = plan or {}

    def pull(task_id: str):
        return ti.xcom_pull(task_ids=task_id, default=None) or {}

    states = ti.get_task_states(dag_id=dag_run.dag_id, run_ids=[dag_run.run_id]).get(dag_run.run_id, {})
    failed_cn, standby_cn = plan.get("failed_cn"), plan.get("standby_cn")
    fence = fencing(states, pull, plan)
    identity = pull(REPLACE_IDENTITY_TASK)
    facts = {
        "core cell": plan.get("cell"), "validator": failed_cn, "failed active host": plan.get("failed_host"),
        "standby that took over": standby_cn,
        "live placement": (lambda r: f"generation {r['generation']}: {r['after']} (was: {r['before']})" if r
                           else f"unchanged ({states.get(RECORD_TASK, 'not run')})")(pull(RECORD_TASK)),
        "validator node ID": pull(CHECK_BACKUP_TASK).get("node_id"), "dry run": plan.get("dry_run"),
        "preflight": {"standby": pull(CHECK_STANDBY_TASK).get("state"),
                      "failed active": pull(CHECK_FAILED_ACTIVE_TASK)},
        "fencing": fence, "fencing verified": pull(VERIFY_FENCED_TASK),
        "standby stop": pull(STOP_STANDBY_TASK),
        "standby's own keys": {"host": standby_cn, "state": identity.get("own_keys"),
                               "dir": identity.get("own_keys_dir")},
        "identity on disk": {k: identity.get(k) for k in ("nodekey_path", "bls_nodekey", "mode", "removed_shadowing")},
        "floating IP": pull(MOVE_FLOATING_IP_TASK) or {"floating_ip": plan.get("floating_ip"), "on": "not moved"},
        "running node ID": pull(START_STANDBY_TASK).get("node_id"),
    }
    data = failover_report(ti, dag_run, title="Kaia CN bare-metal failover (Active-Standby)", synced_task=SYNCED_TASK,
                           facts=facts,
                           todo=_todo(plan, fence, identity), checks=pull(SYNCED_TASK).get("checks"),
                           dry_run=bool(plan.get("dry_run")))
    unsent = None
    if plan.get("cell"):
        outcome = "dry run passed" if data["ok"] and plan.get("dry_run") else "succeeded" if data["ok"] else "FAILED"
        unsent = alert(load_inventory().cell(plan["cell"]), f"[kaia-ha] failover of {failed_cn} to {standby_cn} "
                       f"{outcome}",
                       f"RTO {data['rto_seconds']} s. Failed tasks: {data['failed_tasks'] or 'none'}. "
                       f"Fencing: {fence['path']}. Report: {data['files']['markdown']}")
    if not data["ok"]:
        where, also = f"(report {data['files']['markdown']})", f"; {unsent}" if unsent else ""
        if fence["path"] == "operator's answer" and fence["answer"] != ["Approve"]:
            raise TakeoverError(f"not failed over: the operator did not confirm that {failed_cn} is down {where}{also}")
        missing = data["failed_tasks"] or "the standby is not in sync"
        raise TakeoverError(f"failover not complete: {missing} {where}{also}")
    return {"ok": True, "rto_seconds": data["rto_seconds"], "report": data["files"]["markdown"]} | (
        {"alert_not_sent": unsent} if unsent else {})


def _todo(plan: dict, fence: dict, identity: dict) -> list[str]:
    standby, cell = plan.get("standby_cn"), plan.get("cell")
    if plan.get("dry_run"):
        return ["nothing was changed: to fail over, trigger again with dry run off"]
    host = plan.get("failed_host")
    todo = [
        f"{cell} has NO standby now (readiness alerts until it has one): make {host} (once repaired) or a new host "
        "the standby with kaia_cn_enroll_standby; it gets a NEW nodekey of its own, never the validator's",
        f"keep {standby}'s own keys ({identity.get('own_keys_dir', 'see above')}) until the new standby runs; never "
        "start them on two nodes",
        "the live placement records the new active (see above): nothing to edit in the inventory",
    ]
    if fence["path"] == "over SSH":
        todo.append(f"{host}: kcnd is stopped and disabled there and its keys are aside under its "
                    "DATA_DIR.keys-aside/; kaia_cn_enroll_standby shreds them when you ask (shred_keys_aside)")
    else:
        todo.append(f"{host} was NOT fenced over SSH (fencing: {fence['path']}): it still holds the validator's "
                    "nodekey and may start kcnd at boot. Before it is powered on or reconnected: boot it off the "
                    "network, `systemctl disable kcnd`, set AUTO_RESTART_NODE=0 in kcnd.conf, move DATA_DIR/nodekey, "
                    "DATA_DIR/klay/nodekey, both bls-nodekey files and any --nodekey file of ADDITIONAL away, and "
                    f"make sure it does not configure {plan.get('floating_ip')} at boot")
    if not plan.get("gateway"):
        todo.append(f"the inventory names no floating_ip.gateway, so outbound connections from {standby} leave from "
                    f"its own address, not {plan.get('floating_ip')}: if other operators' firewalls filter by source "
                    "address, set it")
    return todo
