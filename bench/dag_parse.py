"""DAG file parse time of each file in dags/ against a trivial DAG file, measured in the same run.

    .venv/bin/python bench/dag_parse.py [--runs 5] [--warm 5]

Each measurement is a fresh Python process (so nothing the file imports is cached yet): it imports
Airflow's DagBag (timed apart: every file pays it, the dag-processor once), then parses the one file
with ``DagBag`` (cold), then parses it ``--warm`` times more in the same process (modules cached: what
a long-lived dag-processor pays on re-parse). Also per file, like ``airflow dags report``: the DagBag's
own duration, DAG count and task count. The project's DAGs read the inventory at parse time;
``inventory.example.yaml`` stands in for it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, Bench, say

TRIVIAL = '''\
from airflow.sdk import dag, task


@dag(schedule=None)
def trivial():
    @task
    def hello():
        return 1

    hello()


trivial()
'''


def child(path: str, warm: int) -> None:
    """One measurement, printed as JSON on the last line of stdout."""
    t0 = time.perf_counter()
    from airflow.dag_processing.dagbag import DagBag

    t1 = time.perf_counter()
    bag = DagBag(dag_folder=path)
    t2 = time.perf_counter()
    warms = []
    for _ in range(warm):
        t = time.perf_counter()
        DagBag(dag_folder=path)
        warms.append(time.perf_counter() - t)
    stat = bag.dagbag_stats[0]
    print(json.dumps({"import_s": t1 - t0, "cold_s": t2 - t1, "warm_s": statistics.median(warms) if warms else None,
                      "report_duration_s": stat.duration.total_seconds(), "dags": stat.dag_num, "tasks": stat.task_num,
                      "errors": {k: v[:300] for k, v in bag.import_errors.items()}}))


def measure(path: Path, warm: int) -> dict:
    env = dict(os.environ, KAIA_HA_INVENTORY=str(REPO / "inventory.example.yaml"))
    out = subprocess.run([sys.executable, __file__, "--child", str(path), "--warm", str(warm)], env=env,
                         capture_output=True,
                         text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-1000:])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["errors"]:
        raise RuntimeError(f"import errors: {result['errors']}")
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items() if k != "errors"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warm", type=int, default=5)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.warm)
    bench = Bench("dag_parse", params={"runs": args.runs, "warm_parses_per_run": args.warm},
                  notes=["cold: first DagBag parse of the file in a fresh process, after `from "
                         "airflow.dag_processing.dagbag import DagBag`",
                         "warm: median of the re-parses in the same process", "inventory: inventory.example.yaml"])
    with tempfile.TemporaryDirectory() as tmp:
        trivial = Path(tmp) / "trivial_dag.py"
        trivial.write_text(TRIVIAL)
        files = [trivial, *sorted((REPO / "dags").glob("*.py"))]
        for i in range(args.runs):  # interleaved, so a burst of load hits every file alike
            for path in files:
                bench.repeat(path.name, 1, measure, path, args.warm)
        say(f"dag_parse: {args.runs} runs of {len(files)} files done")
    trivial_cold = bench.stats("trivial_dag.py", "cold_s")["median"]
    for label, res in bench.results.items():
        for r in res["runs"]:
            if r.get("ok"):
                r["cold_minus_trivial_s"] = round(r["cold_s"] - trivial_cold, 4)
    bench.finish([("cold_s", "cold parse (s)"), ("cold_minus_trivial_s", "cold minus trivial's median (s)"),
                  ("warm_s", "warm parse (s)"),
                  ("report_duration_s", "DagBag duration, as `dags report` (s)"), ("tasks", "tasks"),
                  ("import_s", "import DagBag (s)")])


if __name__ == "__main__":
    main()
