"""The watchdog's steps: judge each cell's active CN from independent views, count bad rounds, open one approval.

Why a scheduled DAG (every minute, ``max_active_runs=1``) with a reschedule-mode sensor doing a few rounds per run,
rather than a long-lived deferrable watch: a round needs SSH and the node console, which are blocking calls that
must not run in the triggerer's event loop; a reschedule-mode poke runs on a worker for a few seconds and gives the
slot back between rounds (the scheduler only re-queues it), and each run ends within its minute, so a stuck round,
a restarted scheduler or a changed inventory costs one run, not a watch that has to be revived. Rounds every
``watchdog.round_seconds`` (10 s) inside the run keep the time to notice under a minute with the default
``dead_after_rounds`` (3), which one round per minute could not.

One sensor for every cell (``watch_cells``): each poke is one round over all the cells at once, in threads (the
probes are SSH and API calls: I/O, not CPU), so a round costs one task start and the slowest cell's probes, not a
task start per cell (20 cells, one task each, took ~56 s a round on two cores against a 10 s period). The sensor
pokes at the smallest ``round_seconds``; a cell is probed only when due (its last round, in its record, at least its
``round_seconds`` ago) and until its share of the run's rounds is done. It ends on a cell that just turned dead (its
approval asked at once), else once every cell has had its rounds: a cell that stays dead does not cut the others'
rounds short. One cell whose round raises is logged and counted as that cell's bad round; the others' verdicts
stand.

Views of the active CN (the live placement's, so a new node is watched once a failover records it):

- the CN itself over SSH and IPC: answers, kcnd running, its node ID, its peers by type, its head;
- its PNs over SSH and IPC: their heads (the network's pace), how many CN peers each has;
- EC2 (cloud): the instance's state and status checks.

A bad round: the CN's host does not answer, kcnd does not run or its console does not answer, it has no peers, its
head trails the PNs' by more than ``max_head_lag``, or EC2 says the instance is not running. ``dead`` only after
``dead_after_rounds`` consecutive bad rounds; each probe is tried twice within a round, so one dropped SSH session
is not even one bad round. A PN that is down (a maintenance pre-snapshot) only degrades the view. The counter lives
in the state store beside the live placement (``_watchdog/<cell>.json``, overwritten each round): every worker sees
it, not a local disk.

Raised at once, without rounds (rate-limited to one alert per ``repeat_alert_minutes`` each): the CN runs a node ID
other than its validator's; it has PN peers but no CN peers (isolated from the other validators); a fenced node is
alive again.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from kaia_ha import dag_ids, live
from kaia_ha.alerts import notify
from kaia_ha.model.health import ProbeError
from kaia_ha.model.inventory import Cell, load_inventory
from kaia_ha.model.placement import Placement
from kaia_ha.over_cells import look_up_connections, threads_for
from kaia_ha_airflow.hooks.kaia_node import HostUnreachable, KaiaNodeHook, NodeCommandError
from kaia_ha_airflow.iam import needs

log = logging.getLogger(__name__)
DAG_ID = dag_ids.WATCHDOG
APPROVAL_DAG_ID = dag_ids.FAILOVER_APPROVAL
OPEN = ("queued", "running")
RUN_SECONDS = 45  # a run's rounds fit in its minute, so the next run starts on time


def failover_dag(cell: Cell) -> str:
    return dag_ids.failover_for(cell.scheme)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _record_name(cell: Cell) -> str:
    return f"_watchdog/{cell.name}.json"  # not under <cell>/: that folder holds only placement generations


def load_record(cell: Cell, st=None) -> dict:
    return (st or live.store()).get(_record_name(cell)) or {}


def save_record(cell: Cell, record: dict, st=None) -> None:
    (st or live.store()).put(_record_name(cell), record)


# ----- views ------------------------------------------------------------------------------------------------------
def _probe(node: KaiaNodeHook, tries: int = 2) -> dict:
    """One node's answer: the probe, or why there is none. Tried twice: one dropped session is not an answer."""
    why = ""
    for _ in range(tries):
        try:
            probe = node.probe()
            return {"answers": True, "running": True, "node_id": probe.node_id, "block": probe.block,
                    "peers": probe.peers}
        except HostUnreachable as exc:
            why = f"SSH: {exc}"
        except (NodeCommandError, ProbeError) as exc:
            try:
                state = node.service_state()
            except HostUnreachable as exc2:
                why = f"SSH: {exc2}"
                continue
            if state != "active":
                return {"answers": True, "running": False, "detail": f"{node.node.service} is {state}"}
            why = f"console: {str(exc)[:200]}"
        finally:
            node.close()
    return {"answers": not why.startswith("SSH"), "running": None, "detail": why}


@needs("ec2:DescribeInstanceStatus")
def ec2_view(cell: Cell, instance_id: str) -> dict:
    """The instance's state and status checks."""
    from kaia_ha_airflow.hooks.ec2 import CoreCellEC2Hook

    hook = CoreCellEC2Hook(aws_conn_id=cell.aws_conn_id, region_name=cell.region)
    try:
        state = hook.instance(instance_id)["State"]["Name"]
        statuses = hook.conn.describe_instance_status(InstanceIds=[instance_id])["InstanceStatuses"]
    except Exception as exc:  # EC2 unreachable says nothing about the CN: no view, not a bad one
        return {"instance_id": instance_id, "state": None, "detail": f"EC2 did not answer: {type(exc).__name__}"}
    checks = {k: statuses[0][k]["Status"] for k in ("InstanceStatus", "SystemStatus")} if statuses else {}
    return {"instance_id": instance_id, "state": state, "checks": checks}


def fenced_alive(cell: Cell, placement: Placement) -> list[str]:
    """Fenced nodes seen alive: a bare-metal host answering with kcnd running, an instance running again."""
    alive = []
    for f in placement.fenced:
        if f.instance_id:
            view = ec2_view(cell, f.instance_id)
            if view["state"] in ("pending", "running"):
                alive.append(f"fenced instance {f.instance_id} ({f.host}) is {view['state']} again")
        elif f.host in {cn.name for cn in cell.cns}:
            node = KaiaNodeHook(cell.cn(f.host), connect_attempts=1, connect_timeout=5)
            try:
                if node.service_state() == "active":
                    alive.append(f"fenced host {f.host} runs kcnd again")
            except HostUnreachable:
                pass  # a fenced host that does not answer is what fencing wants
            finally:
                node.close()
    return alive


def observe(cell: Cell, placement: Placement) -> dict:
    cn = _probe(live.active_node(cell, placement, connect_attempts=1, connect_timeout=5))
    pns = {pn.name: _probe(KaiaNodeHook(pn, connect_attempts=1, connect_timeout=5)) for pn in cell.pns}
    views = {"cn": cn, "pns": pns, "fenced_alive": fenced_alive(cell, placement)}
    if cell.scheme == "cloud" and placement.active.instance_id:
        views["ec2"] = ec2_view(cell, placement.active.instance_id)
    return views


# ----- judgement (pure: unit-tested apart from the hosts) -------------------------------------------------------------
def judge(cell: Cell, placement: Placement, views: dict) -> dict:
    """``bad``: reasons this round counts towards dead; ``degraded``: worth showing, not counted; ``immediate``:
    alerts that need no rounds; ``evidence``: every view in one line each."""
    cn, pns, cfg = views["cn"], views["pns"], cell.watchdog
    where = placement.active.instance_id or placement.active.host
    bad, degraded, immediate, evidence = [], [], [], []
    pn_blocks = [p["block"] for p in pns.values() if p.get("running")]
    pn_cn_peers = {name: int(p["peers"].get("cn", 0)) for name, p in pns.items() if p.get("running")}
    if not cn["answers"]:
        bad.append(f"{placement.validator} on {where} does not answer over SSH ({cn['detail']})")
        others = len(placement.standbys) if cell.scheme == "bare-metal" else 0  # standbys are the PNs' CN peers too
        if any(n > others for n in pn_cn_peers.values()):
            evidence.append("its PNs still have CN peers: kcnd may still run there (the failover fences it first)")
    elif cn["running"] is False:
        bad.append(f"kcnd is not running on {where} ({cn['detail']})")
    elif cn["running"] is None:
        bad.append(f"the node console on {where} does not answer ({cn['detail']})")
    else:
        peers = cn["peers"]
        evidence.append(f"CN {where}: block {cn['block']}, peers {peers}, node {cn['node_id'][:16]}…")
        if int(peers.get("total", 0)) == 0:
            bad.append(f"{placement.validator} has no peers")
        if pn_blocks and max(pn_blocks) - cn["block"] > cfg.max_head_lag:
            bad.append(f"its head {cn['block']} trails its PNs' {max(pn_blocks)} "
                       f"by more than {cfg.max_head_lag} blocks")
        expected = cell.validator.node_id
        if expected and cn["node_id"] != expected:  # the validator does not run there: a bad round too
            bad.append(f"{placement.validator} on {where} runs another node ID ({cn['node_id'][:16]}…)")
            immediate.append(("identity", f"{placement.validator} on {where} runs node ID {cn['node_id'][:16]}…, "
                              f"not its validator's {expected[:16]}… (a regenerated or wrong nodekey: it signs "
                              "nothing)"))
        if int(peers.get("pn", 0)) > 0 and int(peers.get("cn", 0)) == 0:
            immediate.append(("isolated", f"{placement.validator} on {where} has PN peers but no CN peers: the other "
                              "validators do not accept it (its node ID or IP is not the registered one)"))
    for name, p in pns.items():
        if p.get("running"):
            evidence.append(f"PN {name}: block {p['block']}, {pn_cn_peers[name]} CN peers")
        else:
            degraded.append(f"PN {name} gives no view ({p.get('detail')})")
    if "ec2" in views:
        ec2 = views["ec2"]
        state = ec2["state"] or ec2.get("detail")
        evidence.append(f"EC2 {ec2['instance_id']}: {state} {ec2.get('checks') or ''}".rstrip())
        if ec2["state"] and ec2["state"] != "running":
            bad.append(f"EC2 says instance {ec2['instance_id']} is {ec2['state']}")
        elif any(v not in ("ok", "initializing") for v in (ec2.get("checks") or {}).values()):
            degraded.append(f"EC2 status checks of {ec2['instance_id']}: {ec2['checks']}")
    immediate += [("fenced", text) for text in views["fenced_alive"]]
    return {"bad": bad, "degraded": degraded, "immediate": immediate, "evidence": evidence}


def _since(iso: str | None) -> float:
    return (_now() - datetime.fromisoformat(iso)).total_seconds() if iso else float("inf")


# ----- a round ---------------------------------------------------------------------------------------------------
def run_share(cell: Cell, rounds_per_run: int | None = None) -> int:
    """A cell's rounds in one run: the run's ``rounds_per_run`` param, else as many as fit in RUN_SECONDS."""
    return rounds_per_run or max(1, int(RUN_SECONDS // cell.watchdog.round_seconds))


def poke_seconds(cells: list[Cell]) -> float:
    """The one watch sensor's poke interval: the smallest round period; longer-period cells wait until due."""
    return min((cell.watchdog.round_seconds for cell in cells), default=10)


def due(cell: Cell, record: dict) -> bool:
    """The cell's last round (its record's) is at least its ``round_seconds`` ago, less a small tolerance (a tenth,
    at most 1 s: timers and clocks of different workers), so a poke a moment early still probes it."""
    period = cell.watchdog.round_seconds
    return _since(record.get("last_round")) >= period - min(1.0, period / 10)


def _failed_probe(exc: BaseException) -> dict:
    """What ``judge`` finds when observing raised: a bad round, as a probe that gets no answer is."""
    return {"bad": [f"the round's probe failed ({type(exc).__name__}: {str(exc)[:200]})"], "degraded": [],
            "immediate": [], "evidence": []}


def watch_round(cell: Cell | str, run_id: str, st=None, rounds_per_run: int | None = None) -> dict:
    """One round for one cell: observe, judge, count, alert at once what needs no rounds. Returns the verdict
    (JSON-safe, no key material: node IDs are public), also kept in the cell's record (``last_verdict``).
    Observing that raises (not a probe without an answer: ``_probe`` says that) is logged and counted as a bad
    round."""
    cell = load_inventory().cell(cell) if isinstance(cell, str) else cell
    st = st or live.store()
    placement = live.current(cell, st)
    try:
        found = judge(cell, placement, observe(cell, placement))
    except Exception as exc:
        log.error("%s: the round's probe failed, counted as a bad round (%s: %s)", cell.name,
                  type(exc).__name__, str(exc)[:200], exc_info=True)
        found = _failed_probe(exc)
    record = load_record(cell, st)  # after the probes: what the approval DAG recorded meanwhile is kept
    now = _now().isoformat(timespec="seconds")
    active = placement.active.instance_id or placement.active.host
    if record.get("active") not in (None, active):  # a failover moved the validator: the new node starts afresh
        record.pop("bad_rounds", None)
        record.pop("bad_since", None)
    if found["bad"]:  # a retried poke is one more look at the node: it counts as a round like any other
        record["bad_rounds"] = record.get("bad_rounds", 0) + 1
        record.setdefault("bad_since", now)
    else:
        record.pop("bad_rounds", None)
        record.pop("bad_since", None)
    record["run_rounds"] = record.get("run_rounds", 0) + 1 if record.get("run_id") == run_id else 1
    record |= {"run_id": run_id, "last_round": _now().isoformat(timespec="milliseconds"),
               "validator": placement.validator, "active": active}
    rounds = record.get("bad_rounds", 0)
    verdict = ("dead" if rounds >= cell.watchdog.dead_after_rounds
               else "degraded" if rounds or found["degraded"] else "healthy")
    alerts = record.setdefault("alerts", {})
    raised = []
    for kind, what in found["immediate"]:
        if _since(alerts.get(kind)) >= cell.watchdog.repeat_alert_minutes * 60:
            try:
                notify(cell, f"[kaia-ha] {cell.name}: {what[:60]}",
                       what + "\n\nEvidence:\n" + "\n".join(found["evidence"]))
            except Exception as exc:  # the round still counts; the alert is tried again next round
                log.error("%s: the alert %r could not be sent (%s: %s)", cell.name, kind, type(exc).__name__,
                          str(exc)[:200])
                continue
            alerts[kind] = now
            raised.append(kind)
    for kind in [k for k in alerts if k not in {k for k, _ in found["immediate"]}]:
        del alerts[kind]  # cleared: the next occurrence alerts at once
    result = {"cell": cell.name, "validator": placement.validator, "active": record["active"], "verdict": verdict,
              "bad_rounds": rounds, "dead_after_rounds": cell.watchdog.dead_after_rounds,
              "run_rounds": record["run_rounds"], "run_share": run_share(cell, rounds_per_run),
              "bad_since": record.get("bad_since"), "reasons": found["bad"], "degraded": found["degraded"],
              "immediate": [what for _, what in found["immediate"]], "alerted": raised, "evidence": found["evidence"]}
    record["last_verdict"] = result
    save_record(cell, record, st)
    log.info("%s: %s (%d/%d bad rounds) %s", cell.name, verdict, rounds, cell.watchdog.dead_after_rounds,
             "; ".join(found["bad"] + found["degraded"]) or "all views agree")
    return result


def round_done(verdict: dict, rounds_per_run: int | None = None) -> bool:
    """A cell's watch in this run ends on a dead verdict (act now) or after its share of rounds (the next run goes
    on); ``rounds_per_run`` defaults to the verdict's own share."""
    share = rounds_per_run or verdict.get("run_share") or 1
    return verdict["verdict"] == "dead" or verdict["run_rounds"] >= share


def turned_dead(verdict: dict) -> bool:
    """Dead at this very round (its count just reached ``dead_after_rounds``): its approval is to be asked now."""
    return verdict["verdict"] == "dead" and verdict["bad_rounds"] == verdict["dead_after_rounds"]


def cells_done(verdicts: dict[str, dict], cells: list[str], every_run: set[str] | None = None) -> bool:
    """The run's one watch ends when a cell has just turned dead (act now), or once every cell has had its share of
    rounds (a dead cell's share is over). A cell that stays dead (its approval open, its failover running) does not
    end it at once: the other cells keep their rounds, and its ``decide`` comes at the run's end. A cell whose
    period is longer than a run (not in ``every_run``, default: all) is not waited for when it has no round in this
    run: the others would go unwatched until it is due."""
    every_run = set(cells) if every_run is None else every_run
    return (any(turned_dead(v) for v in verdicts.values())
            or all(round_done(verdicts[name]) if name in verdicts else name not in every_run for name in cells))


def every_run(cells: list[Cell]) -> set[str]:
    """The cells due at least once in every run (``round_seconds`` within the run's RUN_SECONDS)."""
    return {cell.name for cell in cells if cell.watchdog.round_seconds <= RUN_SECONDS}


def _round_failed(name: str, run_id: str, exc: BaseException, rounds_per_run: int | None) -> dict:
    """A cell whose round could not even be counted (its record, its placement or the cell itself unreadable):
    said in its verdict, its share of this run over (a next run tries again), nothing counted."""
    why = f"the round failed and was not counted ({type(exc).__name__}: {str(exc)[:200]})"
    return {"cell": name, "validator": None, "active": None, "verdict": "degraded", "bad_rounds": 0,
            "dead_after_rounds": None, "run_rounds": rounds_per_run or 1, "run_share": rounds_per_run or 1,
            "bad_since": None, "reasons": [], "degraded": [why], "immediate": [], "alerted": [], "evidence": [],
            "failed": why}


def _cell_round(cell: Cell, run_id: str, st, rounds_per_run: int | None) -> tuple[str, dict | None]:
    """This poke's part for one cell: ("judged", verdict) when due and its share is not done, else ("not due" or
    "done", this run's last verdict, if any)."""
    record = load_record(cell, st)
    last = record.get("last_verdict") if record.get("run_id") == run_id else None
    if last and round_done(last, run_share(cell, rounds_per_run)):
        return "done", last
    if not due(cell, record):
        return "not due", last
    return "judged", watch_round(cell, run_id, st, rounds_per_run)


def watch_cells(run_id: str, cells: list[str] | None = None, rounds_per_run: int | None = None) -> dict[str, dict]:
    """One round over every cell (``cells``: their names; default the inventory's) at once, in threads: the verdict
    of each cell judged now, or this run's last verdict of a cell not due (absent if it has none yet). A cell whose
    round raises is logged and counted as its bad round; the others' verdicts stand. Raises only when no cell's round
    could be done (the inventory or the state store unreadable: the task's failure alert says so)."""
    inventory = load_inventory()
    names = cells or [cell.name for cell in inventory.cells]
    st = live.store()
    started = time.monotonic()
    look_up_connections([inventory.cell(name) for name in names])

    def one(name: str) -> tuple[str, dict | None]:
        try:
            return _cell_round(inventory.cell(name), run_id, st, rounds_per_run)
        except Exception as exc:
            log.error("%s: the round failed (%s: %s)", name, type(exc).__name__, str(exc)[:200], exc_info=True)
            return "failed", _round_failed(name, run_id, exc, rounds_per_run)

    with ThreadPoolExecutor(max_workers=threads_for(len(names)), thread_name_prefix="watch") as pool:
        outcomes = dict(zip(names, pool.map(one, names)))
    failed = [name for name, (how, _) in outcomes.items() if how == "failed"]
    if names and len(failed) == len(names):
        raise RuntimeError(f"no cell's round could be done ({', '.join(failed)}): "
                           f"{outcomes[failed[0]][1]['failed']}")
    count = {how: sum(h == how for h, _ in outcomes.values()) for how in ("judged", "not due", "done", "failed")}
    log.info("round over %d cells in %.1f s: %s", len(names), time.monotonic() - started,
             ", ".join(f"{n} {how}" for how, n in count.items() if n))
    return {name: verdict for name, (_, verdict) in outcomes.items() if verdict is not None}


# ----- what to do about a dead CN ------------------------------------------------------------------------------------
def decide(verdict: dict, ti) -> dict | None:
    """The approval to open for a dead CN, or None: not dead, a failover of it already runs, or an approval is open.

    One open approval per validator: its run id is recorded in the cell's watch record and its state asked of
    Airflow before another is opened. While the CN stays dead after a rejection or a timeout, a new approval (with
    its alert) is opened every ``repeat_alert_minutes``; while one is open, only the alert repeats.
    """
    if verdict["verdict"] != "dead":
        return None
    cell = load_inventory().cell(verdict["cell"])
    st = live.store()
    record = load_record(cell, st)
    target = failover_dag(cell)
    ours = record.get("failover") or {}
    if ours.get("run_id") and _run_state(ti, ours["dag_id"], ours["run_id"]) in OPEN:
        log.info("%s: quiet, its failover %s runs", verdict["validator"], ours["run_id"])
        return None
    # A run triggered by hand: its conf cannot be read without its id, and the failover DAG takes one run at a time
    # (a second cell's failover would wait behind it anyway): quiet until it ends.
    if ti.get_dr_count(dag_id=target, states=list(OPEN)):
        log.info("%s: quiet, a run of %s is queued or running", verdict["validator"], target)
        return None
    repeat = cell.watchdog.repeat_alert_minutes * 60
    approval = record.get("approval") or {}
    if approval.get("run_id"):
        state = _run_state(ti, APPROVAL_DAG_ID, approval["run_id"])
        same = approval.get("since") == verdict["bad_since"]  # this incident's, not an earlier one's
        if state is None and same:  # recorded, then the trigger failed: open it again under the same run id
            return _request(cell, verdict, approval["run_id"])
        if state in OPEN:
            if _since(record.get("reminded_at") or approval.get("opened_at")) >= repeat:
                notify(cell, f"[kaia-ha] STILL DEAD: {verdict['validator']} awaits your approval",
                       f"Approval {approval['run_id']} is still open.\n\n" + text(verdict))
                record["reminded_at"] = _now().isoformat(timespec="seconds")
                save_record(cell, record, st)
            return None
        if same and _since(approval.get("opened_at")) < repeat:
            return None  # rejected or timed out: the next approval (and its alert) comes with the repeat
    stamp = (verdict["bad_since"] or "").replace("-", "").replace(":", "").replace("+0000", "Z")
    n = approval.get("n", 0) + 1 if approval.get("since") == verdict["bad_since"] else 1
    run_id = f"watchdog__{verdict['validator']}__{stamp}__{n}"
    record["approval"] = {"run_id": run_id, "opened_at": _now().isoformat(timespec="seconds"),
                          "since": verdict["bad_since"], "n": n}
    record.pop("reminded_at", None)
    save_record(cell, record, st)
    return _request(cell, verdict, run_id)


def _run_state(ti, dag_id: str, run_id: str) -> str | None:
    try:
        state = ti.get_dagrun_state(dag_id=dag_id, run_id=run_id)
        return str(getattr(state, "value", state))
    except Exception as exc:  # no such run (the API answers 404)
        log.info("%s %s: no state (%s)", dag_id, run_id, type(exc).__name__)
        return None


def _request(cell: Cell, verdict: dict, run_id: str) -> dict:
    conf = {"cell": cell.name, "validator": verdict["validator"], "failover_dag_id": failover_dag(cell),
            "evidence": text(verdict), "auto_failover": cell.watchdog.auto_failover,
            "failover_conf": {"failed_cn": verdict["validator"]}}  # host_known_dead never: the failover asks itself
    return {"run_id": run_id, "conf": conf}


def text(verdict: dict) -> str:
    lines = [f"{verdict['validator']} ({verdict['cell']}, on {verdict['active']}): {verdict['verdict'].upper()} after "
             f"{verdict['bad_rounds']} consecutive bad rounds (since {verdict['bad_since']})"]
    lines += [f"- {r}" for r in verdict["reasons"] + verdict["degraded"]]
    lines += [f"- {e}" for e in verdict["evidence"]]
    return "\n".join(lines)


def record_failover(cell_name: str, dag_id: str, run_id: str) -> dict:
    """Remember the failover the approval started: the watchdog stays quiet while it runs."""
    cell = load_inventory().cell(cell_name)
    st = live.store()
    record = load_record(cell, st)
    record["failover"] = {"dag_id": dag_id, "run_id": run_id, "at": _now().isoformat(timespec="seconds")}
    save_record(cell, record, st)
    return record["failover"]


def alert_dead(conf: dict) -> None:
    cell = load_inventory().cell(conf["cell"])
    how = "starts now (auto_failover)" if conf.get("auto_failover") else "waits for your approval (Required actions)"
    notify(cell, f"[kaia-ha] DEAD: {conf['validator']}: fail over now?",
           f"{conf['evidence']}\n\nThe failover {conf['failover_dag_id']} with {conf['failover_conf']} {how}.")
