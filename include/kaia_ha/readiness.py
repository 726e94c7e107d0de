"""Standby readiness: could every bare-metal standby take over its active right now?

The seed's setup asks for a standby that runs its own nodekey and lists the PNs in its
``static-nodes.json``; a failover also needs it in sync, on the active's kcn version and DB flags, with
the key where the failover writes it, and a backup of the active's keys that matches the active. Each
check is a plain function of facts gathered read-only over SSH, so the rules are unit-tested apart
from the hosts. Drift raises an SNS alert and fails the standby's task; the report lists every check.
"""

from __future__ import annotations

import logging
import shlex

from kaia_ha import dag_ids, live
from kaia_ha.alerts import alert
from kaia_ha.floating_ip import holds_ip, release_floating_ip
from kaia_ha.model import compat
from kaia_ha.model.health import ProbeError
from kaia_ha.model.inventory import CN, Cell, load_inventory
from kaia_ha.model.keys import InvalidKeyError
from kaia_ha.model.placement import Standby
from kaia_ha.report import step, table, timeline, write
from kaia_ha.standby import parse_static_nodes, standby_conf_problems
from kaia_ha.takeover import TakeoverError, answers_ssh, fence_kcnd, load_backup, sync_check
from kaia_ha_airflow.hooks.kaia_node import KaiaNodeHook, NodeCommandError

log = logging.getLogger(__name__)
DAG_ID = dag_ids.STANDBY_READINESS
RESULT_KEY = "readiness"
# The DAG's task ids inside each cell's group that the report reads (the DAG file names its tasks with these).
ACTIVE_TASK = "active"
STANDBYS_TASK = "standbys"
FENCED_TASK = "fenced"
FENCED_KEY = "fenced_watch"
CONF_KEYS = ("DATA_DIR", "ADDITIONAL", "NETWORK", "NETWORK_ID")


class ReadinessError(RuntimeError):
    """A standby (or its active) is not ready for a failover; the message says what."""


def _cell(name: str) -> Cell:
    return load_inventory().cell(name)


# ----- facts (read only) ----------------------------------------------------------------------------------------
@step
def active_facts(cell_name: str) -> dict:
    """What the standby is compared with: the active's running node ID, kcn version, DB flags and network."""
    cell = _cell(cell_name)
    placement = live.current(cell)  # the host that runs the validator now
    cn = cell.cn(placement.active.host)
    node = live.active_node(cell, placement)
    try:
        probe = node.probe()
        conf = node.conf(CONF_KEYS)
        facts = {"cn": cn.name, "node_id": probe.node_id, "peers": probe.peers, "kcn_version": node.version(),
                 "db_flags": compat.db_flags(conf.get("ADDITIONAL", "")),
                 "network": f"{conf.get('NETWORK')}/{conf.get('NETWORK_ID')}",
                 "holds_floating_ip": holds_ip(node, cell.floating_ip)}
    except (NodeCommandError, ProbeError) as exc:  # retried; the run's failure alert names it
        raise ReadinessError(f"{cn.name} (active) does not answer: {exc}. If it is down, fail over with "
                             "kaia_cn_failover_standby") from None
    if not facts["holds_floating_ip"]:
        log.warning("%s does not hold the floating IP %s", cn.name, cell.floating_ip.address)
    return facts


def pn_node_ids(cell: Cell) -> dict[str, str | None]:
    """Each PN's node ID as it runs (the inventory does not carry PN node IDs); None when it does not answer."""
    ids = {}
    for pn in cell.pns:
        try:
            ids[pn.name] = KaiaNodeHook(pn).probe().node_id
        except Exception as exc:  # one PN down must not hide the other checks
            log.warning("%s: %s", pn.name, exc)
            ids[pn.name] = None
    return ids


def backup_facts(cell: Cell) -> dict:
    try:
        backup = load_backup(cell, cell.validator)
    except (TakeoverError, InvalidKeyError) as exc:
        return {"ok": False, "detail": str(exc)}
    return {"ok": True, "node_id": backup.node_id, "secret_id": cell.validator.nodekey_secret_id,
            "bls": backup.bls is not None}


def standby_facts(cell: Cell, cn: CN, own_node_id: str | None = None) -> dict:
    """Everything the checks need from the standby's host; each part guarded so one failure does not hide the rest."""
    node = KaiaNodeHook(cn)
    reachable, detail = answers_ssh(node, attempts=2)
    if not reachable:
        return {"reachable": False, "detail": detail}
    facts: dict = {"reachable": True}
    conf = node.conf(CONF_KEYS)
    facts |= {"db_flags": compat.db_flags(conf.get("ADDITIONAL", "")),
              "network": f"{conf.get('NETWORK')}/{conf.get('NETWORK_ID')}",
              "conf_problems": standby_conf_problems(node, cn), "kcn_version": node.version(),
              "holds_floating_ip": holds_ip(node, cell.floating_ip),
              "autostart": node.run(f"systemctl is-enabled {cn.service}", check=False).stdout.strip()}
    try:
        key, path = node.read_key("nodekey")
        facts |= {"disk_node_id": key.node_id if key else None, "key_path": path}
    except InvalidKeyError:
        facts |= {"disk_node_id": None, "key_path": "malformed"}
    static = node.existing(node.key_paths("static-nodes.json"))
    facts["static_nodes_path"] = static[0] if static else None
    if static:
        entries, bad = parse_static_nodes(node.run(f"sudo cat {shlex.quote(static[0])}").stdout)
        facts |= {"static_nodes": entries, "static_nodes_bad": bad}
    try:
        verdict = sync_check(node, cell, None, expected_node_id=own_node_id or cn.node_id)
        facts |= {"sync_ok": verdict.ok, "sync": verdict.checks, "live_node_id": node.probe().node_id}
    except (NodeCommandError, ProbeError, TakeoverError) as exc:
        facts |= {"sync_ok": False, "sync": [{"name": "answers", "ok": False, "detail": str(exc)[:300]}],
                  "live_node_id": None}
    return facts


# ----- the rules (pure) ---------------------------------------------------------------------------------------------
def assess(standby: CN, facts: dict, active: dict | None, active_cn: CN, backup: dict, pns: dict[str, str | None],
           own_node_id: str | None = None) -> list[dict]:
    """The readiness checks of one standby. ``ok`` is True, False (drift) or None (could not be judged).
    ``own_node_id``: the standby's own identity as recorded at its enrolment (else the inventory's)."""
    checks: list[dict] = []
    own_id = own_node_id or standby.node_id

    def check(name: str, ok: bool | None, detail: str) -> None:
        checks.append({"name": name, "ok": ok, "detail": detail})

    active_id = (active or {}).get("node_id") or active_cn.node_id or backup.get("node_id")
    if backup["ok"]:
        same = active is None or active.get("node_id") == backup["node_id"]
        check("active's key backup", same,
              f"{backup['secret_id']} holds node {backup['node_id'][:16]}…"
              + ("" if same else f", but {active_cn.name} runs as {active['node_id'][:16]}…: "
                                 "run kaia_cn_maintenance and find out why the key changed"))
    else:
        check("active's key backup", False, backup["detail"])
    if not facts["reachable"]:
        check("reachable", False, f"{standby.name} does not answer over SSH: {facts['detail']}")
        return checks
    running, disk = facts.get("live_node_id"), facts.get("disk_node_id")
    if running and running == active_id:
        check("own identity", False, f"{standby.name} runs with the ACTIVE's node ID {running[:16]}…: two live nodes "
                                     "with one key double-sign; stop it now")
    elif disk and disk == active_id:
        check("own identity", False, f"{standby.name}'s nodekey file ({facts['key_path']}) is the ACTIVE's key: a "
                                     "restart would make it a second validator")
    elif disk is None:
        check("own identity", False, f"{standby.name} has no usable nodekey ({facts.get('key_path') or 'none'}): a "
                                     "restart would silently generate a new identity that the PNs do not list")
    elif running and running != disk:
        check("own identity", False, f"the nodekey file ({facts['key_path']}) is node {disk[:16]}…, the running node "
                                     f"is {running[:16]}…: a restart changes its identity")
    elif own_id and (running or disk) != own_id:
        check("own identity", False, f"{standby.name} is node {(running or disk)[:16]}…, it was enrolled as "
                                     f"{own_id[:16]}…")
    else:
        check("own identity", True, f"node {(running or disk)[:16]}…, not the active's {(active_id or '?')[:16]}…")
    path = facts.get("static_nodes_path")
    if path is None:
        check("static-nodes.json", False, f"no static-nodes.json in DATA_DIR or DATA_DIR/klay on {standby.name}: it "
                                          "would find no PN to sync from")
    else:
        listed = {e["node_id"] for e in facts.get("static_nodes", [])}
        missing = [name for name, nid in pns.items() if nid and nid not in listed]
        unknown = [name for name, nid in pns.items() if not nid]
        bad = facts.get("static_nodes_bad", [])
        problems = ([f"entries that do not parse as kni://<node id>@<ip>:<port>: {bad}"] if bad else []) + (
            [f"no entry for PN {', '.join(f'{n} (node {pns[n][:16]}…)' for n in missing)}"] if missing else [])
        if problems:
            check("static-nodes.json", False, f"{path}: "
                  + "; ".join(problems) + f": {standby.name} would not sync from the cell's PNs")
        elif unknown:
            check("static-nodes.json", None, f"{path}: PN {', '.join(unknown)} did not answer, so its node ID is "
                                             "unknown")
        else:
            check("static-nodes.json", True, f"{path} lists every PN of the cell ({len(listed)} entries)")
    check("in sync", facts.get("sync_ok", False),
          "; ".join(f"{'ok' if c['ok'] else 'FAILED'} {c['name']}: {c['detail']}" for c in facts.get("sync", [])))
    if active is None:
        check("kcn version", None, "the active did not answer: not compared")
        check("DB flags and network", None, "the active did not answer: not compared")
    else:
        check("kcn version", facts["kcn_version"] == active["kcn_version"],
              f"standby {facts['kcn_version']}, active {active['kcn_version']}"
              + ("" if facts["kcn_version"] == active["kcn_version"] else
                 ": upgrade the standby together with the active"))
        same = facts["db_flags"] == active["db_flags"] and facts["network"] == active["network"]
        check("DB flags and network", same, f"standby {facts['db_flags']} on {facts['network']}" + (
            "" if same else f"; active {active['db_flags']} on {active['network']}"))
    problems = facts.get("conf_problems", [])
    check("key path", not problems,
          "; ".join(problems) or "kcnd.conf reads the key from DATA_DIR/klay, where the failover writes it")
    check("floating IP", not facts["holds_floating_ip"],
          "not configured on the standby" if not facts["holds_floating_ip"] else
          "configured on the standby while it is not the validator: two hosts answering for one address")
    check("starts at boot", facts.get("autostart") == "enabled",
          f"kcnd is {facts.get('autostart') or 'unknown'} at boot" + (
        "" if facts.get("autostart") == "enabled" else ": after a reboot the standby would stop syncing"))
    return checks


# ----- the tasks ------------------------------------------------------------------------------------------------
def _publish(result: list[dict] | dict) -> None:
    """Keep the checks in XCom also when the task then fails (the report needs them)."""
    try:
        from airflow.sdk import get_current_context

        get_current_context()["ti"].xcom_push(key=RESULT_KEY, value=result)
    except Exception:  # outside a task (a unit test): nothing to publish to
        pass


def check_one(cell: Cell, standby: Standby, active: dict | None) -> dict:
    """Every readiness check of one standby (the live placement's), with the identity it was enrolled with."""
    cn = cell.cn(standby.host)
    checks = assess(cn, standby_facts(cell, cn, standby.node_id), active, cell.validator, backup_facts(cell),
                    pn_node_ids(cell),
                    own_node_id=standby.node_id)
    return {"cell": cell.name, "standby": cn.name, "ok": all(c["ok"] is not False for c in checks), "checks": checks}


@step
def check_standbys(cell_name: str, active: dict | None) -> dict:
    """The standbys of the live placement: each must be able to take over now. None at all (after a failover, until
    one is enrolled) is drift too. SNS and a failed task on drift."""
    cell = _cell(cell_name)
    placement = live.current(cell)
    results = [check_one(cell, s, active) for s in placement.standbys]
    if not results:
        results = [{"cell": cell.name, "standby": "(none)", "ok": False, "checks": [{
            "name": "standby", "ok": False, "detail": f"{cell.name} has NO standby ({placement.summary()}): the "
                                                      "validator is unprotected. Enrol one with "
                                                      "kaia_cn_enroll_standby"}]}]
    _publish(results)
    drift = [(r["standby"], c) for r in results for c in r["checks"] if c["ok"] is False]
    if drift:
        lines = "\n".join(f"- {name}: {c['name']}: {c['detail']}" for name, c in drift)
        subject = (f"[kaia-ha] {cell.name} has NO standby" if not placement.standbys
                   else f"[kaia-ha] standby of {cell.name} is not ready for a failover")
        unsent = alert(cell, subject, f"{cell.name} (validator {placement.validator} on {placement.active.host}) could "
                                      f"not fail over now:\n{lines}")
        found = [f"{name}: {c['name']}: {c['detail']}" for name, c in drift] + ([unsent] if unsent else [])
        raise ReadinessError(f"{cell.name}: " + "; ".join(found))
    log.info("%s: every standby is ready (%s)", cell.name, ", ".join(r["standby"] for r in results))
    return {"cell": cell.name, "standbys": [r["standby"] for r in results]}


def fenced_without_ssh(placement) -> list:
    """Hosts fenced while they did not answer (declared dead, or confirmed down by the operator): their kcnd may
    still be enabled and their keys where the node reads them, so each readiness run looks for them."""
    return [f for f in placement.fenced if f.instance_id is None and not f.how.startswith("over SSH")]


@step
def watch_fenced(cell_name: str, run_id: str) -> dict:
    """Probe every host fenced without SSH. One that answers again is fenced over SSH at once (kcnd stopped and
    disabled, keys aside, floating IP released), recorded in the live placement, and alerted; URGENT when it was
    running the validator's identity (two live nodes with one key)."""
    cell = _cell(cell_name)
    placement = live.current(cell)
    seen: dict[str, str] = {}
    urgent, unsent = [], []  # unsent: alerts that could not be sent, said with the verdict
    for fenced in fenced_without_ssh(placement):
        node = KaiaNodeHook(cell.cn(fenced.host), connect_timeout=10, connect_attempts=1)
        up, why = answers_ssh(node, attempts=1)
        if not up:
            seen[fenced.host] = f"does not answer ({why}): fenced without SSH since {fenced.at}"
            continue
        running = None
        if node.service_state() == "active":
            try:
                running = node.probe().node_id
            except (NodeCommandError, ProbeError):
                running = "unknown"
        validator = load_backup(cell, cell.validator).node_id
        done = (fence_kcnd(node, f"{run_id}:{fenced.host}")
                | {"floating_ip": release_floating_ip(node, cell.floating_ip)})
        was = "running as the VALIDATOR" if running == validator else "running" if running else "not running"
        how = (f"over SSH by {DAG_ID} when it answered again (kcnd was {was}; now stopped and disabled, keys aside in "
               f"{done['keys_aside']}, IP {done['floating_ip']})")

        def refenced(p, host=fenced.host, how=how):
            stamp = {"how": how, "at": live.now(), "dag_id": DAG_ID, "run_id": run_id}
            return p.model_copy(update={"fenced": [f.model_copy(update=stamp)
                                                   if f.host == host and f.instance_id is None
                                                   else f for f in p.fenced]})

        live.update(cell, refenced, dag_id=DAG_ID, run_id=f"{run_id}:{fenced.host}",
                    why=f"fenced host {fenced.host} came back")
        seen[fenced.host] = how
        if running == validator:
            urgent.append(fenced.host)
        subject = (f"[kaia-ha] URGENT: fenced host {fenced.host} came back running the VALIDATOR key"
                   if running == validator
                   else f"[kaia-ha] fenced host {fenced.host} came back")
        unsent.append(alert(cell, subject, (
            f"{fenced.host} of {cell.name} was fenced without SSH ({fenced.how}, run {fenced.run_id}) and answers "
            f"again. It is fenced over SSH now: {how}."
            + (" It was running the validator's identity beside the active "
               f"{placement.active.host}: check for double signing now." if running == validator else ""))))
    _publish(seen)
    if urgent:  # the URGENT line first, whatever became of its alert
        raise ReadinessError("; ".join([f"URGENT: {', '.join(urgent)} came back running the validator key; fenced "
                                        "over SSH now", *filter(None, unsent)]))
    return seen


def report(ti, dag_id: str, run_id: str) -> dict:
    steps, states = timeline(ti, dag_id, run_id)
    cells = []
    for cell in load_inventory().cells_of("bare-metal"):
        active = ti.xcom_pull(task_ids=f"{cell.name}.{ACTIVE_TASK}", default=None)
        task = f"{cell.name}.{STANDBYS_TASK}"
        standbys = ti.xcom_pull(task_ids=task, key=RESULT_KEY, default=None) or [
            {"standby": "?", "ok": False, "checks": [{"name": "checked", "ok": False,
                                                      "detail": f"no result ({states.get(task)})"}]}]
        try:
            placement = live.current(cell).summary()
        except Exception as exc:  # the report must still be written
            placement = f"unknown ({type(exc).__name__})"
        watched = ti.xcom_pull(task_ids=f"{cell.name}.{FENCED_TASK}", key=RESULT_KEY, default=None) or {}
        cells.append({"cell": cell.name, "placement": placement, "standbys": standbys, "fenced": watched,
                      "active": active or {"cn": cell.validator.name, "error": states.get(f"{cell.name}.active")}})
    failed = sorted(t for t, s in states.items() if s in ("failed", "upstream_failed"))
    ok = not failed and all(s["ok"] for c in cells for s in c["standbys"])
    data = {"dag_id": dag_id, "run_id": run_id, "ok": ok, "failed_tasks": failed, "cells": cells, "steps": steps}
    lines = [f"# Kaia standby readiness: {run_id}", "",
             f"Result: {'every standby is ready' if ok else 'NOT READY: ' + (', '.join(failed) or 'see below')}", ""]
    for cell in cells:
        active = cell["active"]
        lines += [f"## {cell['cell']}", "", f"Live placement: {cell['placement']}", "",
                  f"Active {active.get('cn')}: " + (
            f"node {active['node_id'][:16]}…, {active['kcn_version']}, {active['db_flags']}, floating IP "
            f"{'held' if active['holds_floating_ip'] else 'NOT held'}" if "node_id" in active else "did not answer "
            f"({active.get('error')})"), ""]
        lines += [f"Fenced host {host}: {what}" for host, what in cell.get("fenced", {}).items()] + [""]
        for standby in cell["standbys"]:
            rows = [c | {"ok": {True: "ok", False: "FAILED", None: "?"}[c["ok"]]} for c in standby["checks"]]
            lines += [f"### Standby {standby['standby']}: {'ready' if standby['ok'] else 'NOT READY'}", "",
                      table(rows, ["name", "ok", "detail"])]
    text = "\n".join(lines)
    data["files"] = write(dag_id, run_id, data, text)
    log.info("Readiness report (%s):\n%s", data["files"]["markdown"], text)
    if not ok:
        raise ReadinessError(f"not every standby is ready: {failed or 'see the report'} ({data['files']['markdown']})")
    return {"ok": ok, "report": data["files"]["markdown"]}
