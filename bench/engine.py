"""The DAGs through the real scheduler on both engines (issue 16): maintenance at scale, and the cloud failover's
orchestration overhead.

    .venv/bin/python bench/engine.py scale [--executors local,celery] [--cells 1,5,20]
    .venv/bin/python bench/engine.py overhead [--executors local,celery] [--runs 2]

Engines (``drill.engine``): ``local`` is ``airflow standalone`` (LocalExecutor, SQLite, parallelism 4);
``celery`` is PostgreSQL, Redis and two Celery workers of four slots (what docker-compose.yaml deploys).

``scale``: per engine and N, a simulated cell of N copies of ``cc-cloud`` (instant profile: what grows is the
orchestration, not AWS waiting), a fresh engine, one ``kaia_cn_maintenance`` run (the first one: every CN image
and every PN's first snapshot) triggered through the REST API. Figure: the run's start to end (the metadata
DB's times through the API), and its ratio to the same engine's 1-cell run (goal: 20 cells within 3x of one). Also
the CPU the run cost the machine and the simulated cell's share of it (its 3 hosts per cell answer every SSH
command with new processes, and 20 cells' nodes take about half a core idle): on two cores the cell competes with
Airflow for the CPU, which a real cell's own machines would not.

``overhead``: per engine, the drill's incident at AWS's pace (``--profile aws --time-scale 1``): maintenance
in the instant profile, then the CN killed and the failover triggered. RTO = the run's start to
``verify.in_sync``'s end. Critical path: back from ``verify.in_sync``, each task's upstream that ended last; its
tasks' durations summed (AWS waits, the node's own start, the project's steps). Overhead = RTO minus that sum:
the time between tasks (scheduling, queueing, task start-up). Goal: 10 % of the RTO or less.
Results: ``.artifacts/bench/engine_scale.json``, ``.artifacts/bench/engine_overhead.json``.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
from pathlib import Path

from common import CLK, Bench, cell_processes, cloud_cells_up, path_figures, say

MAINTENANCE = "kaia_cn_maintenance"
FAILOVER = "kaia_cn_failover_cloud"
FAILED = "cn-aws-1"


def epoch(value: str) -> float:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def run_steps(engine, dag_id: str, run_id: str) -> tuple[float, list[dict]]:
    """The run's start (epoch) and its succeeded tasks as ``common.path_figures`` reads them, from the REST API."""
    t0 = epoch(engine.run(dag_id, run_id)["start_date"])
    steps = [{"task": ti["task_id"], "t_start": round(epoch(ti["start_date"]) - t0, 2),
              "t_end": round(epoch(ti["end_date"]) - t0, 2),
              "seconds": round(epoch(ti["end_date"]) - epoch(ti["start_date"]), 2), "host": ti.get("hostname")}
             for ti in engine.task_instances(dag_id, run_id)
             if ti["state"] == "success" and ti["start_date"] and ti["end_date"]]
    return t0, sorted(steps, key=lambda s: s["t_start"])


def critical_path(engine, dag_id: str, steps: list[dict], last: str) -> list[str]:
    upstream: dict[str, set[str]] = {}
    for task in engine.get(f"/dags/{dag_id}/tasks")["tasks"]:
        for down in task["downstream_task_ids"]:
            upstream.setdefault(down, set()).add(task["task_id"])
    ends = {s["task"]: s["t_end"] for s in steps}
    path = [last]
    while ups := [u for u in upstream.get(path[-1], ()) if u in ends]:
        path.append(max(ups, key=ends.get))
    return path[::-1]


def engine_for(executor: str, tmp: str, cell):
    from drill.engine import AirflowEngine

    engine = AirflowEngine(Path(tmp) / "airflow", cell.engine_env(), executor=executor)
    engine.start()
    for dag_id in (MAINTENANCE, FAILOVER):
        engine.unpause(dag_id)
    return engine


def busy_cpu_s() -> float:
    """CPU seconds the machine has spent busy (all processes, every core) since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / CLK  # less idle and iowait


def maintenance(engine, n: int, cell=None) -> dict:
    """One maintenance run: its time, tasks and workers; with ``cell``, the CPU it cost the machine and how much of
    that the simulated cell took (its hosts' sshd and commands, nodes, AWS emulator), which a real cell pays on
    its own machines."""
    cpu0, cell0 = busy_cpu_s(), cell_processes(cell.state_dir)["cpu_s"] if cell else 0.0
    run_id = engine.trigger(MAINTENANCE)
    state = engine.wait(MAINTENANCE, run_id, timeout=3600, poll=5)
    run = engine.run(MAINTENANCE, run_id)
    cpu = {}
    if cell:
        used, by_cell = busy_cpu_s() - cpu0, cell_processes(cell.state_dir)["cpu_s"] - cell0
        cpu = {"cpu_s": round(used, 1), "cell_cpu_pct": round(100 * by_cell / used, 1) if used else None}
    if state != "success":
        raise RuntimeError(f"maintenance over {n} cells: {state}")
    _, steps = run_steps(engine, MAINTENANCE, run_id)
    return {"run_s": round(epoch(run["end_date"]) - epoch(run["start_date"]), 1), "tasks": len(steps),
            "workers": len({s["host"] for s in steps}), **cpu}


def scale_once(executor: str, n: int) -> dict:
    from cellkit import Cell

    with tempfile.TemporaryDirectory() as tmp:
        cell, engine = Cell(Path(tmp) / "cell"), None
        try:
            up_s = cloud_cells_up(cell, n)
            engine = engine_for(executor, tmp, cell)
            return {"cells_up_s": up_s, **maintenance(engine, n, cell)}
        finally:
            if engine:
                engine.stop()
            cell.down()


def overhead_once(executor: str) -> dict:
    from cellkit import Cell

    with tempfile.TemporaryDirectory() as tmp:
        cell, engine = Cell(Path(tmp) / "cell"), None
        try:
            cell.up()
            engine = engine_for(executor, tmp, cell)
            maintenance(engine, 1)
            cell.cli("latency", "--profile", "aws", "--time-scale", "1")
            cell.break_(FAILED, "kill")
            run_id = engine.trigger(FAILOVER, {"failed_cn": FAILED})
            if engine.wait(FAILOVER, run_id, timeout=1800, poll=2) != "success":
                raise RuntimeError("failover failed")
            _, steps = run_steps(engine, FAILOVER, run_id)
            rto = next(s["t_end"] for s in steps if s["task"] == "verify.in_sync")
            path = critical_path(engine, FAILOVER, steps, "verify.in_sync")
            figures = path_figures(rto, [s for s in steps if s["t_start"] < rto], path)
            figures["overhead_pct"] = round(100 * figures["overhead_s"] / rto, 1)
            figures["workers"] = len({s["host"] for s in steps})
            return figures
        finally:
            if engine:
                engine.stop()
            cell.down()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=("scale", "overhead"))
    parser.add_argument("--executors", default="local,celery")
    parser.add_argument("--cells", default="1,5,20")
    parser.add_argument("--runs", type=int, default=None, help="runs per point (scale: 1, overhead: 2)")
    args = parser.parse_args()
    executors = args.executors.split(",")
    if args.what == "scale":
        cells = [int(x) for x in args.cells.split(",")]
        bench = Bench("engine_scale", params={"executors": executors, "cells": cells, "profile": "instant"},
                      notes=["the first maintenance run of a fresh cell: every CN image, every PN's first snapshot"])
        for executor in executors:
            for n in cells:
                bench.repeat(f"{executor} {n} cells", args.runs or 1, scale_once, executor, n)
        for executor in executors:
            one = bench.stats(f"{executor} 1 cells", "run_s")["median"] if 1 in cells else None
            for n in cells:
                got = bench.stats(f"{executor} {n} cells", "run_s")["median"]
                if one and got:
                    say(f"{executor}: maintenance over {n} cells {got:.1f} s = {got / one:.2f}x one cell ({one:.1f} s)")
        bench.finish([("run_s", "maintenance run (s)"), ("tasks", "tasks"), ("workers", "workers used"),
                      ("cpu_s", "CPU used (s)"), ("cell_cpu_pct", "of it, the simulated cell's (%)")])
    else:
        bench = Bench("engine_overhead", params={"executors": executors, "profile": "aws", "time_scale": 1})
        for executor in executors:
            bench.repeat(executor, args.runs or 2, overhead_once, executor)
            st = bench.stats(executor, "overhead_pct")
            if st["median"] is not None:
                say(f"{executor}: orchestration overhead median {bench.stats(executor, 'overhead_s')['median']:.1f} s"
                    f" of RTO {bench.stats(executor, 'rto_s')['median']:.1f} s = {st['median']:.1f} %")
        bench.finish([("rto_s", "RTO (s)"), ("critical_path_s", "critical path (s)"), ("overhead_s", "overhead (s)"),
                      ("overhead_pct", "overhead (%)"), ("idle_s", "no task running (s)")])


if __name__ == "__main__":
    main()
