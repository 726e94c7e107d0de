"""kpnd's down time per PN snapshot against the time the snapshot takes to complete.

    .venv/bin/python bench/maintenance_downtime.py --profile aws --time-scale 0.002 [--runs 3]

Brings up a cell per run, runs the maintenance DAG and prints, from its report, how long kpnd was down
(stop begun -> started again) and how long after the stop the snapshot completed. With the aws profile
the snapshot's figure is scaled by --time-scale (divide by it for the real-world figure); kpnd's down
time is not scaled (it is real SSH and process work).
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


def once(profile: str, scale: float, runs: int) -> list[dict]:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        cell = Cell(Path(tmp) / "cell")
        cell.up("--profile", profile, "--time-scale", str(scale))
        try:
            with AirflowRunner(cell, Path(tmp) / "reports") as runner:
                for _ in range(runs):  # the first snapshot of a volume is full, later ones incremental
                    run_id, state, _ = runner.run("kaia_cn_maintenance")
                    assert state == "success", "maintenance failed"
                    cloud = next(c for c in runner.report("kaia_cn_maintenance", run_id)["cells"] if c["cell"] == "cc-cloud")
                    out.append(cloud["pn_snapshot"])
        finally:
            cell.down()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="aws")
    parser.add_argument("--time-scale", type=float, default=0.002)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    results = once(args.profile, args.time_scale, args.runs)
    for r in results:
        real = r["snapshot_complete_seconds"] / args.time_scale if args.profile == "aws" else r["snapshot_complete_seconds"]
        print(f"{r['pn']}: kpnd down {r['kpnd_down_seconds']} s; snapshot complete {r['snapshot_complete_seconds']} s after the stop "
              f"(= {real:.0f} s unscaled)")
    downs = [r["kpnd_down_seconds"] for r in results]
    print(f"median kpnd down {statistics.median(downs)} s over {len(downs)} snapshots (min {min(downs)}, max {max(downs)})")


if __name__ == "__main__":
    main()
