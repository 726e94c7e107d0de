"""The simulated core cell's semantics, seen the way a DAG or an operator sees them."""

from __future__ import annotations

import json

import botocore.exceptions
import pytest


def test_seeded_cell_is_in_sync_and_reports_its_world(cell):
    status = cell.status()
    nodes = {(n["name"], n["service"]): n for n in status["nodes"]}
    assert set(nodes) >= {
        ("cn-aws-1", "kcnd"), ("pn-aws-1", "kpnd"), ("pn-aws-2", "kpnd"),
        ("cn-metal-a", "kcnd"), ("cn-metal-b", "kcnd"), ("pn-metal-1", "kpnd"),
    }
    for node in nodes.values():
        assert node["running"], node
        assert node["peer_count"]["total"] > 0, node
        assert status["network_head"] - node["block_height"] <= 5, node
        assert len(node["node_id"]) == 128
    assert nodes[("cn-aws-1", "kcnd")]["peer_count"]["pn"] == 2
    assert nodes[("cn-metal-b", "kcnd")]["peer_count"].get("cn", 0) == 0  # a standby only syncs from PNs
    assert list(status["elastic_ips"].values()).count("cn-aws-1") == 1
    assert status["floating_ips"] == {"10.50.0.100": "cn-metal-a"}
    assert status["double_signing_events"] == []


def test_env_and_inventory_let_airflow_reach_every_host_with_host_key_checking(cell):
    from airflow.providers.ssh.hooks.ssh import SSHHook

    from kaia_ha.model.inventory import load_inventory

    inventory = load_inventory(cell.env["KAIA_HA_INVENTORY"])
    assert {c.name for c in inventory.cells} == {"cc-cloud", "cc-metal"}
    status = {n["name"]: n for n in cell.status()["nodes"]}
    for c in inventory.cells:
        for node in [*c.cns, *c.pns]:
            conn_env = "AIRFLOW_CONN_" + node.ssh_conn_id.upper()
            conn = json.loads(cell.env[conn_env])
            assert conn["extra"]["host_key"].startswith("ssh-ed25519 ")
            if hasattr(node, "node_id"):
                assert node.node_id == status[node.name]["node_id"]
    import os

    old = dict(os.environ)
    os.environ.update(cell.env)
    try:
        hook = SSHHook(ssh_conn_id="ssh_cn_aws_1")
        assert not hook.no_host_key_check
        with hook.get_conn() as client:
            _, out, _ = client.exec_command("cat /etc/kcnd/conf/kcnd.conf")
            assert "DATA_DIR=/var/kcnd/data" in out.read().decode()
    finally:
        os.environ.clear()
        os.environ.update(old)


def test_host_tools_answer_like_a_real_cn(cell):
    assert "Active: active (running)" in cell.ssh("cn-aws-1", "sudo systemctl status kcnd").stdout
    assert cell.ssh("cn-aws-1", "sudo kcn version").stdout.splitlines()[1] == "Version: v2.2.1"
    info = cell.attach("cn-aws-1", "admin.nodeInfo")
    assert set(info) >= {"id", "kni", "nodeAddress", "blsPublicKeyInfo"}
    assert info["kni"].startswith(f"kni://{info['id']}@")
    assert cell.attach("cn-aws-1", "klay.blockNumber") >= cell.attach("cn-aws-1", "kaia.blockNumber") - 2
    # Without JSON.stringify the console prints JS notation, as the real console does.
    plain = cell.ssh("cn-aws-1", "sudo kcn attach --datadir /var/kcnd/data --exec net.peerCountByType").stdout.strip()
    assert plain.startswith("{") and "total:" in plain
    # Each host sees its own files at the usual paths.
    ids = {name: cell.ssh(name, "cat /var/kpnd/data/static-nodes.json").stdout for name in ("pn-aws-1", "pn-aws-2")}
    assert all(cell.node("cn-aws-1")["node_id"] in text for text in ids.values())
    assert cell.ssh("cn-aws-1", "test -e /var/kpnd/data/klay", check=False).returncode != 0


def test_a_nodekey_that_does_not_parse_becomes_a_new_identity_the_other_validators_refuse(cell):
    name = "cn-aws-1"
    original = cell.node(name)["node_id"]
    saved = cell.ssh(name, "sudo cat /var/kcnd/data/klay/nodekey").stdout
    try:
        cell.ssh(name, "sudo systemctl stop kcnd && printf 'not-a-key' | sudo tee /var/kcnd/data/klay/nodekey "
                       ">/dev/null && sudo systemctl start kcnd")
        assert "Generated nodekey" in cell.ssh(name, "tail -20 /var/log/kcnd/kcnd.out").stdout
        node = cell.wait_for(lambda: (n := cell.node(name)) and n["running"] and n, what="kcnd running")
        assert node["node_id"] != original
        # Its PNs still accept it (a PN takes any CN that dials it), the other operators' CNs do not: not the validator.
        assert "cn" not in cell.attach(name, "net.peerCountByType")
    finally:
        cell.ssh(name,
                 "sudo systemctl stop kcnd && sudo cat > /var/kcnd/data/klay/nodekey && sudo systemctl start kcnd",
                 stdin=saved)
    cell.wait_for(lambda: cell.node(name)["peer_count"]["total"] > 0, what="peers back with the right key")
    assert cell.node(name)["node_id"] == original


def test_a_top_level_nodekey_shadows_klay_nodekey(cell):
    name = "cn-metal-b"
    before = cell.node(name)["node_id"]
    try:
        cell.ssh(name, "sudo systemctl stop kcnd && head -c 64 /dev/urandom | sha256sum | cut -c1-64 | sudo tee "
                       "/var/kcnd/data/nodekey >/dev/null && sudo systemctl start kcnd")
        assert cell.wait_for(lambda: cell.node(name)["node_id"], what="node up") != before
    finally:
        cell.ssh(name, "sudo systemctl stop kcnd && sudo rm -f /var/kcnd/data/nodekey && sudo systemctl start kcnd")
    assert cell.wait_for(lambda: cell.node(name)["node_id"], what="node up") == before


def test_client_token_makes_a_retry_return_the_same_instance_and_volume(cell):
    ec2 = cell.client("ec2")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    subnets = ec2.describe_subnets(Filters=[{"Name": "availabilityZone", "Values": ["us-east-1a"]}])["Subnets"]
    subnet = subnets[0]["SubnetId"]
    first = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, SubnetId=subnet, ClientToken="test-token-1")
    again = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, SubnetId=subnet, ClientToken="test-token-1")
    assert first["Instances"][0]["InstanceId"] == again["Instances"][0]["InstanceId"]
    v1 = ec2.create_volume(AvailabilityZone="us-east-1a", Size=10, ClientToken="vol-token-1")["VolumeId"]
    v2 = ec2.create_volume(AvailabilityZone="us-east-1a", Size=10, ClientToken="vol-token-1")["VolumeId"]
    assert v1 == v2
    ec2.terminate_instances(InstanceIds=[first["Instances"][0]["InstanceId"]])


def test_attach_refuses_a_volume_in_another_availability_zone(cell):
    ec2 = cell.client("ec2")
    volume = ec2.create_volume(AvailabilityZone="us-east-1b", Size=10)["VolumeId"]
    ec2.get_waiter("volume_available").wait(VolumeIds=[volume], WaiterConfig={"Delay": 0.2})
    instance = cell.node("cn-aws-1")["instance_id"]
    with pytest.raises(botocore.exceptions.ClientError, match="ZoneMismatch"):
        ec2.attach_volume(VolumeId=volume, InstanceId=instance, Device="/dev/sdh")


def test_injected_faults_happen_in_order_and_are_recorded(cell):
    ec2 = cell.client("ec2", retries={"total_max_attempts": 1, "mode": "standard"})
    cell.fault("DescribeVolumes", "--kind", "throttle", "--times", "2")
    for _ in range(2):
        with pytest.raises(botocore.exceptions.ClientError, match="RequestLimitExceeded"):
            ec2.describe_volumes()
    ec2.describe_volumes()
    recorded = [c["fault"] for c in cell.calls("DescribeVolumes")][-3:]
    assert recorded == ["throttle", "throttle", None]


def test_snapshot_is_point_in_time_and_a_volume_from_it_is_a_copy(cell):
    ec2 = cell.client("ec2")
    pn = cell.node("pn-aws-1", "kpnd")
    volume = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [pn["instance_id"]]},
                                           {"Name": "attachment.device", "Values": ["/dev/sdf"]}])["Volumes"][0]
    cell.ssh("pn-aws-1", "echo before | sudo tee /var/kpnd/data/marker")
    snapshot = ec2.create_snapshot(VolumeId=volume["VolumeId"])["SnapshotId"]
    cell.ssh("pn-aws-1", "echo after | sudo tee /var/kpnd/data/marker && sudo rm /var/kpnd/data/marker")
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snapshot], WaiterConfig={"Delay": 0.2})
    copy = ec2.create_volume(AvailabilityZone="us-east-1a", SnapshotId=snapshot, Size=volume["Size"])["VolumeId"]
    ec2.get_waiter("volume_available").wait(VolumeIds=[copy], WaiterConfig={"Delay": 0.2})
    cn = cell.node("cn-aws-1")
    ec2.attach_volume(VolumeId=copy, InstanceId=cn["instance_id"], Device="/dev/sdg")
    cell.ssh("cn-aws-1", "sudo mkdir -p /var/kcnd/restore && sudo mount /dev/sdg /var/kcnd/restore")
    assert cell.ssh("cn-aws-1", "cat /var/kcnd/restore/marker").stdout == "before\n"
    # A snapshot of a running PN holds a database that was not closed: a node opening it rewinds to its last state.
    current = json.loads(cell.ssh("cn-aws-1", "cat /var/kcnd/restore/klay/chaindata/misc/CURRENT.json").stdout)
    assert current["clean"] is False
    cell.ssh("cn-aws-1", "sudo umount /var/kcnd/restore")
    ec2.detach_volume(VolumeId=copy)


def test_an_ip_moves_only_with_arp_and_the_network_follows(cell):
    status = cell.status()
    assert status["floating_ips"]["10.50.0.100"] == "cn-metal-a"
    # Configuring the address without a gratuitous ARP leaves neighbours sending to the old holder.
    cell.ssh("cn-metal-b", "sudo ip addr add 10.50.0.100/24 dev eth0")
    assert cell.status()["floating_ips"]["10.50.0.100"] == "cn-metal-a"
    cell.ssh("cn-metal-b", "sudo ip addr del 10.50.0.100/24 dev eth0")
    assert "10.50.0.100" in cell.ssh("cn-metal-a", "ip -4 addr show").stdout
