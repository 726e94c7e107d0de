"""The incident as the operator meets it: the watchdog judges a CN dead and asks; the answer is given through the
REST API, as the UI's *Required actions* gives it. Used by ``python -m drill --watchdog`` and the engine tests."""

from __future__ import annotations

import time
from datetime import datetime

from drill.engine import AirflowEngine, EngineError

WATCHDOG, APPROVAL = "kaia_cn_watchdog", "kaia_cn_failover_approval"


def asked(engine: AirflowEngine, run_id: str, timeout: float = 180, settle: float = 3) -> dict:
    """Wait until the approval run's ``approve`` task waits for input; its question as the UI shows it.

    The task must have waited ``settle`` seconds in the same try: an answer given within a moment of the task
    parking can meet Airflow 3.3's race (the parked try's exit reaches the scheduler after the answer re-queued the
    task; the scheduler then retries it and the answer is lost with the old try). An operator answers seconds later.
    """
    deadline, parked = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        approve = {t["task_id"]: t for t in engine.task_instances(APPROVAL, run_id)}.get("approve") or {}
        if approve.get("state") == "awaiting_input":
            if parked and parked[0] == approve["try_number"] and time.monotonic() - parked[1] >= settle:
                return engine.hitl(APPROVAL, run_id, "approve")
            if not parked or parked[0] != approve["try_number"]:
                parked = (approve["try_number"], time.monotonic())
        else:
            parked = None
            if engine.run(APPROVAL, run_id)["state"] in ("success", "failed"):
                raise EngineError(f"{APPROVAL} {run_id} ended without asking: approve is {approve.get('state')}")
        time.sleep(0.5)
    raise EngineError(f"{APPROVAL} {run_id}: approve not waiting for input after {timeout:.0f}s")


def watch_until_dead(engine: AirflowEngine, validator: str, timeout: float = 300) -> tuple[str, str]:
    """Run the watchdog back to back, as its every-minute schedule does, until it opens an approval for the
    validator; (the watchdog run that opened it, the approval run), as soon as the approval run exists.
    The engine triggers runs instead of scheduling them (``USE_JOB_SCHEDULE`` is off: no unasked runs)."""
    deadline = time.monotonic() + timeout
    watch = None
    while time.monotonic() < deadline:
        if watch is None or engine.run(WATCHDOG, watch)["state"] in ("success", "failed"):
            watch = engine.trigger(WATCHDOG)
        opened = [r for r in engine.runs(APPROVAL) if r.startswith(f"watchdog__{validator}__")]
        if opened:
            return watch, max(opened)
        time.sleep(1)
    raise EngineError(f"no approval opened for {validator} within {timeout:.0f}s")


def epoch(iso: str) -> float:
    """A REST API timestamp as seconds since the epoch (to compare with ``time.time()``)."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def synced_at(engine: AirflowEngine, dag_id: str, run_id: str) -> float | None:
    """When the failover's sync check passed (epoch seconds), from its task instance; None if it did not."""
    for ti in engine.task_instances(dag_id, run_id):
        if ti["task_id"].endswith("in_sync") and ti["state"] == "success" and ti["end_date"]:
            return epoch(ti["end_date"])
    return None
