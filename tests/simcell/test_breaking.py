"""Breaking the cell on purpose: what a killed node leaves behind, double signing, lost hosts."""

from __future__ import annotations

import json

CURRENT = "cat /var/kpnd/data/klay/chaindata/misc/CURRENT.json"


def kill_past_its_last_state(cell, pn: str) -> dict:
    """Kill kpnd once blocks past its last state on disk were flushed (right after a start they may not be yet)."""
    cell.wait_for(lambda: (c := json.loads(cell.ssh(pn, CURRENT).stdout))["state"] < c["head"],
                  what="blocks past the state")
    cell.break_(pn, "kill")
    return json.loads(cell.ssh(pn, CURRENT).stdout)


def test_a_killed_pn_rewinds_to_its_last_state_on_disk_and_catches_up(fresh_cell):
    """The real node after an unclean stop (kaiachain/kaia blockchain/blockchain.go, NewBlockChain): "Head state
    missing, repairing chain", back to the last block whose state trie reached the disk (every 128 blocks)."""
    cell = fresh_cell
    current = kill_past_its_last_state(cell, "pn-aws-2")
    assert not cell.node("pn-aws-2", "kpnd")["running"]
    assert current["clean"] is False and current["state"] < current["head"]
    cell.ssh("pn-aws-2", "sudo systemctl start kpnd")
    log = cell.ssh("pn-aws-2", "tail -20 /var/log/kpnd/kpnd.out").stdout
    assert f"Head state missing, repairing chain number={current['head']}" in log
    assert f"Loaded most recent local full block number={current['state']}" in log
    cell.wait_for(lambda: (cell.node("pn-aws-2", "kpnd")["block_height"] or 0) > current["head"], what="caught up")
    assert cell.node("pn-aws-2", "kpnd")["peer_count"]["total"] > 0


def test_a_node_refuses_only_chain_data_without_any_state(fresh_cell):
    """Where the source refuses: the rewind reached block 0 and even its state is missing."""
    cell = fresh_cell
    kill_past_its_last_state(cell, "pn-aws-2")
    cell.ssh("pn-aws-2", "sudo rm -rf /var/kpnd/data/klay/chaindata/statetrie")
    started = cell.ssh("pn-aws-2", "sudo systemctl start kpnd", check=False)
    assert started.returncode != 0, cell.ssh("pn-aws-2", "tail -8 /var/log/kpnd/kpnd.out").stdout
    tail = cell.ssh("pn-aws-2", "tail -3 /var/log/kpnd/kpnd.out").stdout
    assert "rewound to block number 0, but repair failed" in tail


def test_a_clean_stop_after_stop_timeout_is_a_kill(fresh_cell):
    cell = fresh_cell
    cell.fault("slow-stop:pn-aws-1", "--times", "15")  # the node needs 15 s; STOP_TIMEOUT is 10
    cell.ssh("pn-aws-1", "sudo systemctl stop kpnd")
    log = cell.ssh("pn-aws-1", "tail -5 /var/log/kpnd/kpnd.out").stdout
    assert "Got interrupt" in log and "Database closed" not in log
    current = cell.ssh("pn-aws-1", "cat /var/kpnd/data/klay/chaindata/misc/CURRENT.json").stdout
    assert json.loads(current)["clean"] is False
    cell.ssh("pn-aws-1", "sudo systemctl start kpnd")  # rewinds, as the real node does
    cell.fault("--clear")


def test_systemctl_kill_lets_a_slow_node_stop_on_its_own(fresh_cell):
    cell = fresh_cell
    cell.fault("slow-stop:pn-aws-1", "--times", "3")
    cell.ssh("pn-aws-1", "sudo systemctl kill --signal=SIGTERM kpnd")
    assert "Got interrupt" in cell.ssh("pn-aws-1", "tail -2 /var/log/kpnd/kpnd.out").stdout
    cell.wait_for(lambda: not cell.node("pn-aws-1", "kpnd")["running"]
                  and "Database closed" in cell.ssh("pn-aws-1", "tail -1 /var/log/kpnd/kpnd.out").stdout, what="exit")
    current = cell.ssh("pn-aws-1", "cat /var/kpnd/data/klay/chaindata/misc/CURRENT.json").stdout
    assert json.loads(current)["clean"] is True
    cell.ssh("pn-aws-1", "sudo systemctl stop kpnd && sudo systemctl start kpnd")
    cell.fault("--clear")


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

    def state():
        return ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]["State"]["Name"]

    cell.wait_for(lambda: state() == "stopped", what="instance stopped")
    assert not cell.node("cn-aws-1")["running"]
    assert cell.ssh("cn-aws-1", "true", check=False).returncode == 255
    stops = cell.calls("StopInstances")
    assert stops and stops[-1]["params"]["InstanceId.1"] == instance


def test_ssh_drop_fault_drops_the_next_sessions_then_recovers(fresh_cell):
    cell = fresh_cell
    cell.fault("ssh:pn-metal-1", "--kind", "drop", "--times", "2")
    assert [cell.ssh("pn-metal-1", "true", check=False).returncode for _ in range(3)] == [255, 255, 0]
