"""Cloud failover RTO in the ``aws`` latency profile: the DAG with the pre-taken snapshot, the DAG with
a fresh snapshot, and the docs' order done by hand (``bench/sequential_failover.py``), same cell, same profile.

    .venv/bin/python bench/failover_rto.py [--runs 3] [--time-scale 0.02] [--variants pretaken,fresh,sequential]
    .venv/bin/python bench/failover_rto.py --variants fresh,slowstop,stuck   # a PN slow to stop (issue 15)

``slowstop``: the fresh snapshot's PN needs 15 s to stop (``simcell fault slow-stop:pn-aws-1 --times 15``, more
than the init script's STOP_TIMEOUT, within the inventory's 60 s ``pn_stop_limit_seconds``). ``stuck``: it needs
90 s, past that limit: it is skipped (started again once its flush ends) and pn-aws-2 is snapshotted (the cell
is kept by two maintenance runs for it: a PN whose volume was never snapshotted is no fallback, its first
snapshot is a full copy).

Each run brings up its own cell in ``instant``, runs the maintenance DAG (key backup, CN image, a
pre-taken snapshot: preparation, not measured), switches the cell to ``aws`` at --time-scale, kills the
CN and fails over. Figures per run:

- RTO: trigger (the DAG run's start; the sequential script's first step) to the CN in sync.
- critical path: walking back from ``verify.in_sync``, each task's upstream that finished last (task
  instance times from the metadata DB: the report's timeline records only the project's own steps,
  not the sensors and provider operators). Its tasks' durations summed; the orchestration overhead is
  RTO minus that sum (scheduling, task start-up, time a ready task waits for another to finish).
- AWS part: the ``aws`` profile's durations of the transitions whose wait is on the critical path
  (``simcell/aws/latency.py``), scaled as run and unscaled (= scaled / scale). Only that part scales:
  Airflow, SSH, the node's stop/start and the sensors' 5 s poll interval do not.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import REPO, Bench, critical_path, path_figures, run_steps, say
from simcell.aws import latency as L

DAG = "kaia_cn_failover_cloud"
FAILED = "cn-aws-1"
SLOW_STOP = {"slowstop": 15, "stuck": 90}  # variant -> seconds kpnd on pn-aws-1 needs to stop (real time, not scaled)
# The wait of each modelled AWS transition: DAG task id (last part) -> unscaled seconds in the aws profile.
# The fresh snapshot is incremental: the maintenance run already snapshotted that PN's volume.
AWS_WAITS = {"wait_stopped": L.INSTANCE_STOPPING_S, "wait_running": L.INSTANCE_PENDING_S,
             "wait_snapshot": L.INCREMENTAL_SNAPSHOT_S, "volume_available": L.VOLUME_CREATING_S}


# The step that begins each transition (last part of the task id, the DAG's and the sequential script's alike).
STARTED_BY = {"wait_stopped": "fence", "wait_running": "launch", "wait_snapshot": "create_snapshot",
              "volume_available": "create_volume"}


def short(task: str) -> str:
    return task.rsplit(".", 1)[-1]


def projected(steps: list[dict], upstream: dict[str, list[str]] | None, last: str) -> dict:
    """The RTO with the ``aws`` profile's real durations: every other task as long as it took in this run,
    each AWS wait ending when its transition (begun at the end of the step that started it) ends; the DAG
    scheduled ideally (a task starts when its upstreams end: no scheduler overhead, no poll delay), the
    sequential script in its order (``upstream`` None). A model on measured parts, not a measurement."""
    end: dict[str, float] = {}
    now = 0.0
    for s in sorted(steps, key=lambda s: s["t_start"]):  # start order is a topological order
        task = s["task"]
        start = now if upstream is None else max((end[u] for u in upstream[task] if u in end), default=0.0)
        if short(task) in AWS_WAITS:
            began = next(e for t, e in end.items() if short(t) == STARTED_BY[short(task)])
            end[task] = max(start, began + AWS_WAITS[short(task)])
        else:
            end[task] = start + s["seconds"]
        now = end[task]
    path = [last]  # the projected critical path: back from the last task through the upstream that ended last
    while upstream is not None and (ups := [u for u in upstream[path[-1]] if u in end]):
        path.append(max(ups, key=end.get))
    return {"projected_unscaled_s": round(end[last], 1),
            "projected_path": ([f"{t} (ends {end[t]:.0f})" for t in path[::-1]] if upstream is not None
                               else "every step, in order")}


def figures(rto: float, steps: list[dict], path: list[str], scale: float, upstream: dict | None) -> dict:
    aws = sum(AWS_WAITS.get(short(t), 0.0) for t in path)
    last = "verify.in_sync" if upstream is not None else "in_sync"
    return path_figures(rto, steps, path) | {
        "aws_part_scaled_s": round(aws * scale, 2), "aws_part_unscaled_s": aws,
        "non_scaling_s": round(rto - aws * scale, 2),
        **projected(steps, upstream, last)}


def upstream_map(dag) -> dict[str, list[str]]:
    return {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks}


def once(variant: str, scale: float) -> dict:
    from cellkit import AirflowRunner, Cell

    with tempfile.TemporaryDirectory() as tmp:
        cell = Cell(Path(tmp) / "cell")
        cell.up()  # instant: the preparation (a first full snapshot of 4,000 GiB) is not what is measured
        try:
            with AirflowRunner(cell, Path(tmp) / "reports") as runner:
                for _ in range(2 if variant == "stuck" else 1):  # stuck: both PNs snapshotted before (rotation)
                    _, state, _ = runner.run("kaia_cn_maintenance")
                    assert state == "success", "maintenance failed"
                cell.cli("latency", "--profile", "aws", "--time-scale", str(scale))
                cell.break_(FAILED, "kill")
                if variant == "sequential":
                    import sequential_failover

                    result = sequential_failover.run(FAILED)
                    steps = result["timeline"]
                    return figures(result["rto_seconds"], steps, [s["task"] for s in steps], scale, None)
                conf = {"failed_cn": FAILED, "use_presnapshot": variant == "pretaken"}
                if variant in SLOW_STOP:
                    cell.fault("slow-stop:pn-aws-1", "--times", str(SLOW_STOP[variant]))
                    conf["snapshot_pn"] = "pn-aws-1"
                run_id, state, _ = runner.run(DAG, conf)
                assert state == "success", "failover failed"
                report = runner.report(DAG, run_id)
                steps = run_steps(DAG, run_id)
                dag = runner.dag(DAG)
                out = figures(report["rto_seconds"], steps, critical_path(dag, steps, "verify.in_sync"), scale,
                              upstream_map(dag))
                out["busy_s"] = round(sum(s["seconds"] for s in steps if s["task"] != "report"), 2)
                out["pn_stops"] = report["facts"].get("PN stops")
                return out
        finally:
            cell.down()


COLUMNS = [("rto_s", "RTO (s, scaled run)"), ("critical_path_s", "critical path (s)"), ("overhead_s", "overhead (s)"),
           ("idle_s", "of which idle (s)"), ("serialized_s", "of which serialized (s)"),
           ("aws_part_scaled_s", "AWS part scaled (s)"), ("aws_part_unscaled_s", "AWS part unscaled (s)"),
           ("non_scaling_s", "rest, not scaled (s)"), ("projected_unscaled_s", "projected RTO, real AWS durations (s)")]


def rescore() -> None:
    """Derive the figures again from the saved runs' task times (after a change to how they are derived)."""
    import os

    from airflow.dag_processing.dagbag import DagBag

    # the DAG's shape does not depend on it
    os.environ.setdefault("KAIA_HA_INVENTORY", str(REPO / "inventory.example.yaml"))
    upstream = upstream_map(DagBag(dag_folder=str(REPO / "dags" / f"{DAG}.py")).get_dag(DAG))
    bench = Bench.load("failover_rto")
    for label, res in bench.results.items():
        for r in res["runs"]:
            if r.get("ok"):
                path = [c.rsplit(" ", 1)[0] for c in r["critical_path"]]
                r |= figures(r["rto_s"], r["steps"], path, bench.params["time_scale"],
                             None if "sequential" in label else upstream)
    report(bench)


def report(bench: Bench) -> None:
    bench.finish(COLUMNS)
    for label, res in bench.results.items():
        ok = [r for r in res["runs"] if r.get("ok")]
        if ok:
            say(f"critical path, {label} (run 1): " + " -> ".join(ok[0]["critical_path"]))
            if isinstance(ok[0].get("projected_path"), list):
                say("  projected with real AWS durations: " + " -> ".join(ok[0]["projected_path"]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--time-scale", type=float, default=0.02)
    parser.add_argument("--variants", default="pretaken,fresh,sequential")
    parser.add_argument("--rescore", action="store_true",
                        help="only derive the figures again from .artifacts/bench/failover_rto.json")
    args = parser.parse_args()
    if args.rescore:
        return rescore()
    bench = Bench("failover_rto",
                  params={"profile": "aws", "time_scale": args.time_scale, "runs": args.runs, "failed_cn": FAILED},
                  notes=["dag.test() runs one task at a time (deferred sensors' triggers inline); only "
                         "reschedule-mode sensors (volume_available, in_sync) let other tasks run while they wait. "
                         "A scheduler with workers overlaps the launch and chain-data branches for real.",
                         "Only the AWS transitions scale; Airflow, SSH, the nodes and the 5 s sensor poll do not."])
    labels = {"pretaken": "DAG, pre-taken snapshot", "fresh": "DAG, fresh snapshot",
              "sequential": "docs' order by hand (sequential)",
              "slowstop": "DAG, fresh snapshot, kpnd needs 15 s to stop",
              "stuck": "DAG, fresh snapshot, kpnd needs 90 s to stop (past the 60 s limit)"}
    for variant in args.variants.split(","):
        say(f"failover_rto: {labels[variant]}, aws profile x{args.time_scale}, {args.runs} runs")
        bench.repeat(labels[variant], args.runs, once, variant, args.time_scale)
    report(bench)


if __name__ == "__main__":
    main()
