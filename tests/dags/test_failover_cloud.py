"""The cloud failover against the simulated core cell: the replacement is the validator, nothing else is."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from leakscan import LeakScan

DAG_ID = "kaia_cn_failover_cloud"


@pytest.fixture(scope="module")
def leak_scan(own_cell_airflow):
    """Built before the failover: it learns the keys from the hosts and watches the run's command lines."""
    cell, runner = own_cell_airflow
    return LeakScan(cell, runner)


@pytest.fixture(scope="module")
def failover(own_cell_airflow, leak_scan):
    cell, runner = own_cell_airflow
    before = {n["name"]: n for n in cell.status()["nodes"]}
    cell.break_("cn-aws-1", "kill")
    cell.fault("stuck-stop:cn-aws-1")  # its stop hangs: the fence must repeat it with Force
    saved = os.environ.get("KAIA_HA_FORCE_STOP_AFTER_SECONDS")
    os.environ["KAIA_HA_FORCE_STOP_AFTER_SECONDS"] = "3"
    try:
        with leak_scan.watch():
            run_id, state, states = runner.run(DAG_ID, {"failed_cn": "cn-aws-1"})
    finally:
        os.environ.pop("KAIA_HA_FORCE_STOP_AFTER_SECONDS") if saved is None else os.environ.update(
            KAIA_HA_FORCE_STOP_AFTER_SECONDS=saved)
    return cell, runner, before, run_id, state, states


def test_happy_path_replacement_is_the_validator_with_its_ip(failover):
    cell, runner, before, run_id, state, states = failover
    assert state == "success", {k: v for k, v in states.items() if v[0] != "success"}
    status = cell.status()
    old = before["cn-aws-1"]
    live = [n for n in status["nodes"] if n["node_id"] == old["node_id"] and n["running"]]
    assert len(live) == 1 and live[0]["instance_id"] != old["instance_id"]
    assert live[0]["peer_count"].get("pn", 0) == 2 and live[0]["peer_count"].get("cn", 0) > 0
    assert live[0]["ip"] == old["ip"]  # the Elastic IP moved
    assert status["network_head"] - live[0]["block_height"] <= 5
    assert status["double_signing_events"] == []
    ec2 = cell.client("ec2")
    failed = ec2.describe_instances(InstanceIds=[old["instance_id"]])["Reservations"][0]["Instances"][0]
    assert failed["State"]["Name"] == "stopped"
    report = runner.report(DAG_ID, run_id)
    assert report["ok"] and report["rto_seconds"] > 0
    timeline = [s["task"] for s in report["timeline"]]
    assert timeline[0] == "preflight" and timeline[-2:] == ["verify.in_sync", "verify.record_placement"]
    assert {"fence.wait_stopped", "launch.wait_running", "replace.install_keys"} <= set(timeline)  # operators too
    fence = report["facts"]["fence stop"]
    assert fence.startswith("without the OS shutdown (SkipOsShutdown); stopped after") and "Force used" in fence
    assert cell.ssh("cn-aws-1", "true", check=False).returncode == 255  # the fenced host is down


def test_the_replacement_disk_holds_only_chaindata_and_the_keys(failover):
    cell, runner, before, run_id, *_ = failover
    report = runner.report(DAG_ID, run_id)
    new = report["facts"]["replacement instance"]
    listing = cell.ssh("cn-aws-1", "sudo find /var/kcnd/data -maxdepth 2 -not -path '*/chaindata/*' | sort",
                       instance_id=new).stdout.split()
    assert "/var/kcnd/data/static-nodes.json" not in listing and "/var/kcnd/data/nodekey" not in listing
    assert {"/var/kcnd/data/klay/chaindata", "/var/kcnd/data/klay/nodekey",
            "/var/kcnd/data/klay/bls-nodekey"} <= set(listing)
    assert cell.ssh("cn-aws-1", "stat -c %a /var/kcnd/data/klay/nodekey", instance_id=new).stdout.strip() == "600"


def test_the_keys_never_leak(failover, leak_scan):
    """The nodekey and bls-nodekey are nowhere but on the hosts and in Secrets Manager: not in task logs,
    XComs or rendered fields (the metadata DB), command lines, reports, or the AWS call log."""
    scanned = leak_scan.assert_clean()
    assert scanned["keys"] >= 4 and scanned["command lines"] > 0


def test_the_iam_policy_covers_every_aws_call_the_dags_made(failover):
    """The generated policy (what the code declares) allows every action the maintenance and failover
    runs called, and the committed iam-policy.json is that policy."""
    from kaia_ha_airflow.iam import policy

    cell, *_ = failover
    made = {f"{c['service']}:{c['action']}" for c in cell.calls()[cell.seeded_calls:]}
    generated = policy()
    allowed = {a for statement in generated["Statement"] for a in statement["Action"]}
    assert {"ec2:RunInstances", "ec2:AssociateAddress", "secretsmanager:GetSecretValue"} <= made
    assert made - allowed == set(), "declare these IAM actions where the code calls them"
    committed = json.loads((Path(__file__).resolve().parents[2] / "iam-policy.json").read_text())
    assert committed == generated, "regenerate: python -m kaia_ha_airflow.iam > iam-policy.json"


def _xcom(run_id: str, task_id: str):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = XComModel.get_many(run_id=run_id, key="return_value", task_ids=task_id, dag_ids=DAG_ID)
        row = session.scalars(query).one()
        return XComModel.deserialize_value(row)


def test_a_replacement_the_other_validators_refuse_is_not_in_sync(failover):
    """PNs keep handing blocks to a CN the other validators refuse: its head rises, it is not syncing, yet it is not
    in consensus. The sync check wants CN peers too, as on bare metal (it waits, it does not pass)."""
    from kaia_ha import failover_cloud as steps

    cell, runner, _, run_id, *_ = failover
    plan, host = _xcom(run_id, "preflight"), _xcom(run_id, "launch.wait_running")
    assert steps.in_sync(plan, host) is not None  # accepted by all: in sync
    cell.fault("isolate:cc-cloud")  # the other operators' CNs drop it (their allowlists lost its IP, say)
    try:
        cell.wait_for(lambda: not cell.node(host["new_instance_id"])["peer_count"].get("cn"), timeout=10,
                      what="the replacement to lose its CN peers")
        assert cell.node(host["new_instance_id"])["peer_count"].get("pn") == 2  # its PNs still serve it
        assert steps.in_sync(plan, host) is None
    finally:
        cell.fault("--clear")
    cell.wait_for(lambda: steps.in_sync(plan, host), timeout=20, what="in sync once accepted again")
