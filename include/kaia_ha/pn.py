"""The PNs' kpnd, for the maintenance and the cloud failover alike: its stop and start, the PNs' health, the pool.

A PN's kpnd is stopped for a snapshot without ever being killed; what happens when it will not stop in time:

A flush longer than the init script's STOP_TIMEOUT (10 s) is ordinary on a busy PN, and the script then kills
kpnd. So kpnd gets a SIGTERM alone and up to the inventory's ``maintenance.pn_stop_limit_seconds`` to exit on
its own (``KaiaNodeHook.stop_on_its_own``). A PN that does not is final for that try: no retry (waiting again
cannot make a flush faster), it is started again as soon as its flush ends and its health is proven, and the
next healthy PN of the cell is tried. Never two PNs of a cell down: before each stop every other PN must serve.

What this try sent a SIGTERM to and did not prove running again is recorded under ``STOPPED_KEY``: the teardown starts
exactly those; what happened to each PN tried is under ``ATTEMPTS_KEY``, for the report. The failover keeps them in
XCom; the maintenance in the state store (``KeptRecord``), where the next try of the step still finds them.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

from kaia_ha import live
from kaia_ha.alerts import notify
from kaia_ha.model import compat
from kaia_ha.model import tags as T
from kaia_ha.model.health import ProbeError
from kaia_ha.model.inventory import Cell, load_inventory
from kaia_ha.over_cells import ec2 as ec2_hook
from kaia_ha.over_cells import node_hook
from kaia_ha.report import step
from kaia_ha_airflow.hooks.kaia_node import NodeCommandError, shutdown_was_clean, shutting_down
from kaia_ha_airflow.iam import needs

log = logging.getLogger(__name__)
# One task that stops kpnd at a time, across DAGs (the slot is not held while the PN is down): the maintenance's stop
# (one PN in each cell at once) or a failover's. Inside it each stop checks that the cell's other PNs serve and that
# kpnd is running (stop_cleanly), and maintenance leaves the PNs alone while a cloud failover runs. So two PNs of a
# cell are never down together. Created by bootstrap and compose.
PN_DOWNTIME_POOL = "kaia_pn_downtime"
STOPPED_KEY = "kpnd_stopped"
ATTEMPTS_KEY = "pn_stops"
BLOCKS_PER_SECOND = 1  # Kaia makes about one block a second: an untagged snapshot's lag, from its age


class PNError(RuntimeError):
    pass


class _Record:
    """Where a stop records what it did when it runs outside a task (a script): kept in memory."""

    try_number = 1

    def __init__(self):
        self.xcom = {}

    def xcom_push(self, key, value):
        self.xcom[key] = value

    def xcom_pull(self, task_ids=None, key=None, default=None):
        return self.xcom.get(key, default)


class KeptRecord:
    """A maintenance run's PN stop record for one cell, kept in the live state's home: Airflow clears a try's XComs
    when the next try starts, and the retry, the teardown and the report must still know which PN this run stopped
    and did not start again. Used where a stop or start takes a task instance (``xcom_push``, ``xcom_pull``,
    ``try_number``); ``doc`` also holds when kpnd went down and came back. One cell's thread writes it."""

    def __init__(self, cell_name: str, run_id: str, st=None):
        self.store = st or live.store()
        self.name = f"pn-stops/{cell_name}/{T.safe_name(run_id)}.json"
        self.doc: dict = self.store.get(self.name) or {}
        self.earlier = self.left_stopped()  # what earlier tries of this run stopped and did not start again
        # The stop takes a PN it finds down for an earlier try's stop only on a later try; here, only when an
        # earlier try left one down (the record says so): a PN someone else stopped is theirs, whatever the try.
        self.try_number = 2 if self.earlier else 1

    def xcom_push(self, key: str, value) -> None:
        self.note(**{key: value})

    def xcom_pull(self, task_ids=None, key: str = "", default=None):
        return self.doc.get(key, default)

    def note(self, **fields) -> None:
        self.doc.update(fields)
        self.store.put(self.name, self.doc)

    def left_stopped(self) -> list[str]:
        return list(self.doc.get(STOPPED_KEY) or [])


def pn_healthy(pn) -> tuple[bool, str]:
    return _health(node_hook(pn))[:2]


def _health(node, state: str | None = None):
    """(serves, why, its probe): kpnd active (``state``, when just read), answering, with peers."""
    try:
        if (state or node.service_state()) != "active":
            return False, f"{node.node.service} is not active", None
        probe = node.probe()
    except (NodeCommandError, ProbeError) as exc:
        return False, str(exc), None
    if probe.peer_total == 0:
        return False, "no peers", probe
    return True, f"block {probe.block}, {probe.peer_total} peers", probe


def first_unhealthy(pns) -> tuple[str, str] | None:
    """(name, why) of the first PN that does not serve, or None: before any PN goes down, the others must serve."""
    for pn in pns:
        ok, detail = pn_healthy(pn)
        if not ok:
            return pn.name, detail
    return None


def pn_is_back(pn) -> dict | None:
    """kpnd answers, has peers and its head rises: the PN serves its CN again."""
    node = node_hook(pn)
    first = node.probe()
    time.sleep(2)
    last = node.probe()
    if last.peer_total > 0 and last.block > first.block:
        return {"pn": pn.name, "block": last.block, "peers": last.peers}
    log.info("%s not back yet: block %s -> %s, peers %s", pn.name, first.block, last.block, last.peers)
    return None


def candidates(cell: Cell, first: str, allowed: list[str] | None = None) -> list[str]:
    """The PN chosen first, then the cell's other PNs in inventory order (only ``allowed`` ones, when given)."""
    rest = [p.name for p in cell.pns if p.name != first and (allowed is None or p.name in allowed)]
    return [first, *rest]


def fitting(cell: Cell, names: list[str], image_tags: dict[str, str]) -> list[str]:
    """Those of ``names`` whose chain data the CN image can open (DB flags, kpn not newer than kcn); a PN that does not
    answer is left out. Its chain data would only fail the replacement's start."""
    fit = []
    for name in names:
        node = node_hook(next(p for p in cell.pns if p.name == name))
        try:
            image = image_tags.get(T.DB_FLAGS, compat.db_flags("")), image_tags.get(T.KCN_VERSION, "v0.0.0")
            problems = compat.problems(*image, compat.db_flags(node.conf().get("ADDITIONAL", "")), node.version(), name)
        except NodeCommandError as exc:
            problems = [str(exc)]
        if problems:
            log.warning("%s is not a fallback for a fresh snapshot: %s", name, "; ".join(problems))
        else:
            fit.append(name)
    return fit


@needs("ec2:DescribeSnapshots")
def incremental(cell: Cell, names: list[str]) -> list[str]:
    """Those of ``names`` whose data volume has a completed snapshot already: a fresh one is then incremental
    (minutes). A volume's first snapshot copies all of it (4,000 GiB: many hours), longer than any failover can
    wait, so such a PN is no fallback; the pre-taken snapshot is."""
    ec2 = ec2_hook(cell)
    keep = []
    for name in names:
        volume = next(p for p in cell.pns if p.name == name).data_volume_id
        found = ec2.conn.describe_snapshots(OwnerIds=["self"], Filters=[
            {"Name": "volume-id", "Values": [volume]}, {"Name": "status", "Values": ["completed"]}])["Snapshots"]
        if found:
            keep.append(name)
        else:
            log.warning("%s is no fallback for a fresh snapshot: its volume %s has no snapshot yet", name, volume)
    return keep


def restart_and_prove(cell: Cell, pn, limit: float) -> tuple[bool, str]:
    """Start kpnd again once its flush has ended (never a kill) and prove it serves: peers, head rising."""
    node = node_hook(pn)
    try:
        if not node.wait_exited(limit):
            return False, f"still flushing {limit:.0f} s later: left to finish on its own; the teardown starts it"
        node.start_service()
        deadline = time.time() + max(limit, 30)
        while time.time() < deadline:
            try:
                back = pn_is_back(pn)
            except (NodeCommandError, ProbeError):  # still opening its database
                back = None
            if back:
                return True, f"started again and serving (block {back['block']}, peers {back['peers']})"
            time.sleep(1)
    except NodeCommandError as exc:
        return False, f"not started again ({exc}); the teardown starts it"
    return False, "started again but not proven serving yet; the teardown checks it"


def stop_for_snapshot(cell: Cell, names: list[str], ti, tags: dict[str, str]) -> dict:
    """Stop the first PN of ``names`` that stops cleanly on its own; skip (and restart) those that do not.

    Returns ``{"pn": None, "attempts": [...]}`` when none did. ``tags`` are the snapshot's, made this PN's here."""
    ti = ti or _Record()
    limit, budget = cell.maintenance.pn_stop_limit_seconds, cell.maintenance.pn_stop_budget_seconds
    began_search = time.time()
    attempts: list[dict] = []
    stopped: list[str] = []

    def record() -> None:
        ti.xcom_push(key=STOPPED_KEY, value=list(stopped))
        ti.xcom_push(key=ATTEMPTS_KEY, value=list(attempts))

    for name in names:
        pn = next(p for p in cell.pns if p.name == name)
        if attempts and time.time() - began_search + limit > budget:  # the PNs tried so far took the time there was
            attempts.append({"pn": name, "outcome": "not stopped", "why": f"not tried: the search for a PN that stops "
                             f"cleanly already took {time.time() - began_search:.0f} s of its {budget:.0f} s"})
            continue
        sick = first_unhealthy(p for p in cell.pns if p.name != name)
        if sick:
            attempts.append({"pn": name, "outcome": "not stopped", "why": f"{sick[0]} is not healthy ({sick[1]}): "
                             f"not taking {name} down too, {cell.name} would have no PN serving"})
            continue
        node = node_hook(pn)
        state = node.service_state()
        if ti.try_number > 1 and (state != "active" or shutting_down(node.log_tail(50))):
            # This task's earlier try sent the SIGTERM (its answer lost, or the try died): that stop's outcome stands.
            stopped.append(name)
            record()
            if node.wait_exited(limit) and node.service_state() != "active" and shutdown_was_clean(node.log_tail()):
                attempts.append({"pn": name, "outcome": "stopped cleanly", "why": "by an earlier try of this task"})
                record()
                return _stopped(pn, tags, attempts, time.time(), 0.0, None)
            state = "was not stopped cleanly by an earlier try of this task"
        elif state != "active":
            attempts.append({"pn": name, "outcome": "not stopped", "why": f"kpnd on {name} is {state} before this run "
                             "stopped it: another run or a person did, and starting it again is theirs to do (this run "
                             "will not)"})
            continue
        else:
            ok, detail, probe = _health(node, state)
            if not ok:
                attempts.append({"pn": name, "outcome": "not stopped", "why": f"{name} is not healthy ({detail})"})
                continue
            block = probe.block
            stopped.append(name)
            record()  # before the SIGTERM: should this try die now, the teardown still starts it
            began = time.time()
            out = node.stop_on_its_own(limit)
            if out["clean"]:
                log.info("kpnd on %s stopped cleanly on its own in %.1f s", name, out["stop_seconds"])
                attempts.append({"pn": name, "outcome": "stopped cleanly", "seconds": out["stop_seconds"]})
                record()
                return _stopped(pn, tags, attempts, began, out["stop_seconds"], block)
            state = (f"did not stop on its own within {limit:.0f} s (never killed)" if not out["exited"]
                     else "exited without a clean stop")
            log.warning("kpnd on %s %s. Last log lines:\n%s", name, state, out["log_tail"])
        # Final for this try: started again at once, its health proven, and the next PN.
        back, detail = restart_and_prove(cell, pn, limit)
        if back:
            stopped.remove(name)
        attempts.append({"pn": name, "outcome": "skipped", "why": f"{state}; {detail}"})
        record()
        notify(cell, f"[kaia-ha] PN {name} of {cell.name} did not stop cleanly: skipped for this snapshot",
               f"kpnd on {name} {state}; {detail}. The next healthy PN of {cell.name} is tried instead. Look at its "
               "log and disk (a flush that slow may be a failing volume).")
    record()
    return {"pn": None, "attempts": attempts}


def _stopped(pn, tags: dict, attempts: list, began: float, seconds: float, block: int | None) -> dict:
    extra = {T.NODE: pn.name, "Name": f"{pn.name}-chaindata"}
    if block is not None:
        extra[T.HEAD_BLOCK] = str(block)
    return {"pn": pn.name, "volume_id": pn.data_volume_id, "stop_began": began, "stopped_at": time.time(),
            "stop_seconds": seconds, "tags": tags | extra, "attempts": attempts}


def why_none(result: dict) -> str:
    return "; ".join(f"{a['pn']}: {a['why']}" for a in result["attempts"]) or "the cell has no PN"


def start_stopped(cell: Cell, ti, stop_task: str | None, pn_name: str | None = None) -> dict:
    """The teardown: start every PN the stop task recorded as stopped by this run (outside a task: ``pn_name``).
    A PN still flushing is waited for, never killed."""
    in_task = ti is not None and stop_task
    names = ti.xcom_pull(task_ids=stop_task, key=STOPPED_KEY, default=None) if in_task else [pn_name]
    names = [n for n in names or [] if n]
    for name in names:
        _start(cell, name)
    if not names:
        log.info("no PN was left stopped by this run: nothing to start")
    return {"pns": names, "started": bool(names), "started_at": time.time()}


def _start(cell: Cell, name: str) -> None:
    """Start kpnd on a PN this run stopped, once its flush has ended (never a kill); a running kpnd is left as is."""
    node = node_hook(next(p for p in cell.pns if p.name == name))
    if not node.wait_exited(cell.maintenance.pn_stop_limit_seconds):
        raise NodeCommandError(f"{name}: kpnd is still flushing after its SIGTERM; not killed, not started yet")
    node.start_service()
    state = node.service_state()
    if state != "active":
        raise NodeCommandError(f"{name}: kpnd is {state} after `systemctl start`; the PN is DOWN, see its log now")
    log.info("kpnd on %s started", name)


def start_recorded(cell: Cell, record: KeptRecord) -> list[str]:
    """Start every PN ``record`` says this run stopped and did not start again (this try's, and those an earlier try
    left: a stop rewrites the record with its own), each struck off the record once running. What it started is
    kept (``kpnd_started``, ``started_at``): the report's down time and the check that each serves again read it.
    Returns what it started."""
    names = sorted(set(record.left_stopped()) | set(record.earlier))
    for name in names:
        _start(cell, name)
        record.note(**{STOPPED_KEY: [n for n in record.left_stopped() if n != name],
                       "kpnd_started": sorted({*record.doc.get("kpnd_started", []), name}), "started_at": time.time()})
    return names


def pretaken_fallback(cell: Cell, now: datetime) -> dict | None:
    """The newest completed pre-taken snapshot of the cell whatever its age, with its age and the blocks the CN
    will have to catch up (from its head-block tag and a PN's head, else from its age)."""
    ec2 = ec2_hook(cell)
    usable = [s for s in ec2.find_snapshots({T.CELL: cell.name, T.KIND: T.KIND_PN_CHAINDATA, T.CLEAN_STOP: "true"})
              if s["State"] == "completed"]
    if not usable:
        return None
    snap = usable[0]
    age = (now.astimezone(timezone.utc) - snap["StartTime"]).total_seconds()
    blocks, how = round(age * BLOCKS_PER_SECOND), "estimated from its age (about one block a second)"
    tagged = T.tag_dict(snap).get(T.HEAD_BLOCK)
    for pn in cell.pns:
        if tagged and pn_healthy(pn)[0]:
            blocks = node_hook(pn).probe().block - int(tagged)
            how = f"{pn.name}'s head minus the snapshot's block {tagged}"
            break
    return {"snapshot_id": snap["SnapshotId"], "age_hours": round(age / 3600, 2), "blocks_behind": blocks,
            "blocks_how": how}


# ----- the tasks' work: stop a PN for a snapshot, start it again, prove it serves ------------------------------
def _cell(name: str) -> Cell:
    return load_inventory().cell(name)


def stop_cleanly(cell: Cell, pn_name: str, ti=None, tags: dict | None = None) -> dict:
    """Stop kpnd on ``pn_name`` (else on the cell's next healthy PN) and prove it stopped cleanly on its own (process
    gone, clean-stop log lines), never killed: ``stop_for_snapshot``. A PN that will not stop in time is skipped with
    an alert.

    Inside the ``kaia_pn_downtime`` pool slot that serialises every kpnd stop across DAGs: every other PN of the
    cell serves before a PN goes down, and on a first try a kpnd already down is left to whoever stopped it."""
    result = stop_for_snapshot(cell, candidates(cell, pn_name), ti, tags or {})
    if result["pn"] is None:
        raise PNError(f"no PN of {cell.name} stopped cleanly, no snapshot taken: {why_none(result)}")
    return result


@step
def stop_pn(cell_name: str, pn_name: str, ti=None, tags: dict | None = None) -> dict:
    """``stop_cleanly`` as one task's step (the failover's, a script's)."""
    return stop_cleanly(_cell(cell_name), pn_name, ti, tags)


@step
def start_pn(cell_name: str, pn_name: str | None = None, ti=None, stop_task: str | None = None) -> dict:
    """Start kpnd again on every PN ``stop_task`` stopped (the teardown: it runs whatever failed before it); a kpnd
    that was already down when this run came to stop it is left to whoever stopped it. Outside a task: ``pn_name``."""
    return start_stopped(_cell(cell_name), ti, stop_task, pn_name)


def kpnd_left_stopped(states: dict[str, str], stop_task: str, start_task: str) -> bool:
    """This run stopped kpnd (or tried to: a failed stop may have stopped it) and did not start it again.
    The teardown normally makes this impossible; when it fails for good the PN is down and must lead the report."""
    return (states.get(stop_task) not in (None, "skipped", "upstream_failed", "removed")
            and states.get(start_task) != "success")


def kpnd_urgent(pn_name: str, start_task: str) -> str:
    return (f"URGENT: kpnd on PN {pn_name} may still be stopped (this run stopped it and {start_task} did not "
            f"succeed): check `systemctl is-active kpnd` on {pn_name} and start it, or clear {start_task}")


def pns_back(cell: Cell, names: list[str]) -> dict | None:
    """Every PN of ``names`` (started again) answers, has peers and its head rises: it serves its CN again. One
    still opening its database (no answer yet) is not back yet."""
    backs = []
    for name in names:
        try:
            backs.append(pn_is_back(next(p for p in cell.pns if p.name == name)))
        except (NodeCommandError, ProbeError) as exc:
            log.info("%s not back yet: %s", name, exc)
            backs.append(None)
    return None if None in backs else {"pns": backs}
