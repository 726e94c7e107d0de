"""Time to detect a dead CN (``kaia_cn_watchdog``), and false alarms on a healthy cell with transient faults.

    .venv/bin/python bench/watchdog.py [--runs 1] [--ways kill,stop-instance,cut-ssh]
    .venv/bin/python bench/watchdog.py --soak MINUTES

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
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from pathlib import Path

from common import Bench, say

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
    """When the newest watchdog run's watch task of cc-cloud ended (the dead verdict)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        ti = session.query(TaskInstance).filter_by(dag_id=WATCH, task_id="cc-cloud.watch").order_by(
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--ways", default="kill,stop-instance,cut-ssh")
    parser.add_argument("--soak", type=float, metavar="MINUTES")
    args = parser.parse_args()
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
