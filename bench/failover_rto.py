"""Measure the cloud failover's RTO (trigger to synced) against a simulated core cell.

    .venv/bin/python bench/failover_rto.py [--profile aws --time-scale 0.002] [--fresh] [--runs 1]

Each run brings up its own cell, runs the maintenance DAG (key backup, image, pre-taken snapshot),
kills the CN and runs the failover with dag.test(); it prints the RTO from the failover's report and the
critical path (the steps on the way to in_sync, with their durations).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from cellkit import AirflowRunner, Cell  # noqa: E402


def once(profile: str, scale: float, fresh: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cell = Cell(Path(tmp) / "cell")
        cell.up("--profile", profile, "--time-scale", str(scale))
        try:
            with AirflowRunner(cell, Path(tmp) / "reports") as runner:
                _, state, _ = runner.run("kaia_cn_maintenance")
                assert state == "success", "maintenance failed"
                cell.break_("cn-aws-1", "kill")
                run_id, state, _ = runner.run("kaia_cn_failover_cloud", {"failed_cn": "cn-aws-1", "use_presnapshot": not fresh})
                assert state == "success", "failover failed"
                return runner.report("kaia_cn_failover_cloud", run_id)
        finally:
            cell.down()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="instant")
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--fresh", action="store_true", help="take a fresh PN snapshot instead of the pre-taken one")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    rtos = []
    for _ in range(args.runs):
        report = once(args.profile, args.time_scale, args.fresh)
        rtos.append(report["rto_seconds"])
        print(f"RTO {report['rto_seconds']} s")
        for step in report["timeline"]:
            print(f"  {step['t_start']:>7} -> {step['t_end']:>7}  {step['seconds']:>7}s  {step['task']}")
    print(f"profile={args.profile} scale={args.time_scale} fresh={args.fresh} runs={len(rtos)} "
          f"median RTO {statistics.median(rtos):.1f} s (min {min(rtos)}, max {max(rtos)})")


if __name__ == "__main__":
    main()
