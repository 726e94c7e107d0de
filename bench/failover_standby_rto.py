"""RTO of the bare-metal failover (``kaia_cn_failover_standby``): the standby ``cn-metal-b`` takes over the
failed active ``cn-metal-a``'s identity and floating IP.

    .venv/bin/python bench/failover_standby_rto.py [--runs 3]

Each run brings up its own cell, backs up the active's keys with the maintenance DAG's own step (what a
well-kept cell has; as ``tests/dags/conftest.py::metal_cell_airflow`` does), kills kcnd on ``cn-metal-a``
(its host still answers, so it is fenced over SSH) and runs the failover with ``dag.test()``, after a dry
run of it in the same process (see ``once``). No AWS
transition is involved (bare metal), so the latency profile does not matter: all of it is real SSH,
node stop/start and Airflow time. Critical path and overhead as in ``failover_rto.py``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import Bench, critical_path, path_figures, run_steps, say

DAG = "kaia_cn_failover_standby"
FAILED = "cn-metal-a"


def once() -> dict:
    from cellkit import AirflowRunner, Cell

    with tempfile.TemporaryDirectory() as tmp:
        cell = Cell(Path(tmp) / "cell")
        cell.up()
        try:
            with AirflowRunner(cell, Path(tmp) / "reports") as runner:
                from kaia_ha import maintenance

                assert maintenance.backup_nodekey("cc-metal", "bench-setup")["action"] == "created"
                # A dry run first (preflight only, changes nothing): the first task of a process pays Airflow's
                # in-process start (execution API client, provider imports, ~15 s here), which is no part of the
                # failover. The cloud benchmark's maintenance run does the same for it.
                runner.run(DAG, {"failed_cn": FAILED, "dry_run": True})
                cell.break_(FAILED, "kill")
                run_id, state, _ = runner.run(DAG, {"failed_cn": FAILED})
                assert state == "success", "failover failed"
                report = runner.report(DAG, run_id)
                steps = run_steps(DAG, run_id)
                return path_figures(report["rto_seconds"], steps,
                                    critical_path(runner.dag(DAG), steps, "start.standby_synced"))
        finally:
            cell.down()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    bench = Bench("failover_standby_rto", params={"runs": args.runs, "failed_cn": FAILED,
                                                  "profile": "instant (no AWS transition involved)"})
    say(f"failover_standby_rto: {args.runs} runs")
    bench.repeat("bare-metal failover (standby takes over)", args.runs, once)
    bench.finish([("rto_s", "RTO (s)"), ("critical_path_s", "critical path (s)"), ("overhead_s", "overhead (s)"),
                  ("idle_s", "of which idle (s)"), ("serialized_s", "of which serialized (s)")])
    ok = [r for r in next(iter(bench.results.values()))["runs"] if r.get("ok")]
    if ok:
        say("critical path (run 1): " + " -> ".join(ok[0]["critical_path"]))


if __name__ == "__main__":
    main()
