"""Breaking the cell on purpose: what a killed node leaves behind, double signing, lost hosts."""

from __future__ import annotations

import json


def test_a_killed_pn_leaves_data_a_node_cannot_use_as_is(fresh_cell):
    cell = fresh_cell
    cell.break_("pn-aws-2", "kill")
    assert not cell.node("pn-aws-2", "kpnd")["running"]
    current = json.loads(cell.ssh("pn-aws-2", "cat /var/kpnd/data/klay/chaindata/misc/CURRENT.json").stdout)
    assert current["clean"] is False
    started = cell.ssh("pn-aws-2", "sudo systemctl start kpnd", check=False)
    assert started.returncode != 0
    assert "unclean shutdown" in cell.ssh("pn-aws-2", "tail -3 /var/log/kpnd/kpnd.out").stdout


def test_a_clean_stop_after_stop_timeout_is_a_kill(fresh_cell):
    cell = fresh_cell
    cell.fault("slow-stop:pn-aws-1", "--times", "15")  # the node needs 15 s; STOP_TIMEOUT is 10
    cell.ssh("pn-aws-1", "sudo systemctl stop kpnd")
    log = cell.ssh("pn-aws-1", "tail -5 /var/log/kpnd/kpnd.out").stdout
    assert "Got interrupt" in log and "Database closed" not in log
    assert json.loads(cell.ssh("pn-aws-1", "cat /var/kpnd/data/klay/chaindata/misc/CURRENT.json").stdout)["clean"] is False


def test_two_live_nodes_with_one_nodekey_are_a_double_signing_event(fresh_cell):
    cell = fresh_cell
    key = cell.ssh("cn-metal-a", "sudo cat /var/kcnd/data/klay/nodekey").stdout
    # The standby takes the active's key and IP while the active still runs: the seed's procedure
    # without fencing. The IP flips to the standby; both signed within moments of each other.
    cell.ssh("cn-metal-b", "sudo systemctl stop kcnd && sudo cat > /var/kcnd/data/klay/nodekey && "
                           "sudo rm -f /var/kcnd/data/klay/bls-nodekey && sudo ip addr add 10.50.0.100/24 dev eth0 && "
                           "sudo arping -U -c 3 -I eth0 10.50.0.100 && sudo systemctl start kcnd", stdin=key)
    events = cell.wait_for(lambda: cell.status()["double_signing_events"], what="a double-signing event")
    assert events[0]["hosts"] == ["cn-metal-a", "cn-metal-b"]


def test_breaking_ssh_and_instances(fresh_cell):
    cell = fresh_cell
    cell.break_("cn-metal-a", "cut-ssh")
    assert cell.ssh("cn-metal-a", "true", check=False).returncode == 255
    assert cell.node("cn-metal-a")["running"]  # the node keeps running without SSH
    cell.break_("cn-aws-1", "stop-instance")
    ec2 = cell.client("ec2")
    instance = cell.node("cn-aws-1")["instance_id"]
    state = lambda: ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]["State"]["Name"]
    cell.wait_for(lambda: state() == "stopped", what="instance stopped")
    assert not cell.node("cn-aws-1")["running"]
    assert cell.ssh("cn-aws-1", "true", check=False).returncode == 255
    stops = cell.calls("StopInstances")
    assert stops and stops[-1]["params"]["InstanceId.1"] == instance


def test_ssh_drop_fault_drops_the_next_sessions_then_recovers(fresh_cell):
    cell = fresh_cell
    cell.fault("ssh:pn-metal-1", "--kind", "drop", "--times", "2")
    assert [cell.ssh("pn-metal-1", "true", check=False).returncode for _ in range(3)] == [255, 255, 0]
