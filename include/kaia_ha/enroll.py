"""The steps of the enrolment: a repaired or new bare-metal host becomes the cell's standby again.

After a standby failover the cell has no standby (readiness alerts it). A standby runs its OWN identity, never
the validator's: the keys the fencing set aside stay aside (or are shredded when the operator asks), the
node starts without a nodekey and generates a fresh one (the node's documented behaviour, logged as
`Generated nodekey`), its static-nodes.json lists the cell's PNs, and the PNs learn the new node ID
(static-nodes.json for their next start, ``admin.addPeer`` now). Once it is in sync with that identity,
the live placement records it as a standby.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import time

from kaia_ha import dag_ids, live
from kaia_ha.alerts import alert
from kaia_ha.floating_ip import release_floating_ip
from kaia_ha.model.inventory import CN, Cell, load_inventory
from kaia_ha.model.keys import InvalidKeyError
from kaia_ha.model.placement import Standby, after_enrolment
from kaia_ha.report import step
from kaia_ha.standby import parse_static_nodes, standby_conf_problems
from kaia_ha.takeover import (
    FailoverInputError,
    TakeoverError,
    answers_ssh,
    failover_report,
    keep_aside,
    load_backup,
    refuse_unknown_params,
    sync_check,
)
from kaia_ha_airflow.hooks.kaia_node import KaiaNodeHook, NodeCommandError

log = logging.getLogger(__name__)
DAG_ID = dag_ids.ENROLL_STANDBY
PARAMS = ("host", "shred_keys_aside")
# The DAG's task ids this module reads (the DAG file names its tasks with these).
PREFLIGHT_TASK, PREPARE_TASK, START_TASK = "preflight", "prepare", "start"
SYNCED_TASK = "standby_synced"
RECORD_TASK = "record_placement"


class EnrolError(TakeoverError):
    pass


def metal_hosts() -> list[str]:
    """Every bare-metal CN host; a broken inventory raises its own error (naming the field)."""
    return [cn.name for cell in load_inventory().cells_of("bare-metal") for cn in cell.cns]


def _ctx(plan: dict) -> tuple[Cell, CN, KaiaNodeHook]:
    cell = load_inventory().cell(plan["cell"])
    cn = cell.cn(plan["host"])
    return cell, cn, KaiaNodeHook(cn)


@step
def preflight(conf: dict, run_id: str) -> dict:
    """The host is a bare-metal CN that does not run the validator now, it answers, and its kcnd.conf reads the key
    where a later failover writes it. Changes nothing."""
    refuse_unknown_params(conf, PARAMS)
    hosts = metal_hosts()
    name = conf.get("host")
    if not isinstance(name, str) or name not in hosts:
        raise FailoverInputError(f"host: {name!r} is not a bare-metal CN host of the inventory; choose one of {hosts}")
    if not isinstance(conf.get("shred_keys_aside", False), bool):
        raise FailoverInputError(f"shred_keys_aside: must be true or false, got {conf.get('shred_keys_aside')!r}")
    cell, _ = load_inventory().find_cn(name)
    placement = live.current(cell)
    if placement.active.host == name:
        raise FailoverInputError(f"host: {name} runs the validator {placement.validator} now ({placement.summary()}); "
                                 "a standby must be another host")
    node = KaiaNodeHook(cell.cn(name))
    up, why = answers_ssh(node, attempts=2, pause=1.0)
    if not up:
        raise EnrolError(f"{name} does not answer over SSH ({why}): repair it first")
    problems = standby_conf_problems(node, cell.cn(name))
    if problems:
        raise EnrolError(f"{name} cannot stand by: " + "; ".join(problems))
    return {"cell": cell.name, "host": name, "run_id": run_id, "shred": conf.get("shred_keys_aside", False),
            "placement": placement.model_dump(mode="json"), "was": "fenced" if placement.is_fenced(name) else
            "standby already" if placement.standby(name) else "not in the placement"}


@step
def prepare(plan: dict) -> dict:
    """kcnd stopped and disabled while it changes; the validator's key never stays where the node reads it; the
    keys aside shredded if asked; static-nodes.json lists the cell's PNs; the floating IP not here."""
    cell, cn, node = _ctx(plan)
    validator_id = load_backup(cell, cell.validator).node_id
    if node.service_state() == "active":
        try:
            running = node.probe().node_id
        except Exception:  # noqa: BLE001 - a node that does not answer is stopped below anyway
            running = None
        if running == validator_id:
            raise EnrolError(f"kcnd on {cn.name} runs as the VALIDATOR ({validator_id[:16]}…): two live nodes with "
                             "one key. Fence it first (stop kcnd, keys aside); it is not the active "
                             f"({plan['placement']['active']['host']})")
        node.set_autostart(False)
        stopped = node.stop_service()
        if not stopped["clean"]:
            log.warning("%s: kcnd did not stop cleanly; the node repairs its state at the next start", cn.name)
    else:
        node.set_autostart(False)
    done = {}
    try:
        key, path = node.read_key("nodekey")
    except InvalidKeyError:
        key, path = None, "malformed"
    if key is not None and key.node_id == validator_id:
        done["validator_key"] = f"{path} was the validator's: moved aside to {keep_aside(node, plan['run_id'])}"
    elif key is None:
        # No key of its own: the node generates one at start. Its own leftover bls-nodekey must go with it.
        node.run("sudo rm -f " + " ".join(shlex.quote(p) for p in node.key_paths("bls-nodekey")))
    aside_root = cn.data_dir.rstrip("/") + ".keys-aside"
    if plan["shred"]:
        script = (f"[ -d {shlex.quote(aside_root)} ] && find {shlex.quote(aside_root)} -type f -exec shred -u {{}} + ; "
                  f"rm -rf {shlex.quote(aside_root)}; true")
        node.run(f"sudo sh -c {shlex.quote(script)}")
        done["keys_aside"] = f"shredded ({aside_root})"
    else:
        done["keys_aside"] = f"kept in {aside_root} (root only)"
    done["static_nodes"] = write_static_nodes(cell, cn, node)
    done["floating_ip"] = release_floating_ip(node, cell.floating_ip)
    key, path = node.read_key("nodekey")
    done["own_key"] = (f"its own key at {path} (node {key.node_id[:16]}…)" if key
                       else "none: the node generates a fresh one at start")
    return done


def pn_entries(cell: Cell) -> list[str]:
    """The cell's PNs as the active's static-nodes.json lists them (the addresses that work), checked against the
    PNs' running node IDs."""
    active = live.active_node(cell, live.current(cell))
    paths = active.existing(active.key_paths("static-nodes.json"))
    entries, _ = parse_static_nodes(active.run(f"sudo cat {shlex.quote(paths[0])}").stdout) if paths else ([], [])
    pn_ids = {KaiaNodeHook(pn).probe().node_id: pn.name for pn in cell.pns}
    found = {e["node_id"]: f"kni://{e['node_id']}@{e['ip']}:{e['port']}?discport=0&ntype=pn" for e in entries
             if e["node_id"] in pn_ids}
    missing = [name for nid, name in pn_ids.items() if nid not in found]
    if missing:
        raise EnrolError(f"the active's static-nodes.json does not list PN {', '.join(missing)}: fix it there first")
    return list(found.values())


def write_static_nodes(cell: Cell, cn: CN, node: KaiaNodeHook) -> str:
    urls = pn_entries(cell)
    paths = node.existing(node.key_paths("static-nodes.json"))
    path = paths[0] if paths else f"{cn.data_dir}/static-nodes.json"
    node.write_file(path, json.dumps(urls, indent=2) + "\n")
    return f"{path}: {len(urls)} PN(s)"


def own_address(node: KaiaNodeHook, cell: Cell) -> str:
    """The host's own address on the floating IP's interface (not the floating IP): where PNs see it."""
    fip = cell.floating_ip
    out = node.run(f"ip -4 addr show dev {shlex.quote(fip.interface)}").stdout
    ips = [ip for ip in re.findall(r"\binet (\d+\.\d+\.\d+\.\d+)/", out) if ip != fip.ip]
    if not ips:
        raise EnrolError(f"{node.node.name}: no address of its own on {fip.interface}")
    return ips[0]


@step
def start(plan: dict) -> dict:
    """kcnd enabled and started with its own identity (a fresh one when it had none); the PNs told of it."""
    cell, cn, node = _ctx(plan)
    validator_id = load_backup(cell, cell.validator).node_id
    node.run(f"sudo systemctl enable {cn.service} && sudo systemctl start {cn.service}", timeout=120)
    deadline = time.monotonic() + 30
    while True:  # the console opens a moment after the init script returns
        try:
            node_id = node.probe().node_id
            break
        except NodeCommandError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    if node_id == validator_id:  # prepare made this impossible; a second live validator is never accepted
        node.run(f"sudo systemctl disable {cn.service} && sudo systemctl stop {cn.service}", check=False, timeout=120)
        raise EnrolError(f"{cn.name} came up as the VALIDATOR: stopped and disabled again")
    kni = f"kni://{node_id}@{own_address(node, cell)}:32323?discport=0&ntype=cn"
    told = [tell_pn(pn, kni, node_id) for pn in cell.pns]
    return {"node_id": node_id, "pns": told}


def tell_pn(pn: CN, kni: str, node_id: str) -> str:
    """The PN accepts the new standby now (admin.addPeer) and after its next start (static-nodes.json)."""
    node = KaiaNodeHook(pn)
    paths = node.existing(node.key_paths("static-nodes.json"))
    path = paths[0] if paths else f"{pn.data_dir}/static-nodes.json"
    urls = json.loads(node.run(f"sudo cat {shlex.quote(path)}", check=False).stdout or "[]") if paths else []
    if not any(node_id in u for u in urls):
        node.write_file(path, json.dumps([*urls, kni], indent=2) + "\n")
    node.attach(f"admin.addPeer({json.dumps(kni)})")
    return f"{pn.name}: listed in {path}, peer added"


@step
def synced(plan: dict, started: dict) -> dict | None:
    """The honest check with the standby's own identity: PN peers, not syncing, near a PN's head, rising."""
    cell, _, node = _ctx(plan)
    verdict = sync_check(node, cell, None, expected_node_id=started["node_id"])
    log.info("sync: %s", verdict.summary())
    return {"checks": verdict.checks} if verdict.ok else None


@step
def record_placement(plan: dict, started: dict) -> dict:
    """The host stands by now, with the identity it runs; it is no longer fenced. Conditional, once per run."""
    cell, cn, _ = _ctx(plan)
    new = live.update(cell, lambda p: after_enrolment(p, Standby(host=cn.name, node_id=started["node_id"])),
                      dag_id=DAG_ID,
                      run_id=plan["run_id"], why=f"{cn.name} enrolled as standby (node {started['node_id'][:16]}…)",
                      since=plan["placement"]["generation"])
    return {"generation": new.generation, "before": new.change.before, "after": new.change.after}


def report(ti, dag_run, plan: dict | None) -> dict:
    plan = plan or {}

    def pull(task_id: str):
        return ti.xcom_pull(task_ids=task_id, default=None) or {}

    recorded = pull(RECORD_TASK)
    facts = {"core cell": plan.get("cell"), "host": plan.get("host"), "was": plan.get("was"),
             "prepared": pull(PREPARE_TASK),
             "started": pull(START_TASK),
             "live placement": f"generation {recorded['generation']}: {recorded['after']}" if recorded else "unchanged"}
    data = failover_report(ti, dag_run, title="Kaia CN standby enrolment", synced_task=SYNCED_TASK, facts=facts,
                           todo=[] if recorded else ["the host is not the standby: see the failed task, fix, clear it"],
                           checks=pull(SYNCED_TASK).get("checks"), dry_run=False)
    unsent = None
    if plan.get("cell"):
        outcome = "enrolled" if data["ok"] else "NOT enrolled"
        unsent = alert(load_inventory().cell(plan["cell"]), f"[kaia-ha] {plan.get('host')} {outcome} as standby of "
                       f"{plan['cell']}", f"Failed tasks: {data['failed_tasks'] or 'none'}. "
                       f"Report: {data['files']['markdown']}")
    if not data["ok"]:
        missing = data["failed_tasks"] or "not in sync"
        raise EnrolError(f"enrolment not complete: {missing} (report {data['files']['markdown']})"
                         + (f"; {unsent}" if unsent else ""))
    return {"ok": True, "report": data["files"]["markdown"]} | ({"alert_not_sent": unsent} if unsent else {})
