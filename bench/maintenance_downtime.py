"""kpnd's down time per PN snapshot against the time the snapshot takes to complete.

    .venv/bin/python bench/maintenance_downtime.py [--runs 3] [--time-scale 0.1]

One cell: two maintenance runs in ``instant`` first (each PN's first, full snapshot and the CN image:
preparation), then the cell switches to ``aws`` at --time-scale and every measured maintenance run
takes an incremental snapshot, as a daily run does. From each run's report: how long kpnd was down
(stop begun -> started again) and how long after the stop the snapshot completed.

What scales: the snapshot's ``pending`` time (``aws`` profile: 300 s incremental, times --time-scale).
What does not: kpnd's down time (real SSH, a clean stop of the node, the CreateSnapshot call, the
start) and, in the completion, the CreateSnapshot call a task after the stop, the sensor's 5 s poll and
task start-up: the real-speed figure is that rest plus the modelled 300 s.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import Bench, say
from simcell.aws import latency as L

COLUMNS = [("kpnd_down_s", "kpnd down (s, not scaled)"),
           ("snapshot_complete_s", "snapshot complete after the stop (s, as run)"),
           ("not_scaled_s", "of which not scaled (s)"),
           ("snapshot_complete_real_s", "snapshot complete at real AWS speed (s)")]


def derive(bench: Bench) -> None:
    """Split the snapshot's completion into the modelled AWS time (scaled) and the rest (the CreateSnapshot a task
    after the stop, the sensor's poll, task start-up), which does not scale; real speed = the rest + 300 s."""
    scale = bench.params["time_scale"]
    for label, res in bench.results.items():
        for r in res["runs"]:
            if r.get("ok") and label.startswith("incremental"):
                r["not_scaled_s"] = round(r["snapshot_complete_s"] - L.INCREMENTAL_SNAPSHOT_S * scale, 2)
                r["snapshot_complete_real_s"] = round(r["not_scaled_s"] + L.INCREMENTAL_SNAPSHOT_S, 1)
                r.pop("snapshot_complete_unscaled_s", None)  # an earlier derivation (all of it / scale)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--time-scale", type=float, default=0.1)
    parser.add_argument("--rescore", action="store_true", help="only derive the figures again from the saved runs")
    args = parser.parse_args()
    if args.rescore:
        bench = Bench.load("maintenance_downtime")
        derive(bench)
        bench.finish(COLUMNS)
        return
    from cellkit import AirflowRunner, Cell

    bench = Bench("maintenance_downtime", params={"profile": "aws", "time_scale": args.time_scale, "runs": args.runs,
                                                  "modelled_snapshot_unscaled_s": L.INCREMENTAL_SNAPSHOT_S},
                  notes=["one cell for all runs; two instant maintenance runs first so that every measured snapshot "
                         "is incremental",
                         "snapshot completion is when the deferred sensor saw it (polls every 5 s)"])
    with tempfile.TemporaryDirectory() as tmp:
        cell = Cell(Path(tmp) / "cell")
        cell.up()
        try:
            with AirflowRunner(cell, Path(tmp) / "reports") as runner:

                def maintenance(scale: float | None) -> dict:
                    run_id, state, _ = runner.run("kaia_cn_maintenance")
                    assert state == "success", "maintenance failed"
                    cells = runner.report("kaia_cn_maintenance", run_id)["cells"]
                    snap = next(c for c in cells if c["cell"] == "cc-cloud")["pn_snapshot"]
                    return {"pn": snap["pn"], "kpnd_down_s": snap["kpnd_down_seconds"],
                            "snapshot_complete_s": snap["snapshot_complete_seconds"]}

                say("maintenance_downtime: preparing (2 maintenance runs, instant profile)")
                bench.repeat("preparation: first (full) snapshots, instant profile", 2, maintenance, None)
                cell.cli("latency", "--profile", "aws", "--time-scale", str(args.time_scale))
                say(f"maintenance_downtime: {args.runs} runs, aws profile x{args.time_scale}")
                bench.repeat(f"incremental snapshot, aws x{args.time_scale}", args.runs, maintenance, args.time_scale)
        finally:
            cell.down()
    derive(bench)
    bench.finish(COLUMNS)
    say(f"modelled incremental snapshot: {L.INCREMENTAL_SNAPSHOT_S:.0f} s unscaled = "
        f"{L.INCREMENTAL_SNAPSHOT_S * args.time_scale:.1f} s at x{args.time_scale}")


if __name__ == "__main__":
    main()
