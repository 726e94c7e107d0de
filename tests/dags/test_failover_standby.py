"""The bare-metal failover against the simulated core cell: the standby becomes the validator with the failed
active's identity and floating IP, the failed active is fenced, nothing double-signs, and a re-run (with SSH
dropping at every step) finds everything done and keeps the validator up."""

from __future__ import annotations

import json

import pytest

from kaia_ha.model.keys import BlsKey, KeyBackup, NodeKey

DAG_ID = "kaia_cn_failover_standby"
IP = "10.50.0.100"


def routes(cell, host: str) -> list[list[str]]:
    return [r["args"] for r in cell.status()["routes"] if r["host"] == host]


def key_on(cell, host: str, path: str) -> NodeKey:
    return NodeKey(cell.ssh(host, f"sudo cat {path}").stdout)


@pytest.fixture(scope="module")
def failover(metal_cell_airflow):
    cell, runner = metal_cell_airflow
    before = {n["name"]: n for n in cell.status()["nodes"]}
    # The site restarts a crashed kcnd (the init script's watchdog): fencing must switch that off too.
    cell.ssh("cn-metal-a", "sudo sed -i 's/^AUTO_RESTART_NODE=.*/AUTO_RESTART_NODE=1/' /etc/kcnd/conf/kcnd.conf")
    cell.break_("cn-metal-a", "kill")  # kcnd dies; the host still answers over SSH and still holds the floating IP
    run_id, state, states = runner.run(DAG_ID, {"failed_cn": "cn-metal-a"})
    return cell, runner, before, run_id, state, states


def test_the_standby_becomes_the_validator_with_the_failed_actives_identity_and_ip(failover):
    cell, runner, before, run_id, state, states = failover
    assert state == "success", {k: v for k, v in states.items() if v[0] != "success"}
    assert states[("fence.fence_over_ssh", -1)][0] == "success"
    assert states[("fence.confirm_down", -1)][0] == "skipped"
    status = cell.status()
    validator = before["cn-metal-a"]["node_id"]
    live = [n for n in status["nodes"] if n["node_id"] == validator and n["running"]]
    assert [n["name"] for n in live] == ["cn-metal-b"]
    assert live[0]["ip"] == IP and status["floating_ips"][IP] == "cn-metal-b"
    # the other operators accept it
    assert live[0]["peer_count"].get("pn", 0) >= 1 and live[0]["peer_count"].get("cn", 0) > 0
    assert status["network_head"] - live[0]["block_height"] <= 5
    assert status["double_signing_events"] == []
    report = runner.report(DAG_ID, run_id)
    print(f"\nRTO of the bare-metal failover (trigger to synced): {report['rto_seconds']} s")
    assert report["ok"] and 0 < report["rto_seconds"] < 60
    assert [s["task"] for s in report["timeline"]][0] == "preflight.validate"
    assert {c["name"] for c in report["checks"] if c["ok"]} >= {"identity", "bls key", "pn peers", "cn peers",
                                                                "head rising"}
    assert any("has NO standby" in t and "kaia_cn_enroll_standby" in t for t in report["todo"])
    assert report["facts"]["live placement"].startswith("generation 1: cn-metal-a on cn-metal-b")


def test_the_failed_active_is_fenced(failover):
    cell, runner, before, run_id, *_ = failover
    a = lambda cmd: cell.ssh("cn-metal-a", cmd, check=False).stdout.strip()  # noqa: E731
    assert a("systemctl is-active kcnd") == "inactive"
    assert a("systemctl is-enabled kcnd") == "disabled"
    assert a(". /etc/kcnd/conf/kcnd.conf; echo $AUTO_RESTART_NODE") == "0"
    assert f"inet {IP}/" not in a("ip -4 addr show dev eth0")
    assert "src" not in routes(cell, "cn-metal-a")[-1]  # the default route no longer names an address it lost
    assert a("sudo ls /var/kcnd/data/klay/nodekey /var/kcnd/data/nodekey 2>&1; true").count("No such file") == 2
    fencing = runner.report(DAG_ID, run_id)["facts"]["fencing"]
    assert fencing["path"] == "over SSH" and fencing["floating_ip"] == "released"
    aside = fencing["keys_aside"]
    assert key_on(cell, "cn-metal-a", f"{aside}/klay_nodekey").node_id == before["cn-metal-a"]["node_id"]
    assert a(f"sudo stat -c %a {aside}/klay_nodekey") == "600"


def test_the_standby_reads_exactly_the_backup_and_kept_its_own_keys(failover):
    cell, runner, before, run_id, *_ = failover
    secrets = cell.client("secretsmanager")
    secret = secrets.get_secret_value(SecretId="kaia-ha/cc-metal/cn-metal-a/nodekey")["SecretString"]
    backup = KeyBackup.from_secret_string(secret, "backup")
    b = lambda cmd: cell.ssh("cn-metal-b", cmd, check=False).stdout.strip()  # noqa: E731
    assert key_on(cell, "cn-metal-b", "/var/kcnd/data/klay/nodekey") == backup.nodekey
    # not its own derived one (keys compare redacted)
    assert BlsKey(b("sudo cat /var/kcnd/data/klay/bls-nodekey")) == backup.bls
    assert b("sudo stat -c %a /var/kcnd/data/klay/nodekey /var/kcnd/data/klay/bls-nodekey").split() == ["600", "600"]
    assert "No such file" in b("sudo ls /var/kcnd/data/nodekey 2>&1; true")
    assert json.loads(b("cat /var/kcnd/data/static-nodes.json"))  # kept: the standby's own PN list
    own = runner.report(DAG_ID, run_id)["facts"]["standby's own keys"]
    assert own["state"] == "aside"
    assert key_on(cell, "cn-metal-b", f"{own['dir']}/klay_nodekey").node_id == before["cn-metal-b"]["node_id"]
    assert b(f"sudo stat -c %a {own['dir']}/klay_nodekey {own['dir']}/klay_bls-nodekey").split() == ["600", "600"]
    # outbound from the floating IP
    assert "src" in routes(cell, "cn-metal-b")[-1] and routes(cell, "cn-metal-b")[-1][-1] == IP
    assert b("systemctl is-enabled kcnd") == "enabled"


def test_starting_kcnd_on_the_fenced_host_by_hand_does_not_bring_back_the_validator(failover):
    cell, runner, before, *_ = failover
    # Someone starts it by hand. (After the simulated crash it rewinds its chain data and runs, as a real node does;
    # what matters is the identity it reached for.)
    cell.ssh("cn-metal-a", "sudo systemctl start kcnd", check=False)
    try:
        started = cell.ssh("cn-metal-a", "tail -40 /var/log/kcnd/kcnd.out").stdout.rsplit("Starting kcn", 1)[-1]
        assert "Generated nodekey" in started
        assert key_on(cell, "cn-metal-a", "/var/kcnd/data/klay/nodekey").node_id != before["cn-metal-a"]["node_id"]
        assert cell.status()["double_signing_events"] == []
    finally:
        cell.ssh("cn-metal-a", "sudo systemctl stop kcnd", check=False)  # as the fence left it, for the next tests


def test_a_rerun_with_ssh_dropping_at_every_step_finds_everything_done(failover):
    """Clearing the whole run must not take the validator down or change anything:
    each step sees its work done. SSH drops before or after a command of every step end in success."""
    cell, runner, before, *_ = failover
    validator = cell.node("cn-metal-b")
    # Each fault hits the first session on that host whose command contains the text, i.e. one step each.
    for host, kind, match in (("cn-metal-b", "drop", "ip -4 addr show"),        # preflight.check_floating_ip
                              ("cn-metal-a", "drop-after", "systemctl disable"),  # fence.fence_over_ssh
                              # takeover.stop_standby (is it the validator?)
                              ("cn-metal-b", "drop", "kcn attach"),
                              # takeover.replace_identity (proof on disk)
                              ("cn-metal-b", "drop", "stat -c %a"),
                              ("cn-metal-b", "drop-after", "arping -U"),          # takeover.move_floating_ip (announce)
                              ("cn-metal-b", "drop-after", "systemctl enable")):  # start.start_standby
        cell.fault(f"ssh:{host}", "--kind", kind, "--match", match)
    # The whole run cleared (its preflight reads the placement this run recorded, and acts on the one before it).
    run_id, state, states = runner.clear_and_rerun(DAG_ID, failover[3], task_ids=["preflight.validate"])
    assert state == "success", {k: v for k, v in states.items() if v[0] != "success"}
    assert cell.status()["pending_faults"]["ssh"] == {}
    retried = {t for (t, _), (s, tries) in states.items() if tries > 1}
    assert {"preflight.check_floating_ip", "fence.fence_over_ssh", "takeover.stop_standby", "takeover.replace_identity",
            "takeover.move_floating_ip", "start.start_standby"} <= retried
    facts = runner.report(DAG_ID, run_id)["facts"]
    assert "already runs as the validator" in facts["standby stop"]["skipped"]
    after = cell.node("cn-metal-b")
    assert after["node_id"] == validator["node_id"] and after["running"] and after["ip"] == IP
    assert after["peer_count"].get("cn", 0) > 0
    assert cell.status()["double_signing_events"] == []
