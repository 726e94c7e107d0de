"""Cloud failover drills: bad input refused before any change, a dry run, unsafe fencing refused,
and AWS/SSH faults at every kind of step ending in success with nothing made twice."""

from __future__ import annotations

import pytest

DAG_ID = "kaia_cn_failover_cloud"


def mutating_calls(cell, since: int) -> list[str]:
    read_only = ("Describe", "Get", "List", "Publish")
    return [c["action"] for c in cell.calls()[since:] if not c["action"].startswith(read_only) and not c["dry_run"]]


def test_bad_params_are_refused_before_anything_changes(own_cell_airflow):
    cell, runner = own_cell_airflow
    since = len(cell.calls())
    with pytest.raises(Exception, match="failed_cn"):
        runner.run(DAG_ID, {"failed_cn": "cn-nope"})
    with pytest.raises(Exception, match="warmup"):
        runner.run(DAG_ID, {"failed_cn": "cn-aws-1", "warmup": "turbo"})
    # The form refuses what it knows is wrong; a misspelt key (via REST or the CLI) reaches the preflight,
    # which fails the run saying so: a typo must not mean "not a dry run".
    run_id, state, states = runner.run(DAG_ID, {"failed_cn": "cn-aws-1", "dryrun": True})
    assert state == "failed" and states[("preflight", -1)] == ("failed", 1)
    outcome = next(r["outcome"] for r in runner.report(DAG_ID, run_id)["timeline"] if r["task"] == "preflight")
    assert "dryrun: not a parameter of this DAG" in outcome
    assert mutating_calls(cell, since) == []


def test_a_dry_run_checks_permissions_and_changes_nothing(own_cell_airflow):
    cell, runner = own_cell_airflow
    since = len(cell.calls())
    run_id, state, states = runner.run(DAG_ID, {"failed_cn": "cn-aws-1", "dry_run": True})
    assert state == "success"
    assert states[("launch.launch", -1)][0] == "skipped"
    assert mutating_calls(cell, since) == []
    dry = {c["action"] for c in cell.calls()[since:] if c["dry_run"]}
    assert {"RunInstances", "AssociateAddress", "StopInstances", "CreateVolume", "AttachVolume", "CreateTags"} <= dry
    plan = runner.report(DAG_ID, run_id)
    assert plan["ok"] and plan["dry_run"]
    assert cell.node("cn-aws-1")["running"]


def test_fencing_off_with_the_failed_cn_still_running_is_refused(own_cell_airflow):
    cell, runner = own_cell_airflow
    run_id, state, states = runner.run(DAG_ID, {"failed_cn": "cn-aws-1", "fence": False})
    assert state == "failed"
    assert states[("fence.fence", -1)][0] == "failed"
    start = states[("verify.start_kcnd", -1)][0]
    assert start in ("upstream_failed", "skipped")
    assert cell.status()["double_signing_events"] == []
    assert cell.node("cn-aws-1")["running"]  # nothing touched the live CN
    # The run launched a replacement beside the refused fence, and it may hold the key: triggering again (even a
    # dry run) is refused until the operator goes on with that run or stops the instance.
    ec2 = cell.client("ec2")
    left = [i["InstanceId"]
            for r in ec2.describe_instances(Filters=[{"Name": "tag:kaia:run-id", "Values": [run_id]}])["Reservations"]
            for i in r["Instances"] if i["State"]["Name"] in ("pending", "running")]
    assert len(left) == 1
    again, state, states = runner.run(DAG_ID, {"failed_cn": "cn-aws-1", "dry_run": True})
    assert state == "failed" and states[("preflight", -1)] == ("failed", 1)
    outcome = next(r["outcome"] for r in runner.report(DAG_ID, again)["timeline"] if r["task"] == "preflight")
    assert f"already has a replacement from an earlier run that is not stopped: {left[0]}" in outcome, outcome
    ec2.stop_instances(InstanceIds=left)
    ec2.get_waiter("instance_stopped").wait(InstanceIds=left, WaiterConfig={"Delay": 0.5})


def test_faults_at_every_step_end_in_one_replacement_and_a_running_pn(own_cell_airflow):
    cell, runner = own_cell_airflow
    old = cell.node("cn-aws-1")
    cell.break_("cn-aws-1", "stop-instance")
    for action, kind, times in (("RunInstances", "drop", 1), ("CreateVolume", "drop", 1),
                                ("AssociateAddress", "throttle", 2), ("CreateSnapshot", "drop", 1),
                                ("GetConsoleOutput", "server-error", 1), ("ssh:pn-aws-1", "drop", 1)):
        cell.fault(action, "--kind", kind, "--times", str(times))
    run_id, state, states = runner.run(DAG_ID, {"failed_cn": "cn-aws-1", "use_presnapshot": False,
                                                "snapshot_pn": "pn-aws-1"})
    assert state == "success", {k: v for k, v in states.items() if v[0] != "success"}
    ec2 = cell.client("ec2")
    by_run = [{"Name": "tag:kaia:run-id", "Values": [run_id]}]
    instances = [i for r in ec2.describe_instances(Filters=by_run)["Reservations"] for i in r["Instances"]]
    assert len(instances) == 1
    assert len(ec2.describe_volumes(Filters=by_run)["Volumes"]) == 1
    assert len(ec2.describe_snapshots(OwnerIds=["self"], Filters=by_run)["Snapshots"]) == 1
    assert cell.status()["pending_faults"]["aws"] == {}
    pns = [n for n in cell.status()["nodes"] if n["service"] == "kpnd"]
    assert all(n["running"] for n in pns)
    live = [n for n in cell.status()["nodes"] if n["node_id"] == old["node_id"] and n["running"]]
    assert len(live) == 1 and live[0]["instance_id"] == instances[0]["InstanceId"]
    assert cell.status()["double_signing_events"] == []
    assert runner.report(DAG_ID, run_id)["facts"]["chain data snapshot"].split()[1] == "(fresh;"
