"""``python -m drill [--stay]``: a failover drill through the real Airflow, as an operator would run it.

A simulated core cell and Airflow (api-server, scheduler, dag-processor, triggerer) in a folder of their
own; ``kaia_cn_maintenance`` through the REST API (key backup, CN image, PN snapshot); the active CN
``cn-aws-1`` killed; ``kaia_cn_failover_cloud`` triggered through the REST API and followed phase by phase;
the report printed. Then the Active-Standby scheme: the bare-metal ``cn-metal-a`` killed and
``kaia_cn_failover_standby`` promotes its standby (``--cloud-only`` skips it). Exit status 0 only if every run
succeeded. ``--executor celery`` runs it all on the Celery engine (PostgreSQL, Redis, two workers).
``--stay`` (``make demo``) then keeps the UI up with its address and login until Ctrl-C.

``--watchdog``: the failover is not triggered by hand. ``kaia_cn_watchdog`` runs back to back (as its
every-minute schedule would), judges the CN dead and opens ``kaia_cn_failover_approval``; the drill approves
through the REST API at once (the UI's *Required actions*) and follows the failover it starts: the time from the
break to the validator in sync with one approval.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

from drill.engine import EXECUTORS, REPO, AirflowEngine, EngineError
from drill.incident import APPROVAL, WATCHDOG, asked, epoch, synced_at, watch_until_dead

sys.path.insert(0, str(REPO / "tests"))
from cellkit import Cell  # noqa: E402  (the cell's command line, shared with the tests)

MAINTENANCE = "kaia_cn_maintenance"
FAILOVER = "kaia_cn_failover_cloud"
FAILED_CN = "cn-aws-1"
STANDBY_FAILOVER = "kaia_cn_failover_standby"
FAILED_METAL_CN = "cn-metal-a"
PHASES = ("preflight", "fence", "chain_data", "launch", "replace", "verify", "report")


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def say(text: str = "") -> None:
    print(text, flush=True)


class Progress:
    """Prints each task's state changes, grouped by phase (the DAG's task groups), with time since trigger."""

    def __init__(self, started: float):
        self.started = started
        self.seen: dict[str, str] = {}

    @staticmethod
    def phase(task_id: str) -> str:
        head = task_id.split(".")[0]
        return head if head in PHASES else "preflight" if head == "not_dry_run" else head

    def __call__(self, task_instances: list[dict]) -> None:
        for ti in sorted(task_instances, key=lambda t: (PHASES.index(self.phase(t["task_id"]))
                                                        if self.phase(t["task_id"]) in PHASES else 99,
                                                         t["task_id"])):
            key = f"{ti['task_id']}[{ti['map_index']}]" if ti["map_index"] >= 0 else ti["task_id"]
            state = ti["state"] or "none"
            if self.seen.get(key) != state:
                if state != "none":
                    tries = f" (try {ti['try_number']})" if ti["try_number"] > 1 else ""
                    say(f"  {time.monotonic() - self.started:7.1f}s  {self.phase(ti['task_id']):<10} {key:<45} "
                        f"{state}{tries}")
                self.seen[key] = state


def run_dag(engine: AirflowEngine, dag_id: str, conf: dict | None, timeout: float) -> tuple[str, str]:
    started = time.monotonic()
    run_id = engine.trigger(dag_id, conf)
    say(f"{dag_id}: triggered {run_id} conf={conf or {}}")
    state = engine.wait(dag_id, run_id, timeout, on_progress=Progress(started))
    say(f"{dag_id}: {state.upper()} after {time.monotonic() - started:.1f}s; tasks ran on "
        + ", ".join(f"{host} ({n})" for host, n in engine.hosts(dag_id, run_id).items()))
    return run_id, state


def report_text(engine: AirflowEngine, dag_id: str, run_id: str) -> str:
    """The Markdown report of the run as the operator reads it (the Report tab's app); else the report task's log."""
    try:
        return engine.report(dag_id, run_id)
    except EngineError as exc:
        say(f"(no report in the store: {exc})")
    report = next((t for t in engine.task_instances(dag_id, run_id) if t["task_id"] == "report"), None)
    if report and report["try_number"]:
        return engine.log(dag_id, run_id, "report", report["try_number"])
    return "(no report)"


def approved_failover(engine: AirflowEngine, broken: float, conf: dict) -> tuple[str, str]:
    """The watchdog notices, asks, and the drill approves at once; the failover run it starts, followed."""
    watch, approval = watch_until_dead(engine, FAILED_CN)
    question = asked(engine, approval)
    say(f"{WATCHDOG}: {FAILED_CN} judged dead by {watch}; {epoch(question['created_at']) - broken:.1f}s after the "
        f"break {APPROVAL} {approval} asks \"{question['subject']}\"")
    engine.respond(APPROVAL, approval, "approve", "Approve")
    say("  approved through the REST API (Required actions)")
    run_id = f"approved__{approval}"
    deadline = time.monotonic() + 120
    while run_id not in engine.runs(FAILOVER):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{APPROVAL} {approval} was approved but {FAILOVER} {run_id} never started")
        time.sleep(0.5)
    run = engine.run(FAILOVER, run_id)
    if run["conf"] != conf:
        raise RuntimeError(f"{FAILOVER} {run_id} started with {run['conf']}, not {conf}")
    started = time.monotonic()
    say(f"{FAILOVER}: started {run_id} conf={run['conf']}")
    state = engine.wait(FAILOVER, run_id, 3600, on_progress=Progress(started))
    say(f"{FAILOVER}: {state.upper()} after {time.monotonic() - started:.1f}s")
    return run_id, state


def drill(engine: AirflowEngine, cell: Cell, profile: str = "instant", time_scale: float = 1.0, fresh: bool = False,
          watchdog: bool = False, stuck_stop: bool = False, metal: bool = True) -> bool:
    for dag_id in (MAINTENANCE, FAILOVER, *((WATCHDOG, APPROVAL) if watchdog else ())):
        engine.unpause(dag_id)
    say("\n== 1. Maintenance: key backup, CN image, PN snapshot")
    _, state = run_dag(engine, MAINTENANCE, None, timeout=900)
    if state != "success":
        return False
    if profile != "instant":  # the cell was kept in instant time; the incident runs at AWS's pace
        cell.cli("latency", "--profile", profile, "--time-scale", str(time_scale))
        say(f"\n   AWS latency from now on: {profile} profile x{time_scale}")
    say(f"\n== 2. Incident: {FAILED_CN} killed" + (" (and its stop will hang until Force)" if stuck_stop else ""))
    if stuck_stop:
        cell.fault(f"stuck-stop:{FAILED_CN}")
    broken = time.time()
    cell.break_(FAILED_CN, "kill")
    say(f"  {FAILED_CN} running: {cell.node(FAILED_CN)['running']}")
    say(f"\n== 3. Failover: {FAILOVER} (phases: {', '.join(PHASES)})")
    if watchdog:
        run_id, state = approved_failover(engine, broken, {"failed_cn": FAILED_CN})
        if (synced := synced_at(engine, FAILOVER, run_id)) is not None:
            say(f"BREAK TO SYNCED (watchdog, one approval): {synced - broken:.1f} s")
    else:
        conf = {"failed_cn": FAILED_CN} | ({"use_presnapshot": False} if fresh else {})
        run_id, state = run_dag(engine, FAILOVER, conf, timeout=3600)
    say("\n== 4. Report\n")
    say(report_text(engine, FAILOVER, run_id))
    if state != "success" or not metal:
        return state == "success"
    return metal_failover(engine, cell)


def metal_failover(engine: AirflowEngine, cell: Cell) -> bool:
    """The Active-Standby scheme: the bare-metal active's kcnd dies (the host still answers, so the fence needs no
    approval); the standby takes its identity and floating IP."""
    engine.unpause(STANDBY_FAILOVER)
    say(f"\n== 5. Incident: {FAILED_METAL_CN} (bare metal) killed")
    cell.break_(FAILED_METAL_CN, "kill")
    say(f"\n== 6. Failover: {STANDBY_FAILOVER}")
    run_id, state = run_dag(engine, STANDBY_FAILOVER, {"failed_cn": FAILED_METAL_CN}, timeout=1800)
    say("\n== 7. Report\n")
    say(report_text(engine, STANDBY_FAILOVER, run_id))
    return state == "success"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drill", description=__doc__.splitlines()[0])
    parser.add_argument("--stay", action="store_true", help="keep the UI up after the drill until Ctrl-C (make demo)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("KAIA_HA_DEMO_PORT", "0")) or None,
                        help="the UI's port (default: 8080 with --stay if free, else any free port)")
    parser.add_argument("--keep", action="store_true", help="keep the drill's folder (Airflow home, logs, reports)")
    parser.add_argument("--profile", choices=("instant", "aws"), default="instant",
                        help="AWS latency during the incident (aws: instances pending 30 s, stopping 60 s, snapshots "
                             "300 s...)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="with --profile aws: 1 is AWS's own pace")
    parser.add_argument("--fresh", action="store_true",
                        help="fail over from a fresh PN snapshot instead of the pre-taken one")
    parser.add_argument("--stuck-stop", action="store_true",
                        help="the failed instance's stop hangs in 'stopping' until a stop with Force")
    parser.add_argument("--watchdog", action="store_true",
                        help="the watchdog notices and asks, the drill approves (instead of triggering the failover)")
    parser.add_argument("--cloud-only", action="store_true",
                        help="skip the bare-metal failover (cn-metal-a to its standby) after the cloud one")
    parser.add_argument("--executor", choices=EXECUTORS, default=os.environ.get("KAIA_HA_EXECUTOR") or "local",
                        help="local: airflow standalone on SQLite; celery: PostgreSQL, Redis and two Celery workers "
                             "(what docker-compose.yaml deploys)")
    args = parser.parse_args(argv)
    if args.watchdog and args.fresh:
        parser.error("--watchdog starts the failover with its defaults (the pre-taken snapshot): drop --fresh")
    if args.stay and not args.port and port_free(8080):
        args.port = 8080  # the address an operator expects for a demo

    work = Path(tempfile.mkdtemp(prefix="kaia-drill-"))
    cell, engine, ok = Cell(work / "simcell"), None, False
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below on kill too
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C, also when started in the background
    began = time.monotonic()
    try:
        say(f"drill: simulated core cell in {work / 'simcell'}")
        cell.up()
        engine = AirflowEngine(work / "airflow", cell.engine_env(), port=args.port, executor=args.executor)
        say(f"drill: starting Airflow ({engine.executor} engine) at {engine.url} (logs: {engine.home}/*.log)")
        engine.start()
        say(f"drill: Airflow up after {time.monotonic() - began:.0f}s")
        ok = drill(engine, cell, args.profile, args.time_scale, args.fresh, args.watchdog, args.stuck_stop,
                   metal=not args.cloud_only)
        say(f"\ndrill: {'PASSED' if ok else 'FAILED'} in {time.monotonic() - began:.0f}s")
        if args.stay:
            user, password = engine.login()
            say(f"\n  Airflow UI:  {engine.url}\n  Login:       {user} / {password}\n  Simulated core cell: "
                f"SIMCELL_DIR={cell.state_dir} python -m simcell status\n\nCtrl-C stops everything.")
            while engine.alive():
                time.sleep(1)
    except KeyboardInterrupt:
        say()
    finally:
        say("drill: stopping Airflow and the simulated core cell")
        if engine:
            engine.stop()
        cell.down()
        if not args.keep and ok:
            shutil.rmtree(work, ignore_errors=True)
        elif not ok:
            say(f"drill: logs and reports kept in {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
