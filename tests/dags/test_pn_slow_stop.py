"""A PN whose kpnd needs longer to stop than the inventory allows (``simcell fault slow-stop``): it is never killed,
it runs again, and the maintenance and the cloud failover go on with another PN or the pre-taken snapshot.

The limits are shortened (5 s a stop) so that a slow stop costs seconds here; the simulated node takes
``SLOW`` s to flush, so past the limit it is still flushing and finishes on its own.
"""

from __future__ import annotations

import pytest

FAILOVER, MAINTENANCE = "kaia_cn_failover_cloud", "kaia_cn_maintenance"
LIMITS = {"pn_stop_limit_seconds": 5, "pn_stop_budget_seconds": 60}
SLOW = "7"  # past the limit, and done within the limit again: the wait for the flush to end (bounded by it) sees it


def kpnds(cell) -> dict[str, bool]:
    nodes = cell.status()["nodes"]
    return {n["name"]: n["running"] for n in nodes if n["service"] == "kpnd" and n["cell"] == "cc-cloud"}


def never_killed(cell, pn: str) -> None:
    """Each SIGTERM this run sent ended in the node's own clean close, never in a kill."""
    log = cell.ssh(pn, "cat /var/log/kpnd/kpnd.out").stdout
    interrupts = log.count("Got interrupt")
    assert interrupts and log.count("Database closed") == interrupts, log[-2000:]


def run_snapshots(cell, run_id: str) -> list[dict]:
    by_run = [{"Name": "tag:kaia:run-id", "Values": [run_id]}]
    return cell.client("ec2").describe_snapshots(OwnerIds=["self"], Filters=by_run)["Snapshots"]


def tags(resource: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def stop_replacements(cell) -> None:
    """The validator's earlier replacement stopped: a next failover may begin (preflight refuses while one runs)."""
    ec2 = cell.client("ec2")
    live = [i["InstanceId"] for r in ec2.describe_instances(Filters=[
        {"Name": "tag:kaia:kind", "Values": ["replacement-cn"]},
        {"Name": "instance-state-name", "Values": ["pending", "running"]}])["Reservations"] for i in r["Instances"]]
    if live:
        ec2.stop_instances(InstanceIds=live)
        ec2.get_waiter("instance_stopped").wait(InstanceIds=live, WaiterConfig={"Delay": 0.5})


@pytest.fixture
def slow(own_cell_airflow):
    cell, runner = own_cell_airflow
    with cell.maintenance_settings("cc-cloud", **LIMITS):
        yield cell, runner
    cell.fault("--clear")
    cell.wait_for(lambda: all(kpnds(cell).values()), timeout=60, what="every PN running")


def test_maintenance_skips_a_pn_that_will_not_stop_with_an_alert_and_snapshots_the_next(slow):
    cell, runner = slow
    cell.fault("slow-stop:pn-aws-1", "--times", SLOW)
    with cell.maintenance_settings("cc-cloud", snapshot_pn="pn-aws-1", **LIMITS):
        run_id, state, states = runner.run(MAINTENANCE)
    assert state == "success", {k: v for k, v in states.items() if v[0] != "success"}
    assert states[("pn_snapshot.stop_and_snapshot", -1)] == ("success", 1)  # the skip is not a retry
    made = run_snapshots(cell, run_id)
    assert len(made) == 1 and tags(made[0])["kaia:node"] == "pn-aws-2" and tags(made[0])["kaia:clean-stop"] == "true"
    alerts = [c["params"] for c in cell.calls("Publish")]
    subject = "[kaia-ha] PN pn-aws-1 of cc-cloud did not stop cleanly"
    assert any(a.get("Subject", "").startswith(subject) for a in alerts)
    report = runner.report(MAINTENANCE, run_id)
    snap = next(c for c in report["cells"] if c["cell"] == "cc-cloud")["pn_snapshot"]
    assert snap["pn"] == "pn-aws-2" and [s["pn"] for s in snap["skipped"]] == ["pn-aws-1"]
    assert "did not stop on its own within 5 s" in snap["skipped"][0]["why"]
    assert all(kpnds(cell).values())
    never_killed(cell, "pn-aws-1")


def test_a_failover_whose_pn_will_not_stop_goes_through_the_next_pn(slow):
    cell, runner = slow
    stop_replacements(cell)
    cell.fault("slow-stop:pn-aws-1", "--times", SLOW)
    conf = {"failed_cn": "cn-aws-1", "use_presnapshot": False, "snapshot_pn": "pn-aws-1"}
    run_id, state, states = runner.run(FAILOVER, conf)
    assert state == "success", {k: v for k, v in states.items() if v[0] != "success"}
    made = run_snapshots(cell, run_id)
    assert len(made) == 1 and tags(made[0])["kaia:node"] == "pn-aws-2"
    facts = runner.report(FAILOVER, run_id)["facts"]
    assert facts["chain data snapshot"].startswith(f"{made[0]['SnapshotId']} (fresh;")
    assert facts["PN stops"].startswith("pn-aws-1: skipped (did not stop on its own within 5 s")
    assert "pn-aws-2: stopped cleanly" in facts["PN stops"]
    assert all(kpnds(cell).values())
    never_killed(cell, "pn-aws-1")


def test_a_failover_where_no_pn_stops_uses_the_older_pretaken_snapshot_and_warns(slow):
    cell, runner = slow
    stop_replacements(cell)
    pretaken = [s for s in cell.client("ec2").describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": "tag:kaia:kind", "Values": ["pn-chaindata"]}, {"Name": "tag:kaia:clean-stop", "Values": ["true"]},
        {"Name": "tag:kaia:cell", "Values": ["cc-cloud"]}])["Snapshots"] if s["State"] == "completed"]
    newest = max(pretaken, key=lambda s: s["StartTime"])
    for pn in ("pn-aws-1", "pn-aws-2"):
        cell.fault(f"slow-stop:{pn}", "--times", SLOW)
    run_id, state, states = runner.run(FAILOVER, {"failed_cn": "cn-aws-1", "use_presnapshot": False})
    assert state == "success", {k: v for k, v in states.items() if v[0] != "success"}
    assert states[("chain_data.fresh_snapshot.stop_kpnd", -1)][0] == "skipped"
    assert run_snapshots(cell, run_id) == []  # no fresh snapshot: none of a PN that did not stop cleanly
    report = runner.report(FAILOVER, run_id)
    assert report["facts"]["chain data snapshot"].startswith(f"{newest['SnapshotId']} (pre-taken fallback;")
    warning = report["facts"]["WARNING"]
    assert "no PN stopped cleanly" in warning and " h old" in warning and "blocks to catch up" in warning
    assert "pn-aws-1: did not stop on its own" in warning and "pn-aws-2: did not stop on its own" in warning
    assert all(kpnds(cell).values())
    for pn in ("pn-aws-1", "pn-aws-2"):
        never_killed(cell, pn)


class Try:
    """The task-instance members the stop and start use, for a retry (the rest is real: SSH to the cell)."""

    def __init__(self, try_number: int):
        self.try_number, self.xcom = try_number, {}

    def xcom_push(self, key, value):
        self.xcom[key] = value

    def xcom_pull(self, task_ids, key, default=None):
        return self.xcom.get(key, default)


def test_a_retry_after_a_lost_answer_keeps_the_earlier_tries_stop_and_starts_that_pn(slow):
    """The first try's SIGTERM went out and its answer was lost while kpnd still flushed: the retry waits for that
    stop, snapshots that PN (no second PN down), and the teardown starts it."""
    from kaia_ha import pn

    cell, _ = slow
    cell.fault("slow-stop:pn-aws-1", "--times", "2")
    cell.ssh("pn-aws-1", "sudo systemctl kill --signal=SIGTERM kpnd")  # what the first try did
    retry = Try(2)
    stopped = pn.stop_pn("cc-cloud", "pn-aws-1", ti=retry, tags={})
    assert stopped["pn"] == "pn-aws-1" and stopped["attempts"][0]["why"] == "by an earlier try of this task"
    assert kpnds(cell) == {"pn-aws-1": False, "pn-aws-2": True}
    assert pn.start_pn("cc-cloud", ti=retry, stop_task="stop_kpnd")["pns"] == ["pn-aws-1"]
    assert all(kpnds(cell).values())
    never_killed(cell, "pn-aws-1")
