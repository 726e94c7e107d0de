"""Time to detect a dead CN (``kaia_cn_watchdog``), and false alarms on a healthy cell with transient faults.

    .venv/bin/python bench/watchdog.py [--runs 1] [--ways kill,stop-instance,cut-ssh]
    .venv/bin/python bench/watchdog.py --soak MINUTES
    .venv/bin/python bench/watchdog.py --cells N [--rounds-per-run R] [--runs 1]
        [--try parallelism=P|round_seconds=S|round_seconds=auto]

MTTD: per run a fresh cell (instant profile, the inventory's default watchdog settings: 3 bad rounds, 10 s apart),
the watchdog run every minute as its schedule says (``dag.test()``, one run at a time: what the scheduler does with
``max_active_runs=1``), ``python -m simcell break cn-aws-1 --how WAY`` at a random moment of the minute, then the
approval run it opens driven like the scheduler would; MTTD = the break to the approval task waiting for input
(*Required actions*; the answer is Reject); detected = the break to the end of the watch task that judged it dead.
The inventory keeps only the cloud cell: ``dag.test()`` runs one DAG run at a time, so another cell's rounds would
hold the approval run back until the watchdog run ends, which a scheduler does not.

Soak: one cell, the watchdog every minute for MINUTES, and every ~20 s one transient fault at random: a dropped SSH
session to an active CN or a PN, a probe whose answer is lost (``drop-after`` on the console command: a slow
probe that never returns), or a PN's kpnd stopped for 15 s and started again (what the maintenance pre-snapshot
does to a PN). A false alarm = an approval opened or an immediate alert sent.

Cells (issue 14: "one watch round over 20 core cells fits within its period and holds no worker slot between
rounds"): ``simcell up --cloud-cells N`` (instant profile, healthy, the inventory cut to the N cloud cells), a real
Airflow (``drill.engine.AirflowEngine``: ``airflow standalone``, LocalExecutor, SQLite, **parallelism 4** on the
2-core machine), ``kaia_cn_watchdog`` triggered through REST (``use_job_schedule`` is off there) --runs times, one
after another. The one ``watch`` task is a reschedule-mode sensor poking every ``watchdog.round_seconds``, each poke
one round over all the cells at once (threads): a round = one poke of it. The run's task instances are listed through
REST every 0.5 s: each poke sets the TI's start_date (its process started) and, rescheduled, its end_date, so the
samples give every poke's start and end; ``task_reschedule`` gives when the next poke is due (its
``reschedule_date``; the run's start for the first poke). Per round: span = the poke's duration (start to end), its
lag = start - due. Every cell judged in every round: the sensor's XCom (each cell's latest verdict) has all N cells,
each with ``run_rounds`` = the number of pokes (a cell is judged at most once a poke). Slots held between rounds =
the watch TI seen ``running`` between two of its pokes (a reschedule sensor is ``up_for_reschedule`` there), once
the poke's reschedule was recorded: until then (seconds after the poke's end_date on a saturated machine) the TI
shows ``running`` and its process still holds its slot, counted apart as the poke's tail. Fits = every round's span
<= the period, every lag < the period and every cell judged in every round. ``--try``
measures again with another setting on the same cell (a fresh Airflow each): ``parallelism=P``,
``round_seconds=S``, or ``round_seconds=auto`` (the default's longest span or lag up to the next 5 s, if it did not
fit). Results: ``.artifacts/bench/watchdog_cells.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

from common import OUT, REPO, Bench, quiet, say

WATCH, APPROVAL = "kaia_cn_watchdog", "kaia_cn_failover_approval"
CN = "cn-aws-1"


def approval_runs() -> set[str]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        return {r.run_id for r in session.query(DagRun).filter_by(dag_id=APPROVAL)}


def end_queued() -> None:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        ours = [APPROVAL, "kaia_cn_failover_cloud", "kaia_cn_failover_standby"]
        session.query(DagRun).filter(DagRun.dag_id.in_(ours), DagRun.state.in_(["queued", "running"])).update(
            {DagRun.state: "failed"}, synchronize_session=False)


def only_cloud(cell) -> None:
    import yaml

    path = cell.env["KAIA_HA_INVENTORY"]
    inventory = yaml.safe_load(open(path))
    inventory["cells"] = [c for c in inventory["cells"] if c["name"] == "cc-cloud"]
    with open(path, "w") as f:
        yaml.safe_dump(inventory, f)


def watch_ended() -> float:
    """When the newest watchdog run's watch task ended (cc-cloud's dead verdict: the only cell here)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        ti = session.query(TaskInstance).filter_by(dag_id=WATCH, task_id="watch").order_by(
            TaskInstance.end_date.desc()).first()
        return ti.end_date.timestamp()


def mttd_once(way: str) -> dict:
    import cellkit

    with tempfile.TemporaryDirectory() as tmp:
        cell = cellkit.Cell(Path(tmp) / "cell")
        cell.up()
        try:
            only_cloud(cell)
            with cellkit.AirflowRunner(cell, Path(tmp) / "reports") as runner:
                end_queued()
                runner.run(WATCH, {"rounds_per_run": 1})  # the process's first task pays Airflow's start, not the watch
                known = approval_runs()
                broken: dict = {}

                def break_later():
                    time.sleep(60 - time.time() % 60 + random.uniform(0, 60))  # a random moment of a minute
                    broken["at"] = time.time()
                    cell.break_(CN, way)

                threading.Thread(target=break_later, daemon=True).start()
                deadline = time.time() + 600
                while time.time() < deadline:
                    time.sleep(60 - time.time() % 60)
                    runner.run(WATCH)
                    opened = approval_runs() - known
                    if opened and "at" in broken:
                        seen: dict = {}
                        operator = cellkit.answer_when_asked(APPROVAL, "approve", "Reject", seen)
                        runner.run_existing(APPROVAL, opened.pop())
                        operator.join(timeout=5)
                        return {"mttd_s": round(seen["asked_at"] - broken["at"], 1),
                                "detected_s": round(watch_ended() - broken["at"], 1)}
                    if opened:
                        raise AssertionError(f"an approval before the break: {opened}")
                raise AssertionError("no approval within 10 minutes of the break")
        finally:
            cell.down()


FAULTS = ("drop", "slow-probe", "pn-pre-snapshot")


def soak(minutes: float) -> dict:
    import cellkit

    with tempfile.TemporaryDirectory() as tmp:
        cell = cellkit.Cell(Path(tmp) / "cell")
        cell.up()
        try:
            with cellkit.AirflowRunner(cell, Path(tmp) / "reports") as runner:
                end_queued()
                runner.run(WATCH, {"rounds_per_run": 1})
                known, published = approval_runs(), len(cell.calls("Publish"))
                injected = {k: 0 for k in FAULTS}
                stop = threading.Event()

                def inject():
                    while not stop.wait(random.uniform(15, 25)):
                        kind = random.choice(FAULTS)
                        node = random.choice([CN, "cn-metal-a", "pn-aws-1", "pn-metal-1"])
                        if kind == "drop":
                            cell.fault(f"ssh:{node}", "--kind", "drop")
                        elif kind == "slow-probe":
                            cell.fault(f"ssh:{node}", "--kind", "drop-after", "--match", "attach")
                        else:
                            pn = random.choice(["pn-aws-1", "pn-aws-2", "pn-metal-1"])
                            cell.ssh(pn, "sudo systemctl stop kpnd && sleep 15 && sudo systemctl start kpnd")
                        injected[kind] += 1

                injector = threading.Thread(target=inject, daemon=True)
                injector.start()
                end_at, watch_runs = time.time() + minutes * 60, 0
                while time.time() < end_at:
                    time.sleep(max(0, min(60 - time.time() % 60, end_at - time.time())))
                    if time.time() >= end_at:
                        break
                    runner.run(WATCH)
                    watch_runs += 1
                stop.set()
                injector.join(timeout=60)
                alerts = [c["params"]["Subject"] for c in cell.calls("Publish")[published:]]
                opened = approval_runs() - known
                return {"false_alarms": len(opened) + len(alerts), "approvals": len(opened), "alerts": alerts,
                        "watch_runs": watch_runs, "injected": injected, "faults_injected": sum(injected.values())}
        finally:
            cell.down()


# ----- one watch round over N cells, through the real scheduler -----------------------------------------------
CELLS_BENCH = "watchdog_cells"
ROUND_SECONDS = 10  # the inventory's default watchdog.round_seconds (kaia_ha.inventory)


def keep_cloud_cells(cell, original: str, round_seconds: float | None) -> float:
    """The inventory: only the N cloud cells (the bare-metal one out: N cells exactly), each cell's
    ``watchdog.round_seconds`` set if given; returns the period the cells' sensors poke at."""
    import yaml

    inventory = yaml.safe_load(original)
    inventory["cells"] = [c for c in inventory["cells"] if c["name"].startswith("cc-cloud")]
    if round_seconds:
        for c in inventory["cells"]:
            c.setdefault("watchdog", {})["round_seconds"] = round_seconds
    with open(cell.env["KAIA_HA_INVENTORY"], "w") as f:
        yaml.safe_dump(inventory, f)
    periods = {(c.get("watchdog") or {}).get("round_seconds", ROUND_SECONDS) for c in inventory["cells"]}
    assert len(periods) == 1, periods
    return float(periods.pop())


def epoch(value) -> float | None:
    """A REST (ISO 8601) or SQLite (naive UTC) timestamp as epoch seconds."""
    from datetime import datetime, timezone

    if not value:
        return None
    t = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


def cpu_s(pids: list[int]) -> float:
    """CPU seconds of these processes so far (own + reaped children: a task's process is reaped by its worker)."""
    from common import CLK

    ticks = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            ticks += sum(int(x) for x in stat[stat.rindex(")") + 2:].split()[11:15])
        except (OSError, ValueError):
            continue
    return ticks / CLK


def machine_busy() -> tuple[float, float]:
    """The machine's CPU seconds busy (all but idle and iowait) and total so far, from /proc/stat."""
    from common import CLK

    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / CLK, sum(fields) / CLK


def sample_run(engine, run_id: str, parallelism: int, every: float = 0.5, timeout: float = 1200) -> tuple[dict, list]:
    """Poll the run's task instances through REST every ``every`` s until the run ends: the run, and the samples
    (t0, t1, {task_id: (state, start, end, queued)}, running, queued, scheduled, up_for_reschedule) over the run's task
    instances, with t0/t1 the request's send and answer."""
    samples, deadline, i = [], time.monotonic() + timeout, 0
    while True:
        t0 = time.time()
        tis = engine.task_instances(WATCH, run_id)
        t1 = time.time()
        states = [ti["state"] for ti in tis]
        samples.append((t0, t1, {ti["task_id"]: (ti["state"], epoch(ti["start_date"]), epoch(ti["end_date"]),
                                                 epoch(ti.get("queued_when")))
                                 for ti in tis if ti["task_id"] == "watch"},
                        states.count("running"), states.count("queued"), states.count("scheduled"),
                        states.count("up_for_reschedule")))
        i += 1
        if i % 4 == 0 or all(s in ("success", "failed", "skipped", "upstream_failed") for s in states):
            run = engine.run(WATCH, run_id)
            if run["state"] in ("success", "failed"):
                return run, samples
        if time.monotonic() > deadline:
            raise AssertionError(f"{WATCH} {run_id} not done after {timeout:.0f} s")
        time.sleep(max(0.0, every - (time.time() - t0)))


def reschedules(db: Path, run_id: str) -> dict[str, list[tuple[float, float]]]:
    """Per watch task, its rows of ``task_reschedule`` in order: (the poke's end, when the next poke is due).
    (Airflow 3.3 writes the row's start_date as the time of the reschedule call, not the poke's start: the
    poke's start is the task instance's start_date, overwritten by each poke, hence the REST samples.)"""
    import sqlite3

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = con.execute("SELECT ti.task_id, tr.end_date, tr.reschedule_date "
                           "FROM task_reschedule tr JOIN task_instance ti "
                           "ON ti.id = tr.ti_id WHERE ti.dag_id = ? AND ti.run_id = ? ORDER BY tr.id",
                           (WATCH, run_id)).fetchall()
    finally:
        con.close()
    out: dict[str, list] = {}
    for task_id, end, due in rows:
        out.setdefault(task_id, []).append((epoch(end), epoch(due)))
    return out


def pokes_of(samples: list) -> dict[str, list[dict]]:
    """Each watch task's pokes, from the samples: a poke is one start_date (set by each poke's start); its end is
    the end_date seen once the task left ``running``."""
    pokes: dict[str, dict[float, dict]] = {}
    for _, _, tis, *_ in samples:
        for task, (state, start, end, queued) in tis.items():
            if start is None or state in ("scheduled", "queued", None):
                continue  # between pokes the start_date is still the previous poke's: its end is already known
            poke = pokes.setdefault(task, {}).setdefault(start, {"start": start, "end": None, "queued": queued,
                                                                 "state": state})
            if state != "running" and end and end >= start:
                poke["end"], poke["state"] = end, state
    return {task: sorted(ps.values(), key=lambda p: p["start"]) for task, ps in pokes.items()}


def round_figures(run: dict, samples: list, pokes: dict, rows: dict, period: float, parallelism: int) -> dict:
    """Per round k (the watch task's k-th poke; the code reads any number of watch tasks, the k-th poke of each a
    round): span (first start to last end), the slot-seconds the pokes held, each poke's lag behind its due time
    (poke 1: the run's start; poke k: the previous poke's reschedule_date), and the task instances seen ``running``
    between their pokes."""
    import statistics

    t_run = epoch(run["start_date"])
    lags, queue_lags, cadences, rounds, matched = [], [], [], [], 0
    for task, ps in pokes.items():
        dues = [t_run] + [due for _, due in rows.get(task, [])]
        ends = [end for end, _ in rows.get(task, [])]
        matched += len(ends) == len(ps) - 1 and all(abs(e - p["end"]) < 0.05 for e, p in zip(ends, ps) if p["end"])
        for k, p in enumerate(ps):
            p["due"] = dues[k] if k < len(dues) else None
            p["lag"] = p["start"] - p["due"] if p["due"] else None
            p["to_queue"] = (p["queued"] - p["due"] if p["due"] and p["queued"] and p["queued"] >= p["due"] - 0.05
                             else None)
            if k:
                cadences.append(p["start"] - ps[k - 1]["start"])
    n_rounds = max(len(ps) for ps in pokes.values())
    for k in range(n_rounds):
        this = [ps[k] for ps in pokes.values() if len(ps) > k and ps[k]["end"]]
        span = max(p["end"] for p in this) - min(p["start"] for p in this)
        busy = sum(p["end"] - p["start"] for p in this)
        lag = [p["lag"] for p in this if p["lag"] is not None]
        lags += lag
        queue_lags += [p["to_queue"] for p in this if p["to_queue"] is not None]
        rounds.append({"round": k + 1, "tasks": len(this), "span_s": round(span, 2),
                       "longest_poke_s": round(max(p["end"] - p["start"] for p in this), 2),
                       "poke_slot_s": round(busy, 1), "span_if_slot_bound_s": round(busy / parallelism, 1),
                       "lag_median_s": round(statistics.median(lag), 2), "lag_max_s": round(max(lag), 2),
                       "start_from_run_s": round(min(p["start"] for p in this) - t_run, 2)})
    # Slots held between rounds: a task instance seen `running` between two of its pokes, once the first poke was
    # over. A poke's end_date is the task's own clock when it asked to be rescheduled; the API records that (state
    # up_for_reschedule) later, and on a saturated machine seconds later: until then the TI still shows `running`
    # with that poke's start_date, its process still in its worker slot. That tail is the poke's, not a slot held
    # between rounds; it is counted apart (``tail_after_end``), and "between" starts once the TI was seen released.
    held, between, seen_held, tails = set(), {}, [], {}
    for task, ps in pokes.items():
        mine = [(t0, t1, *tis[task]) for t0, t1, tis, *_ in samples if task in tis]
        for k, (a, b) in enumerate(zip(ps, ps[1:])):
            if not a["end"]:
                continue
            released = next((t1 for t0, t1, state, start, *_ in mine if t0 > a["end"] and state != "running"), None)
            tail = [t1 for t0, t1, state, start, *_ in mine
                    if state == "running" and start == a["start"] and t0 > a["end"]
                    and (released is None or t1 <= released)]
            if tail:
                # at least this long after its end_date, the poke still held its slot
                tails[(task, k)] = max(tail) - a["end"]
            for t0, t1, state, start, end, _ in mine:
                if released is None or not (released <= t0 and t1 < b["start"]):
                    continue
                between[state] = between.get(state, 0) + 1
                if state == "running":
                    held.add((task, k))
                    seen_held.append({"task": task, "after_poke": k + 1,
                                      "sample": [round(t0 - t_run, 2), round(t1 - t_run, 2)],
                                      "ti_start": round(start - t_run, 2) if start else None,
                                      "ti_end": round(end - t_run, 2) if end else None,
                                      "gap": [round(released - t_run, 2), round(b["start"] - t_run, 2)]})
    released = {task for _, _, tis, *_ in samples for task, (state, *_) in tis.items() if state == "up_for_reschedule"}
    busy_samples = [r + q for _, _, _, r, q, *_ in samples]
    durations = [p["end"] - p["start"] for ps in pokes.values() for p in ps if p["end"]]
    spans = [r["span_s"] for r in rounds]
    return {
        "span_median_s": round(statistics.median(spans), 2), "span_max_s": max(spans),
        "longest_poke_s": round(max(durations), 2), "poke_median_s": round(statistics.median(durations), 2),
        "lag_median_s": round(statistics.median(lags), 2), "lag_max_s": round(max(lags), 2),
        "due_to_queued_median_s": round(statistics.median(queue_lags), 2) if queue_lags else None,
        "due_to_queued_max_s": round(max(queue_lags), 2) if queue_lags else None,
        "lag_max_after_round_1_s": round(max(r["lag_max_s"] for r in rounds[1:]), 2) if len(rounds) > 1 else None,
        "cadence_median_s": round(statistics.median(cadences), 2) if cadences else None,
        "cadence_max_s": round(max(cadences), 2) if cadences else None,
        "slots_held": len(held), "seen_running_between": seen_held[:50],
        "tail_after_end": len(tails), "tail_after_end_max_s": round(max(tails.values()), 2) if tails else 0.0,
        "released_slot": len(released), "pokes_over_period": sum(d >= period for d in durations),
        "fits": int(max(spans) <= period and max(lags) < period),
        "rounds": len(rounds), "pokes": len(durations),
        "pokes_failed": sum(p["state"] not in ("up_for_reschedule", "success") for ps in pokes.values() for p in ps),
        "period_s": period, "parallelism": parallelism,
        "slots_busy_max": max(busy_samples),
        "saturated_share": round(sum(b >= parallelism for b in busy_samples) / len(busy_samples), 2),
        "samples": len(samples), "states_between_pokes": between, "reschedule_rows_match": f"{matched}/{len(pokes)}",
        "running_max": max(x[3] for x in samples), "queued_max": max(x[4] for x in samples),
        "per_round": rounds,
        # every sample: seconds from the run's start, then the run's task instances running, queued, scheduled,
        # up_for_reschedule
        "states_series": [[round(x[0] - t_run, 1), *x[3:]] for x in samples],
        "pokes_by_task": {task: [{k: round(v - t_run, 2)
                                                if isinstance(v, float) and k not in ("lag", "to_queue") else
                                                (round(v, 2) if isinstance(v, float) else v)
                                                for k, v in p.items()} for p in ps]
                          for task, ps in sorted(pokes.items())},
    }


def watch_rounds(engine, cell, n: int, period: float, rounds_per_run: int | None) -> dict:
    """One triggered watchdog run: its pokes from REST samples and ``task_reschedule``, its figures."""
    from common import cell_processes
    from drill.engine import EngineError

    parallelism = int(engine.env["AIRFLOW__CORE__PARALLELISM"])
    cpu0, cell0, wall0, busy0 = (cpu_s(engine.ours()), cell_processes(cell.state_dir)["cpu_s"], time.monotonic(),
                                 machine_busy())
    run_id = engine.trigger(WATCH, {"rounds_per_run": rounds_per_run} if rounds_per_run else {})
    run, samples = sample_run(engine, run_id, parallelism)
    wall = time.monotonic() - wall0
    airflow_cpu, cell_cpu = cpu_s(engine.ours()) - cpu0, cell_processes(cell.state_dir)["cpu_s"] - cell0
    busy = machine_busy()
    pokes = pokes_of(samples)  # a failed run (a sensor timed out, say) is measured too: its state is in the figures
    assert pokes, f"{WATCH} {run_id} ({run['state']}): no poke seen"
    assert list(pokes) == ["watch"], f"one watch task expected, seen {sorted(pokes)}"
    n_rounds = len(pokes["watch"])
    try:  # the sensor's XCom: each cell's latest verdict, by cell name
        xcom = engine.get(f"/dags/{WATCH}/dagRuns/{run_id}/taskInstances/watch/xcomEntries/return_value")
        judged = xcom.get("value")
        judged = json.loads(judged) if isinstance(judged, str) else judged
    except EngineError:
        judged = {}
    verdicts: dict[str, int] = {}
    for v in judged.values():
        verdicts[v["verdict"]] = verdicts.get(v["verdict"], 0) + 1
    # a cell is judged at most once a poke: run_rounds = the pokes seen means judged in every round
    every_round = sum(v.get("run_rounds") == n_rounds and not v.get("failed") for v in judged.values())
    try:  # the watch task's log: each poke's own "round over N cells in S s" line (the threads' part of the poke)
        text = engine.log(WATCH, run_id, "watch", 1)
        log_tail = [line[:160] for line in text.splitlines()[-80:]]
        inner = [(float(m.group(2)), m.group(3).strip()) for m in
                 re.finditer(r"round over (\d+) cells in ([\d.]+) s: ([\w ,]+)", text)]
    except EngineError as exc:
        log_tail, inner = [f"no log: {exc}"], []
    figures = round_figures(run, samples, pokes, reschedules(engine.home / "airflow.db", run_id), period, parallelism)
    figures["fits"] = int(figures["fits"] and run["state"] == "success" and every_round == n
                          and not figures["pokes_failed"])
    return {**{k: v for k, v in figures.items() if k not in ("per_round", "pokes_by_task", "states_series")},
            "run_state": run["state"], "cells_judged": len(judged), "cells_judged_every_round": every_round,
            "cells": n, "round_in_task_s": [t for t, _ in inner], "round_in_task_counts": [c for _, c in inner],
            "run_wall_s": round(epoch(run["end_date"]) - epoch(run["start_date"]), 1),
            "airflow_cpu_s": round(airflow_cpu, 1), "cell_cpu_s": round(cell_cpu, 1),
            "cpu_cores_used": round((airflow_cpu + cell_cpu) / wall, 2),
            # share of all cores, whoever used them
            "machine_cpu_busy": round((busy[0] - busy0[0]) / (busy[1] - busy0[1]), 2),
            "verdicts": verdicts, "run_id": run_id,
            "per_round": figures["per_round"], "pokes_by_task": figures["pokes_by_task"],
            "states_series": figures["states_series"],
            "log_tail": log_tail}


def cells(n: int, runs: int, rounds_per_run: int | None, tries: list[str]) -> None:
    import tempfile

    from cellkit import Cell
    from common import cloud_cells_up
    from drill.engine import AirflowEngine

    variants = [("default", {})] + [(t, dict([t.split("=")])) for t in tries]
    bench = Bench(CELLS_BENCH, params={"cells": n, "runs": runs,
                                       "rounds_per_run": rounds_per_run or "DAG default (45 s of rounds)",
                                       "profile": "instant", "variants": [v for v, _ in variants]},
                  notes=["real scheduler (airflow standalone, LocalExecutor, SQLite) through "
                         "drill.engine.AirflowEngine; runs triggered "
                         "through REST (use_job_schedule off), one at a time (max_active_runs=1)",
                         "AIRFLOW__CORE__PARALLELISM as drill.engine sets it (4, two shared cores) "
                         "unless a variant says otherwise",
                         f"inventory: only the {n} cloud cells (cc-cloud, cc-cloud-2..); "
                         "the bare-metal cell left out; healthy, no break",
                         "a round = one poke of the one watch task (every cell at once, in threads); "
                         "span = that poke's start to its end; a poke = "
                         "the task instance's start_date (its process started) to end_date (rescheduled), "
                         "from REST samples every "
                         "0.5 s; due = the previous poke's reschedule_date (task_reschedule), "
                         "the run's start for poke 1; lag = start - due",
                         "every cell judged in every round: the sensor's XCom has all N cells, each with "
                         "run_rounds = the pokes seen",
                         "slots held = task instances seen running between two of their pokes (REST samples), "
                         "after the first poke's "
                         "reschedule was recorded; before that, the poke's tail "
                         "(its process reporting the reschedule) is counted apart",
                         "the sampling itself (one REST list of the run's task instances every 0.5 s) "
                         "costs the api-server some CPU"])
    with tempfile.TemporaryDirectory() as tmp:
        cell = Cell(Path(tmp) / "cell")
        try:
            say(f"watchdog over {n} cells: simcell up --cloud-cells {n} ...")
            with quiet(bench.log):
                up_s = cloud_cells_up(cell, n)
            original = Path(cell.env["KAIA_HA_INVENTORY"]).read_text()
            say(f"  {n} cloud cells up in {up_s} s")
            for label, change in variants:
                if change.get("round_seconds") == "auto":  # the default's longest round or lag, up to the next 5 s
                    done = [r for res in bench.results.values() for r in res["runs"] if r.get("ok")][:runs]
                    if not done:
                        say(f"  {label}: no measured default run to size it from; skipped")
                        continue
                    need = max(max(r["span_max_s"], r["lag_max_s"]) for r in done)
                    if all(r["fits"] for r in done):
                        say(f"  {label}: the default fits (longest round or lag {need} s); skipped")
                        continue
                    change = {**change, "round_seconds": str(5 * math.ceil(need / 5))}
                period = keep_cloud_cells(cell, original,
                                          float(change["round_seconds"]) if "round_seconds" in change else None)
                engine = AirflowEngine(Path(tmp) / f"airflow-{label.replace('=', '-')}", cell.env)
                if "parallelism" in change:
                    engine.env["AIRFLOW__CORE__PARALLELISM"] = change["parallelism"]
                parallelism = int(engine.env["AIRFLOW__CORE__PARALLELISM"])
                label = f"{n} cells, parallelism {parallelism}, round_seconds {period:g}"
                try:
                    t0 = time.monotonic()
                    with quiet(bench.log):
                        engine.start()
                        engine.unpause(WATCH)
                    say(f"  Airflow up in {time.monotonic() - t0:.0f} s; {label}: {runs} run(s)")
                    # A longer round_seconds leaves fewer rounds in the DAG's 45 s: still 3 to see rounds after
                    # the first.
                    per_run = rounds_per_run or (3 if "round_seconds" in change else None)
                    bench.repeat(label, runs, watch_rounds, engine, cell, n, period, per_run)
                    for r in bench.results[label]["runs"]:
                        if r.get("ok"):
                            say("    per round: " + "; ".join(f"{x['round']}: span {x['span_s']} s, "
                                                             f"slot-s {x['poke_slot_s']}, "
                                                             f"lag max {x['lag_max_s']} s" for x in r["per_round"]))
                finally:
                    with quiet(bench.log):
                        engine.stop()
                    if hasattr(engine, "log_path") and not all(r.get("ok") for r in
                                                               bench.results.get(label, {"runs": [{}]})["runs"]):
                        shutil.copyfile(engine.log_path, OUT / f"{CELLS_BENCH}.airflow.log")  # the tmp home goes
                        say(f"  Airflow's log: {(OUT / f'{CELLS_BENCH}.airflow.log').relative_to(REPO)}")
                    left = engine.ours()
                    if left:
                        say(f"  Airflow processes left running: {left}")
        finally:
            with quiet(bench.log):
                cell.down()
    bench.finish(CELLS_COLUMNS)
    for label, res in bench.results.items():
        for r in (r for r in res["runs"] if r.get("ok")):
            say(f"{label}: round over {n} cells: span median {r['span_median_s']:.1f} s "
                f"(max {r['span_max_s']:.1f} s), period "
                f"{r['period_s']:g} s; longest poke {r['longest_poke_s']:.1f} s; "
                f"slots held between rounds: {r['slots_held']} "
                f"(pokes still running after their end_date: {r.get('tail_after_end')}, "
                f"up to {r.get('tail_after_end_max_s')} s); "
                f"lag median {r['lag_median_s']:.1f} s (max {r['lag_max_s']:.1f} s); "
                + ("fits" if r["fits"] else "does NOT fit")
                + f" (run {r['run_state']}, {r['rounds']} rounds, {r['cells_judged_every_round']}/{n} cells judged "
                f"in every round, verdicts {r['verdicts']}; in-task round times {r['round_in_task_s']} s)")


CELLS_COLUMNS = [("span_median_s", "round span median (s)"), ("span_max_s", "round span max (s)"),
                 ("period_s", "period (s)"), ("longest_poke_s", "longest poke (s)"),
                 ("poke_median_s", "poke median (s)"), ("lag_median_s", "lag median (s)"),
                 ("lag_max_s", "lag max (s)"), ("cadence_max_s", "poke to poke max (s)"),
                 ("slots_held", "slots held between rounds"), ("fits", "fits (1/0)"),
                 ("slots_busy_max", "slots busy max"), ("cpu_cores_used", "CPU cores used")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--ways", default="kill,stop-instance,cut-ssh")
    parser.add_argument("--soak", type=float, metavar="MINUTES")
    parser.add_argument("--cells", type=int, metavar="N",
                        help="one watch round over N cloud cells in the real scheduler")
    parser.add_argument("--rounds-per-run", type=int, metavar="N",
                        help="with --cells: rounds per run (default: the DAG's, 45 s of rounds)")
    parser.add_argument("--try", dest="tries", action="append", default=[], metavar="SETTING=VALUE",
                        help="with --cells: also measure with parallelism=P or round_seconds=S "
                             "(a fresh Airflow on the same cell); "
                             "round_seconds=auto: the default's longest round or lag, up to the next 5 s")
    args = parser.parse_args()
    if args.cells:
        cells(args.cells, args.runs, args.rounds_per_run, args.tries)
        return
    if args.soak:
        bench = Bench("watchdog_soak", params={"minutes": args.soak, "faults": FAULTS})
        say(f"watchdog soak: {args.soak} min")
        run = bench.repeat("healthy cell, transient faults", 1, soak, args.soak)[0]
        bench.finish([("false_alarms", "false alarms"), ("faults_injected", "faults injected"),
                      ("watch_runs", "watchdog runs")])
        say(f"false alarms: {run.get('false_alarms', 'n/a (run failed)')} (faults injected: {run.get('injected')})")
        return
    ways = args.ways.split(",")
    bench = Bench("watchdog", params={"runs": args.runs, "ways": ways, "profile": "instant",
                                      "settings": "inventory defaults"})
    for way in ways:
        say(f"watchdog MTTD: {way}, {args.runs} runs")
        bench.repeat(way, args.runs, mttd_once, way)
    bench.finish([("mttd_s", "MTTD: break to approval asked (s)"), ("detected_s", "break to dead verdict (s)")])
    mttds = [r["mttd_s"] for res in bench.results.values() for r in res["runs"] if r.get("ok")]
    if mttds:
        from statistics import median

        say(f"MTTD median {median(mttds):.1f} s ({min(mttds):.1f}-{max(mttds):.1f}, {len(mttds)})")
    else:
        say("MTTD: no run succeeded (see the log)")


if __name__ == "__main__":
    main()
