"""Bare-metal failover drills against one simulated cell, in order (each leaves the cell as the next expects):

- bad input and a dry run change nothing;
- an active whose SSH is cut but which still runs, "declared dead" by mistake, is not trusted (ARP says it is up);
- an active that does not answer makes the run ask the operator (Required actions); a rejection changes nothing;
- the mistakes of a by-hand failover (a stale bls-nodekey, a top-level nodekey, a malformed nodekey, a skipped IP
  move) are caught by the DAG's own steps with a message that says why;
- the known-dead path then completes from wherever the drills left the standby.
"""

from __future__ import annotations

import pytest

import cellkit
from kaia_ha import failover_standby as steps
from kaia_ha.model.inventory import load_inventory
from kaia_ha.model.keys import InvalidKeyError, KeyBackup
from kaia_ha.takeover import TakeoverError, sync_check
from kaia_ha_airflow.hooks.kaia_node import HostUnreachable, KaiaNodeHook

DAG_ID = "kaia_cn_failover_standby"
IP = "10.50.0.100"
SECRET = "kaia-ha/cc-metal/cn-metal-a/nodekey"


@pytest.fixture(scope="module")
def drill(metal_cell_airflow):
    cell, runner = metal_cell_airflow
    return cell, runner, {n["name"]: n for n in cell.status()["nodes"]}


def assert_standby_untouched(cell, before: dict) -> None:
    b = cell.node("cn-metal-b")
    assert b["running"] and b["node_id"] == before["cn-metal-b"]["node_id"] and b["peer_count"].get("pn", 0) >= 1
    assert cell.status()["floating_ips"][IP] != "cn-metal-b"
    assert cell.status()["double_signing_events"] == []


def answer_when_asked(task_id: str, option: str, seen: dict, timeout: float = 180):
    return cellkit.answer_when_asked(DAG_ID, task_id, option, seen, timeout)


def test_bad_params_are_refused_before_anything_changes(drill):
    cell, runner, before = drill
    with pytest.raises(Exception, match="failed_cn"):
        runner.run(DAG_ID, {"failed_cn": "cn-metal-b"})  # a standby, not an active
    run_id, state, _ = runner.run(DAG_ID, {"failed_cn": "cn-metal-a", "standby_cn": "cn-metal-a"})  # the active itself
    assert state == "failed"
    outcome = runner.report(DAG_ID, run_id)["timeline"][0]["outcome"]
    assert "standby_cn: 'cn-metal-a' is not a standby of cc-metal now" in outcome
    run_id, state, states = runner.run(DAG_ID, {})  # nothing chosen: the form's default
    assert state == "failed" and states[("preflight.validate", -1)] == ("failed", 1)  # not retried: bad input stays bad
    assert "failed_cn: choose the active CN that failed" in runner.report(DAG_ID, run_id)["timeline"][0]["outcome"]
    assert_standby_untouched(cell, before)
    assert cell.node("cn-metal-a")["running"]


def test_a_dry_run_checks_and_changes_nothing(drill):
    cell, runner, before = drill
    run_id, state, states = runner.run(DAG_ID, {"failed_cn": "cn-metal-a", "dry_run": True})
    assert state == "success", states
    assert states[("preflight.check_standby", -1)][0] == "success"
    skipped = ("fence.plan", "fence.verify_fenced", "takeover.stop_standby", "start.start_standby")
    assert {states[(t, -1)][0] for t in skipped} == {"skipped"}
    report = runner.report(DAG_ID, run_id)
    assert report["dry_run"] and report["ok"]
    assert report["facts"]["preflight"]["failed active"]["fence"].startswith("over SSH")
    assert_standby_untouched(cell, before)
    assert cell.node("cn-metal-a")["running"] and cell.status()["floating_ips"][IP] == "cn-metal-a"


def test_an_active_with_ssh_cut_declared_dead_by_mistake_is_not_trusted(drill):
    cell, runner, before = drill
    cell.break_("cn-metal-a", "cut-ssh")  # kcnd still runs and still holds the floating IP
    run_id, state, states = runner.run(DAG_ID, {"failed_cn": "cn-metal-a", "host_known_dead": True})
    assert state == "failed"
    assert states[("fence.declared_down", -1)][0] == "success"
    assert states[("fence.verify_fenced", -1)][0] == "failed"
    assert states[("takeover.stop_standby", -1)][0] == "upstream_failed"
    why = next(s["outcome"] for s in runner.report(DAG_ID, run_id)["timeline"] if s["task"] == "fence.verify_fenced")
    assert "still answers ARP for 10.50.0.100" in why and "Power it off" in why
    assert_standby_untouched(cell, before)
    assert cell.node("cn-metal-a")["running"]


@pytest.mark.timeout(600)  # if the operator thread never answers, dag.test() would wait for ever
def test_an_unreachable_active_makes_the_run_ask_the_operator_and_a_rejection_changes_nothing(drill):
    cell, runner, before = drill
    cell.break_("cn-metal-a", "stop-instance")  # powered off: SSH refused
    seen: dict = {}
    operator = answer_when_asked("fence.confirm_down", "Reject", seen)
    run_id, state, states = runner.run(DAG_ID, {"failed_cn": "cn-metal-a"})
    operator.join(timeout=5)
    assert seen["state"].endswith("awaiting_input") and seen["run_id"] == run_id
    assert "cn-metal-a does not answer over SSH" in seen["body"] and seen["options"] == ["Approve", "Reject"]
    assert state == "failed"  # the report fails the run: not failed over
    assert states[("fence.confirm_down", -1)][0] == "success"
    skipped = ("fence.verify_fenced", "takeover.stop_standby", "start.start_standby")
    assert {states[(t, -1)][0] for t in skipped} == {"skipped"}
    report = runner.report(DAG_ID, run_id)
    assert report["facts"]["fencing"]["answer"] == ["Reject"] and not report["ok"]
    assert_standby_untouched(cell, before)
    assert any(c["params"].get("Subject", "").startswith("[kaia-ha] confirm cn-metal-a is down")
               for c in cell.calls("Publish"))


# ----- a failover by hand, checked by the DAG's steps (called directly: a DAG cannot be told to skip a step) -----
@pytest.fixture(scope="module")
def plan(drill):
    cell, runner, before = drill
    plan = steps.validate({"failed_cn": "cn-metal-a", "host_known_dead": True}, "drill-by-hand")
    assert steps.fence_path(plan) == steps.DECLARED_DOWN
    steps.verify_fenced(plan)
    steps.stop_standby(plan)
    return plan


@pytest.fixture(scope="module")
def backup(drill):
    cell, *_ = drill
    return KeyBackup.from_secret_string(cell.client("secretsmanager").get_secret_value(SecretId=SECRET)["SecretString"],
                                        SECRET)


def kcnd_state(cell) -> str:
    return cell.ssh("cn-metal-b", "systemctl is-active kcnd", check=False).stdout.strip()


def test_drill_a_stale_bls_nodekey_is_caught_before_the_start(drill, plan, backup):
    cell, *_ = drill
    # The seed's step 2 by hand: the nodekey swapped, the standby's own derived bls-nodekey left behind.
    cell.ssh("cn-metal-b", "sudo mv /var/kcnd/data/klay/nodekey /var/kcnd/own-nodekey && sudo sh -c 'umask 077; cat > "
                           "/var/kcnd/data/klay/nodekey'",
             stdin=backup.nodekey.reveal())
    with pytest.raises(TakeoverError, match="bls-nodekey the node would read .* is not the failed CN's: its blocks "
                                            "would carry the wrong BLS key"):
        steps.start_standby(plan)
    assert kcnd_state(cell) != "active"


def test_drill_a_top_level_nodekey_is_caught_and_the_identity_step_removes_it(drill, plan):
    cell, *_ = drill
    steps.replace_identity(plan)  # the DAG's step: both keys right
    # e.g. a restore script from an old layout
    cell.ssh("cn-metal-b", "sudo cp /var/kcnd/own-nodekey /var/kcnd/data/nodekey")
    with pytest.raises(TakeoverError, match="would read its nodekey from /var/kcnd/data/nodekey, not "
                                            "/var/kcnd/data/klay/nodekey"):
        steps.start_standby(plan)
    assert kcnd_state(cell) != "active"
    steps.replace_identity(plan)  # the DAG's step moves it aside with the standby's other key files
    assert "No such file" in cell.ssh("cn-metal-b", "ls /var/kcnd/data/nodekey 2>&1; true").stdout


def test_drill_a_malformed_nodekey_is_caught_not_silently_replaced(drill, plan):
    cell, *_ = drill
    cell.ssh("cn-metal-b", "echo 0xnot-a-key | sudo tee /var/kcnd/data/klay/nodekey >/dev/null")
    with pytest.raises(InvalidKeyError, match="silently generate a NEW identity"):
        steps.start_standby(plan)
    assert kcnd_state(cell) != "active"
    # The identity step puts it right, also when the answer to its keep-aside is lost on the way back.
    retried = plan | {"run_id": "drill-lost-answer"}  # a run of its own: its keys-aside folder is new
    cell.fault("ssh:cn-metal-b", "--kind", "drop-after", "--match", "keys-aside")
    with pytest.raises(HostUnreachable):
        steps.replace_identity(retried)
    fixed = steps.replace_identity(retried)
    assert fixed["own_keys"] == "aside" and fixed["nodekey_path"] == "/var/kcnd/data/klay/nodekey"
    kept = cell.ssh("cn-metal-b", f"sudo cat {fixed['own_keys_dir']}/klay_nodekey").stdout.strip() == "0xnot-a-key"
    # what the first try moved aside is still there (compared as a flag: a key file's text is never printed)
    assert kept


def test_drill_a_skipped_ip_move_is_caught_and_the_sync_check_says_why(drill, plan, backup):
    cell, *_ = drill
    with pytest.raises(TakeoverError, match="floating IP 10.50.0.100 is not on cn-metal-b .*the IP move was skipped"):
        steps.start_standby(plan)
    assert kcnd_state(cell) != "active"
    # Started by hand anyway, at its own address: the honest check says why it is not the validator.
    cell.ssh("cn-metal-b", "sudo systemctl start kcnd")
    try:
        metal = load_inventory().cell("cc-metal")
        node = KaiaNodeHook(next(cn for cn in metal.cns if cn.name == "cn-metal-b"))
        verdict = sync_check(node, metal, backup)
        assert not verdict.ok
        # Its PNs take it (a PN accepts any CN that dials it); the other operators' CNs do not, at that address.
        assert any("no CN accepts this node: its node ID or IP is not the one expected" in f for f in verdict.failed())
        assert steps.standby_synced(plan) is None  # the DAG's sensor keeps waiting, it does not pass
    finally:
        cell.ssh("cn-metal-b", "sudo systemctl stop kcnd")


def test_the_known_dead_path_completes_from_where_the_drills_left_the_standby(drill):
    """With SSH dropping in the steps that do real work here (the IP is still to be added, the keys are written
    again, kcnd is still to be started): each ends in success after a retry."""
    cell, runner, before = drill
    for kind, match in (("drop", "arping -D"), ("drop-after", "kaia-ha.tmp"), ("drop-after", "ip addr add"),
                        ("drop", "kcn attach")):
        cell.fault("ssh:cn-metal-b", "--kind", kind, "--match", match)
    run_id, state, states = runner.run(DAG_ID, {"failed_cn": "cn-metal-a", "host_known_dead": True})
    assert state == "success", {k: v for k, v in states.items() if v[0] != "success"}
    assert cell.status()["pending_faults"]["ssh"] == {}
    assert {t for (t, _), (_, tries) in states.items() if tries > 1} >= {
        "fence.verify_fenced", "takeover.replace_identity", "takeover.move_floating_ip", "start.start_standby"}
    assert states[("fence.declared_down", -1)][0] == "success" and states[("fence.confirm_down", -1)][0] == "skipped"
    status = cell.status()
    live = [n for n in status["nodes"] if n["node_id"] == before["cn-metal-a"]["node_id"] and n["running"]]
    assert [n["name"] for n in live] == ["cn-metal-b"] and live[0]["ip"] == IP
    assert live[0]["peer_count"].get("cn", 0) > 0 and status["double_signing_events"] == []
    report = runner.report(DAG_ID, run_id)
    assert report["ok"] and report["facts"]["fencing"]["path"] == "declared"
    assert "earlier" in report["facts"]["standby's own keys"]["state"]
    assert any("NOT fenced over SSH" in t for t in report["todo"])
