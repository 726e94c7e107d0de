"""Drills: one step of the cloud failover skipped or done wrong, and the DAG itself must catch it.

Each drill replaces one step function (the DAG looks it up at run time) with a careless version, runs
the real DAG against the simulated core cell, and checks what the operator would read: the run failed,
at the step that found the problem, and the report says what is wrong. Nothing double-signs meanwhile.
The drills share one cell: after each, the run's replacement is stopped, as an operator would before
trying again.
"""

from __future__ import annotations

import shlex

import pytest
import yaml

from kaia_ha import failover_cloud as steps

DAG_ID = "kaia_cn_failover_cloud"
CONF = {"failed_cn": "cn-aws-1"}


@pytest.fixture(scope="module")
def drill_cell(own_cell_airflow):
    cell, runner = own_cell_airflow
    validator = cell.node("cn-aws-1")["node_id"]
    cell.break_("cn-aws-1", "kill")
    return cell, runner, validator


def run_drill(cell, runner, stop_replacement: bool = True):
    """Run the failover; return (state, task states, the report); stop the run's replacement after a drill."""
    run_id, state, states = runner.run(DAG_ID, CONF)
    ec2 = cell.client("ec2")
    mine = [i["InstanceId"]
            for r in ec2.describe_instances(Filters=[{"Name": "tag:kaia:run-id", "Values": [run_id]}])["Reservations"]
            for i in r["Instances"] if i["State"]["Name"] in ("pending", "running")]
    if mine and stop_replacement:  # the next run's preflight refuses while it is not stopped
        ec2.stop_instances(InstanceIds=mine)
        ec2.get_waiter("instance_stopped").wait(InstanceIds=mine, WaiterConfig={"Delay": 0.5})
    assert cell.status()["double_signing_events"] == []
    return state, {task: s for (task, _), s in states.items()}, runner.report(DAG_ID, run_id)


def why(report, task_id: str) -> str:
    outcomes = [r["outcome"] for r in report["timeline"] if r["task"] == task_id]
    assert outcomes, f"{task_id} recorded no step in the report: {[r['task'] for r in report['timeline']]}"
    return outcomes[-1]


def assert_caught(state, states, report, task_id: str, message: str):
    """The run failed at ``task_id``, at its first try (a retry cannot fix it), and the report says why."""
    assert state == "failed"
    assert states[task_id] == ("failed", 1), {t: s for t, s in states.items() if s[0] != "success"}
    assert task_id in report["failed_tasks"] and not report["ok"]
    assert message in why(report, task_id), why(report, task_id)
    assert states["verify.in_sync"][0] != "success"


def test_a_backup_of_another_node_is_refused_at_preflight(drill_cell, tmp_path, monkeypatch):
    cell, runner, _ = drill_cell
    inventory = yaml.safe_load(open(cell.env["KAIA_HA_INVENTORY"]))
    cn = next(c for cell_ in inventory["cells"] for c in cell_["cns"] if c["name"] == "cn-aws-1")
    cn["node_id"] = "ab" * 64  # the inventory expects another validator than the one backed up
    wrong = tmp_path / "inventory.yaml"
    wrong.write_text(yaml.safe_dump(inventory))
    monkeypatch.setenv("KAIA_HA_INVENTORY", str(wrong))
    since = len(cell.calls())
    state, states, report = run_drill(cell, runner)
    assert_caught(state, states, report, "preflight", "refusing to give the replacement a different identity")
    assert [c for c in cell.calls()[since:]
            if c["action"] in ("RunInstances", "StopInstances", "CreateVolume") and not c["dry_run"]] == []


def test_a_volume_never_attached_is_caught_before_pruning(drill_cell, monkeypatch):
    cell, runner, _ = drill_cell
    monkeypatch.setattr(steps, "attach_and_mount", lambda plan, host, volume_id: {"skipped": True})
    assert_caught(*run_drill(cell, runner), "replace.prune", "is not a mount point on the replacement")


def test_an_image_whose_data_dir_misses_the_chain_data_is_caught(drill_cell, monkeypatch):
    cell, runner, _ = drill_cell
    attach = steps.attach_and_mount

    def attach_then_break_conf(plan, host, volume_id):
        done = attach(plan, host, volume_id)
        lcell, cn, _ = steps._ctx(plan)
        node = steps.replacement(plan | host, lcell, cn)
        node.run(f"sudo sed -i 's|^DATA_DIR=.*|DATA_DIR=/var/kcnd/elsewhere|' {shlex.quote(cn.conf_path)}")
        return done

    monkeypatch.setattr(steps, "attach_and_mount", attach_then_break_conf)
    assert_caught(*run_drill(cell, runner), "replace.prune", "DATA_DIR='/var/kcnd/elsewhere'")


def test_skipping_prune_is_caught_before_kcnd_starts(drill_cell, monkeypatch):
    cell, runner, _ = drill_cell
    monkeypatch.setattr(steps, "prune", lambda plan, host: {"skipped": True})
    state, states, report = run_drill(cell, runner)
    assert_caught(state, states, report, "verify.start_kcnd", "besides klay/chaindata and the keys")


def test_skipping_the_identity_is_caught_before_kcnd_starts(drill_cell, monkeypatch):
    cell, runner, _ = drill_cell
    monkeypatch.setattr(steps, "install_keys", lambda plan, host: {"skipped": True})
    assert_caught(*run_drill(cell, runner), "verify.start_kcnd", "would read its nodekey from nowhere")


def test_an_elastic_ip_left_behind_is_caught_at_once(drill_cell, monkeypatch):
    cell, runner, _ = drill_cell
    monkeypatch.setattr(steps, "move_ip", lambda plan, host: {"skipped": True})
    assert_caught(*run_drill(cell, runner), "verify.in_sync", "not on the replacement")


def test_kcnd_never_started_is_caught_at_once(drill_cell, monkeypatch):
    cell, runner, _ = drill_cell
    monkeypatch.setattr(steps, "start_kcnd", lambda plan, host: {"skipped": True})
    assert_caught(*run_drill(cell, runner), "verify.in_sync", "on the replacement, not running")


def test_after_the_drills_a_clean_run_brings_the_validator_back(drill_cell):
    cell, runner, validator = drill_cell
    state, states, report = run_drill(cell, runner, stop_replacement=False)
    assert state == "success" and report["ok"], report["failed_tasks"]
    live = [n for n in cell.status()["nodes"] if n["node_id"] == validator and n["running"]]
    assert len(live) == 1 and live[0]["instance_id"] == report["facts"]["replacement instance"]
