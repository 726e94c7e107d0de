"""Maintenance over 1, 5 and 20 simulated cloud core cells: wall time of a ``kaia_cn_maintenance`` run and
what the simulated cell costs the machine.

    .venv/bin/python bench/maintenance_scale.py [--cells 1,5,20] [--runs 3] [--large-runs 1]

Per N: a cell with N copies of ``cc-cloud`` (``python -m simcell up --cloud-cells N``; 3 EC2 hosts each,
plus the bare-metal cell's 3 hosts) in the ``instant`` profile, so what grows is the orchestration
(Airflow tasks, SSH sessions, API calls), not AWS waiting. A first maintenance run (CN images, each PN's
first snapshot) is reported apart; then --runs steady-state runs (what a daily run does: image skipped,
the other PN snapshotted, retention). The run's wall time is the DAG run's start to end in the metadata
DB. The cell's cost: its processes (found by the SIMCELL_OWNER mark, as ``simcell down`` finds them):
count, sshd count, resident memory, CPU seconds used during the runs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from common import Bench, cell_processes, cloud_cells_up, say


def run_wall(dag_id: str, run_id: str) -> tuple[float, int]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        dr = session.query(DagRun).filter_by(dag_id=dag_id, run_id=run_id).one()
        return round((dr.end_date - dr.start_date).total_seconds(), 1), len(dr.get_task_instances(session=session))


def scale(bench: Bench, n: int, runs: int) -> None:
    from cellkit import AirflowRunner, Cell

    with tempfile.TemporaryDirectory() as tmp:
        cell = Cell(Path(tmp) / "cell")
        try:
            up_s = cloud_cells_up(cell, n)
        except BaseException:
            cell.down()  # a half-seeded cell
            raise
        idle = cell_processes(cell.state_dir)
        time.sleep(10)
        # the cell's own cost at rest (block ticks, heartbeats)
        idle_cpu = (cell_processes(cell.state_dir)["cpu_s"] - idle["cpu_s"]) / 10
        say(f"maintenance_scale: {n} cloud cells up in {up_s} s: {idle['processes']} processes ({idle['sshd']} sshd), "
            f"{idle['rss_mib']} MiB, idle CPU {idle_cpu:.2f} core")
        try:
            with AirflowRunner(cell, Path(tmp) / "reports") as runner:

                def maintenance() -> dict:
                    before, ru = cell_processes(cell.state_dir), os.times()
                    run_id, state, _ = runner.run("kaia_cn_maintenance")
                    assert state == "success", "maintenance failed"
                    wall, tasks = run_wall("kaia_cn_maintenance", run_id)
                    after, ru2 = cell_processes(cell.state_dir), os.times()
                    return {"wall_run_s": wall, "tasks": tasks, "per_cell_s": round(wall / n, 2),
                            "cell_cpu_s": round(after["cpu_s"] - before["cpu_s"], 1),
                            "airflow_cpu_s": round(ru2.user + ru2.system - ru.user - ru.system, 1),
                            "cell_rss_mib": after["rss_mib"], "cell_processes": after["processes"],
                            "sshd": after["sshd"],
                            "up_s": up_s, "idle_cell_cpu_cores": round(idle_cpu, 2)}

                bench.repeat(f"{n} cells, first run", 1, maintenance)
                bench.repeat(f"{n} cells, steady state", runs, maintenance)
        finally:
            cell.down()


COLUMNS = [("wall_run_s", "DAG run wall (s)"), ("tasks", "tasks"), ("per_cell_s", "per cell (s)"),
           ("cell_cpu_s", "cell CPU (s)"),
           ("airflow_cpu_s", "Airflow process CPU (s)"), ("cell_rss_mib", "cell RSS (MiB)"),
           ("cell_processes", "cell processes"),
           ("sshd", "sshd"), ("up_s", "simcell up (s)"), ("idle_cell_cpu_cores", "cell CPU at rest (cores)")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", default="1,5,20")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--large-runs", type=int, default=1,
                        help="steady-state runs for N >= 10 (a 20-cell run takes 10-30 min on 2 cores)")
    parser.add_argument("--finish", action="store_true", help="only the table of the runs saved so far (after an "
                                                              "interrupted run)")
    args = parser.parse_args()
    if args.finish:
        Bench.load("maintenance_scale").finish(COLUMNS)
        return
    bench = Bench("maintenance_scale", params={"profile": "instant", "cells": args.cells, "runs": args.runs,
                                               "large_runs": args.large_runs},
                  notes=["instant profile: AWS transitions take no time; the figures are orchestration cost",
                         "each N has 3N EC2 hosts plus the bare-metal cell's 3 hosts, each its own sshd and node "
                         "process"])
    for n in (int(x) for x in args.cells.split(",")):
        scale(bench, n, args.runs if n < 10 else args.large_runs)
    bench.finish(COLUMNS)


if __name__ == "__main__":
    main()
