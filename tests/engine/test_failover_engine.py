"""The cloud failover through the real scheduler, executor and triggerer, driven and checked through the
REST API as an operator does from the UI: the run, every task's state and try, the logs, the report.

The failover starts the way it does at 3 a.m.: the CN is killed, ``kaia_cn_watchdog`` judges it dead and opens
``kaia_cn_failover_approval``, and the operator approves through the REST API (the UI's *Required actions*).
A rejected approval starts nothing.

An SSH session to the snapshot's PN is dropped once during the run: the preflight must fail on it, be
retried by the scheduler and pass, and the first try's log must say why it failed."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import pytest

from cellkit import Cell
from drill.engine import WORKERS, AirflowEngine, EngineError
from drill.incident import APPROVAL, WATCHDOG, asked, epoch, synced_at, watch_until_dead

from .conftest import EXECUTOR, TIMES
from .enginekit import FAILOVER, MAINTENANCE, keys_of

FRESH_SNAPSHOT = {f"chain_data.fresh_snapshot.{t}"
                  for t in ("reserve_pn", "stop_kpnd", "create_snapshot", "start_kpnd", "wait_snapshot")}
RAN = {"preflight", "not_dry_run", "fence.fence", "fence.wait_stopped", "fence.confirm_fenced", "fence.defuse",
       "chain_data.chaindata_source",
       "chain_data.chaindata_snapshot", "chain_data.create_volume", "chain_data.volume_available", "launch.launch",
       "launch.wait_running", "replace.attach_and_mount", "replace.prune", "replace.install_keys",
       "verify.move_ip", "verify.start_kcnd", "verify.in_sync", "verify.record_placement", "report"}


# Deferring tasks: Airflow 3.3 may count one extra try when the trigger fires before the scheduler has
# processed the deferring try's exit (a stale executor event; apache/airflow#71580, #72716). Every other
# task must have run exactly once.
DEFERRING = {"chain_data.volume_available"}


def ran_once(task_id: str, try_number: int) -> bool:
    return try_number == 1 or (task_id in DEFERRING and try_number == 2)


def snapshot_source_pn(cell) -> str:
    """The PN whose pre-taken snapshot the failover will use (its preflight reads that PN's flags over SSH)."""
    snapshots = cell.client("ec2").describe_snapshots(OwnerIds=["self"])["Snapshots"]
    tagged = [(s["StartTime"], {t["Key"]: t["Value"] for t in s.get("Tags", [])}) for s in snapshots]
    return max((when, tags["kaia:node"]) for when, tags in tagged if tags.get("kaia:node", "").startswith("pn-"))[1]


@pytest.fixture(scope="module")
def failover(maintained):
    """The operator's path end to end: the CN dies, the watchdog notices and asks, the operator approves through
    the REST API (the UI's *Required actions*), the approved failover runs."""
    engine, cell = maintained.engine, maintained.cell
    assert maintained.maintenance_state == "success"
    for dag_id in (WATCHDOG, APPROVAL):
        engine.unpause(dag_id)
    before = cell.node("cn-aws-1")
    broken = time.time()
    cell.break_("cn-aws-1", "kill")
    watch, approval = watch_until_dead(engine, "cn-aws-1")
    question = asked(engine, approval)
    TIMES["break to approval"] = epoch(question["created_at"]) - broken  # when it was asked, not answered
    pn = snapshot_source_pn(cell)  # the cloud cell's watch has ended (dead): the fault below is the preflight's
    cell.fault(f"ssh:{pn}", "--kind", "drop", "--times", "1")
    answered = engine.respond(APPROVAL, approval, "approve", "Approve")
    assert engine.wait(APPROVAL, approval, timeout=120) == "success"
    run_id = f"approved__{approval}"
    state = engine.wait(FAILOVER, run_id, timeout=600)
    tis = {t["task_id"]: (t["state"], t["try_number"]) for t in engine.task_instances(FAILOVER, run_id)}
    assert engine.wait(WATCHDOG, watch, timeout=180) == "success"
    if (synced := synced_at(engine, FAILOVER, run_id)) is not None:
        TIMES["break to synced"] = synced - broken
    return Failover(engine, cell, before, pn, run_id, state, tis, approval, question, answered)


@dataclass
class Failover:
    engine: AirflowEngine
    cell: Cell
    before: dict
    pn: str
    run_id: str
    state: str
    tis: dict
    approval: str
    question: dict
    answered: dict


def test_a_rejected_approval_starts_nothing(maintained):
    """An approval asked for a healthy CN (as a watchdog would) and rejected through the REST API: the run ends,
    no failover starts."""
    engine = maintained.engine
    engine.unpause(APPROVAL)
    before = set(engine.runs(FAILOVER))
    conf = {"cell": "cc-cloud", "validator": "cn-aws-1", "failover_dag_id": FAILOVER,
            "evidence": "cn-aws-1: DEAD (test)", "auto_failover": False, "failover_conf": {"failed_cn": "cn-aws-1"}}
    run_id = engine.trigger(APPROVAL, conf)
    question = asked(engine, run_id)
    assert question["subject"] == "Fail over cn-aws-1 now?" and question["options"] == ["Approve", "Reject"]
    engine.respond(APPROVAL, run_id, "approve", "Reject")
    engine.wait(APPROVAL, run_id, timeout=120)
    states = {t["task_id"]: t["state"] for t in engine.task_instances(APPROVAL, run_id)}
    assert states["fail_over"] == "skipped" and states["record"] == "skipped", states
    assert set(engine.runs(FAILOVER)) == before


def test_the_approval_showed_the_evidence_and_started_the_failover_with_its_params(failover):
    engine, question, answered = failover.engine, failover.question, failover.answered
    assert question["subject"] == "Fail over cn-aws-1 now?"
    assert "kcnd is not running" in question["body"] and "failed_cn" in question["body"], question["body"]
    assert answered["chosen_options"] == ["Approve"]
    run = engine.run(FAILOVER, failover.run_id)
    assert run["conf"] == {"failed_cn": "cn-aws-1"}
    links = engine.task_instances(APPROVAL, failover.approval)
    assert {t["task_id"]: t["state"] for t in links}["record"] == "success"


def test_maintenance_ran_every_task_once(maintained):
    tis = maintained.engine.task_instances(MAINTENANCE, maintained.maintenance_run)
    assert maintained.maintenance_state == "success"
    assert {t["state"] for t in tis} <= {"success", "skipped"}
    assert all(ran_once(t["task_id"], t["try_number"]) for t in tis if t["state"] == "success"), tis
    assert "report" in {t["task_id"] for t in tis} and len(tis) >= 10


@pytest.mark.skipif(EXECUTOR != "celery", reason="one worker: airflow standalone")
def test_the_tasks_of_each_run_were_spread_over_both_celery_workers(maintained, failover):
    engine = failover.engine
    for dag_id, run_id in ((MAINTENANCE, maintained.maintenance_run), (FAILOVER, failover.run_id)):
        assert set(engine.hosts(dag_id, run_id)) == set(WORKERS), (dag_id, engine.hosts(dag_id, run_id))


def test_the_reports_are_in_the_durable_store_and_none_on_a_workers_disk(maintained, failover):
    """Several workers: a report on the disk of the worker that wrote it is lost to the operator. The Report tab's
    app reads them from the store (the cell's S3), and no worker kept a copy."""
    from kaia_ha.model.report_store import file_name

    engine, s3 = failover.engine, failover.cell.client("s3")
    for dag_id, run_id in ((MAINTENANCE, maintained.maintenance_run), (FAILOVER, failover.run_id)):
        stored = s3.get_object(Bucket="kaia-ha-state", Key=f"reports/{dag_id}/{file_name(run_id)}.md")
        assert stored["Body"].read().decode() == engine.report(dag_id, run_id)
    assert "Result: OK, validator back in sync" in engine.report(FAILOVER, failover.run_id)
    assert [p for p in engine.home.rglob("reports/*/*") if p.is_file()] == []


def test_the_task_logs_are_read_from_s3_where_the_workers_sent_them(failover):
    """Remote logging (the compose file's option (a)): a finished task's log is read from S3, not a worker's disk."""
    engine, s3 = failover.engine, failover.cell.client("s3")
    log = engine.log(FAILOVER, failover.run_id, "verify.in_sync", 1)
    assert "s3://kaia-ha-state/logs/" in log and "\"task_id\": \"verify.in_sync\"" in log, log[:600]
    listed = s3.list_objects_v2(Bucket="kaia-ha-state", Prefix=f"logs/dag_id={FAILOVER}/")
    assert listed["KeyCount"] >= len(RAN), listed["KeyCount"]


def test_failover_succeeds_with_one_retry_of_the_preflight(failover):
    state, tis = failover.state, failover.tis
    assert state == "success", {k: v for k, v in tis.items() if v[0] != "success"}
    assert set(tis) == RAN | FRESH_SNAPSHOT
    assert tis["preflight"] == ("success", 2)
    assert ({t: state for t, (state, _) in tis.items()}
            == {t: "success" for t in RAN} | {t: "skipped" for t in FRESH_SNAPSHOT})
    assert all(tis[t][1] == 0 for t in FRESH_SNAPSHOT)
    assert all(ran_once(t, tis[t][1]) for t in RAN - {"preflight"}), tis


def test_the_failed_try_log_shows_the_dropped_ssh(failover):
    engine, pn, run_id = failover.engine, failover.pn, failover.run_id
    first = engine.log(FAILOVER, run_id, "preflight", 1)
    assert "HostUnreachable" in first and pn in first
    second = engine.log(FAILOVER, run_id, "preflight", 2)
    assert "HostUnreachable" not in second and "Failover plan for cn-aws-1" in second


def test_the_report_log_has_the_timeline_and_rto(failover):
    engine, run_id = failover.engine, failover.run_id
    log = engine.log(FAILOVER, run_id, "report", 1)
    assert "Result: OK, validator back in sync" in log
    rto = float(re.search(r"RTO \(trigger to synced\): ([0-9.]+) s", log).group(1))
    assert 0 < rto < 600
    timeline = log[log.index("## Timeline"):]
    for task in ("preflight", "fence.fence", "chain_data.create_volume", "launch.launch", "replace.attach_and_mount",
                 "replace.install_keys", "verify.move_ip", "verify.in_sync"):
        assert f"| {task} |" in timeline, task
    assert re.search(r"\| preflight \| 2 \|", timeline)  # the retried try is the one in the timeline


def test_the_replacement_is_the_validator_with_its_ip(failover):
    cell, before = failover.cell, failover.before
    status = cell.status()
    live = [n for n in status["nodes"] if n["node_id"] == before["node_id"] and n["running"]]
    assert len(live) == 1 and live[0]["instance_id"] != before["instance_id"]
    assert live[0]["ip"] == before["ip"] and live[0]["peer_count"].get("pn", 0) >= 1
    assert status["double_signing_events"] == []
    assert status["pending_faults"]["ssh"] == {}  # the dropped session was the injected one


def test_no_key_in_any_task_log(maintained, failover):
    """Every try of every task of both runs, fetched through the API like the UI's log view; and every log
    file Airflow wrote (also the triggerer's)."""
    engine, cell = maintained.engine, maintained.cell
    keys = keys_of(cell)
    fetched = 0
    runs = ((MAINTENANCE, maintained.maintenance_run), (APPROVAL, failover.approval), (FAILOVER, failover.run_id))
    for dag_id, run_id in runs:
        for ti in engine.task_instances(dag_id, run_id):
            for attempt in range(1, ti["try_number"] + 1):
                try:
                    text = engine.log(dag_id, run_id, ti["task_id"], attempt, ti["map_index"])
                except EngineError as exc:  # the extra try of a deferring task has no history row (see DEFERRING)
                    assert ti["task_id"] in DEFERRING and "404" in str(exc), exc
                    continue
                assert text.strip(), f"{dag_id} {ti['task_id']} try {attempt}: empty log"
                fetched += 1
                for key in keys:
                    assert key not in text and key.upper() not in text, (
                        f"a key leaked into {ti['task_id']} try {attempt}")
    assert fetched >= 30
    files = [p for p in (engine.home / "logs").rglob("*") if p.is_file()]
    assert len(files) >= fetched
    for path in files:
        data = path.read_bytes()
        assert not any(key.encode() in data or key.upper().encode() in data
                       for key in keys), f"a key leaked into {path}"
