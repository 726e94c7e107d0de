"""The seeded world: two core cells, provisioned the way an operator's tooling would.

- ``cc-cloud``: an active CN (``cn-aws-1``) and two PNs (``pn-aws-1``, ``pn-aws-2``) on EC2, each with a
  4,000 GiB gp3 data volume at /dev/sdf mounted as DATA_DIR and an Elastic IP.
- ``cc-metal``: a bare-metal active CN (``cn-metal-a``) holding the floating IP, its standby
  (``cn-metal-b``) syncing with its own nodekey, and a PN (``pn-metal-1``).
- ``cloud_cells`` > 1 (benchmarks at scale): copies of ``cc-cloud`` named ``cc-cloud-2``, ``cc-cloud-3`` ...
  whose nodes carry the cell's number (``cn-aws-1-c2``, ``pn-aws-1-c2``, ``pn-aws-2-c2``). The even ones live
  in a second region, ``us-west-2``, reached through an Airflow connection of their own (``kaia_aws_us_west_2``):
  a DAG that acts on a cell in its neighbour's region or through its neighbour's connection finds nothing there.

Every node is in sync. Node keys are made here, written to the hosts and forgotten: a CN's nodekey
exists only on its host (backing it up is the maintenance DAG's job). The generated inventory carries
node IDs, which are public.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import boto3
import yaml

from simcell import identity, paths
from simcell.node import TABLES, schema_of
from simcell.world import Host, World

REGION = "us-east-1"
# The second region's cells, and the Airflow connection that reaches it (each region's own, as an operator's are).
REGION_2 = "us-west-2"
CONN_IDS = {REGION: "kaia_aws", REGION_2: "kaia_aws_us_west_2"}
SUBNETS = {REGION: (1, 3), REGION_2: (5, 6)}  # third octets of each region's two loopback subnets (2: bare metal)
VERSION = "v2.2.1"
SNS_TOPIC = "kaia-ha-alerts"
STATE_BUCKET = "kaia-ha-state"  # the live placement's home (inventory state.url)

CONF = """\
# kcnd.conf / kpnd.conf (sourced by /etc/init.d/{service})
NETWORK="mainnet"
NETWORK_ID=
PORT=32323
SERVER_TYPE="fasthttp"
SYNCMODE="full"
VERBOSITY=3
MAXCONNECTIONS=100
LDBCACHESIZE=10240
RPC_ENABLE=0
RPC_PORT=8551
DATA_DIR={data_dir}
LOG_DIR=/var/log/{service}
STOP_TIMEOUT=10
AUTO_RESTART_NODE=0
ADDITIONAL="--dbtype LevelDB --db.num-statetrie-shards 4"
"""


def aws_client(service: str, endpoint: str, region: str = REGION):
    return boto3.client(
        service, endpoint_url=endpoint, region_name=region, aws_access_key_id="testing", aws_secret_access_key="testing"
    )


def client_key() -> Path:
    """The operator's SSH key, authorised on every simulated host."""
    key = paths.KEYS / "id_ed25519"
    if not key.exists():
        paths.KEYS.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kaia-ha-operator", "-f", str(key)],
                       check=True)
    (paths.KEYS / "authorized_keys").write_text(key.with_suffix(".pub").read_text())
    return key


def write_chaindata(data_dir: Path, head: int) -> None:
    chaindata = data_dir / "klay" / "chaindata"
    for table in TABLES:
        (chaindata / table).mkdir(parents=True, exist_ok=True)
    for shard in range(4):
        (chaindata / "statetrie" / str(shard)).mkdir(parents=True, exist_ok=True)
    (chaindata / "misc" / "CURRENT.json").write_text(
        json.dumps({"head": head, "state": head, "clean": True, "dbtype": "LevelDB", "statetrie_shards": 4,
                    "live_pruning": False, "schema": schema_of(VERSION)})
    )
    os.chmod(data_dir / "klay", 0o700)


def write_0600(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def kni(node_id: str, ip: str, ntype: str) -> str:
    return f"kni://{node_id}@{ip}:32323?discport=0&ntype={ntype}"


def free_loopback_net() -> int:
    """A second octet k whose 127.k.0.0/16 no other simulated cell on this machine is using."""
    import random
    import socket

    start = random.randrange(10, 250)
    for k in [*range(start, 250), *range(10, start)]:
        with socket.socket() as probe:
            try:
                probe.bind((f"127.{k}.2.11", paths.SSH_PORT))
                return k
            except OSError:
                continue
    raise RuntimeError("no free 127.k.0.0/16 loopback network for the simulated hosts")


def cloud_cell_names(k: int) -> tuple[str, str, list[str], str]:
    """Core cell ``k`` (from 1) of the cloud scheme: (cell, CN, PNs, region). Cell 1 is the seed's ``cc-cloud``."""
    suffix = "" if k == 1 else f"-c{k}"
    return ("cc-cloud" if k == 1 else f"cc-cloud-{k}", f"cn-aws-1{suffix}", [f"pn-aws-1{suffix}", f"pn-aws-2{suffix}"],
            REGION_2 if k % 2 == 0 else REGION)


class Seeder:
    def __init__(self, world: World, endpoint: str, cloud_cells: int = 1):
        if cloud_cells < 1:
            raise ValueError("cloud_cells must be at least 1")
        self.world = world
        self.endpoint = endpoint
        self.cloud_cells = [cloud_cell_names(k) for k in range(1, cloud_cells + 1)]
        self.net = free_loopback_net()
        self.regions = sorted({region for *_, region in self.cloud_cells} | {REGION})
        self.vpcs: dict[str, dict] = {}  # region -> its EC2 client, subnet, security group, base AMI, SNS topic
        self.key = client_key()
        self.nodes: dict[str, dict] = {}  # name -> facts for the inventory and the env file

    # ----- a host's software -------------------------------------------------------------------------------
    def install(self, host: str, service: str, data_dir: str) -> None:
        """What the operator's package install does: conf and binary (the service is enabled at start)."""
        root = paths.host_root(host)
        binary = "kcn" if service == "kcnd" else "kpn"
        conf = root / "etc" / service / "conf" / f"{service}.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(CONF.format(service=service, data_dir=data_dir))
        (root / "opt" / "kaia").mkdir(parents=True, exist_ok=True)
        (root / "opt" / "kaia" / f"{binary}.version").write_text(VERSION + "\n")

    def data_path(self, host: str, data_dir: str) -> Path:
        """Where DATA_DIR lives seen from outside the host: its mounted volume or its root disk."""
        mounted = self.world.mounts(host).get(data_dir)
        return Path(mounted) if mounted else paths.host_root(host) / data_dir.lstrip("/")

    # ----- EC2 ---------------------------------------------------------------------------------------------
    def network(self, region: str) -> None:
        ec2 = aws_client("ec2", self.endpoint, region)
        vpc = ec2.create_vpc(CidrBlock=f"127.{self.net}.0.0/16")["Vpc"]["VpcId"]
        # Loopback subnets: each instance's private IP is a loopback address its sshd listens on (distinct per region).
        a, b = SUBNETS[region]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=f"127.{self.net}.{a}.0/24",
                                   AvailabilityZone=f"{region}a")["Subnet"]["SubnetId"]
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"127.{self.net}.{b}.0/24", AvailabilityZone=f"{region}b")
        self.vpcs[region] = {
            "ec2": ec2, "zone": f"{region}a", "subnet": subnet,
            "sg": ec2.create_security_group(GroupName="kaia-cn", Description="Kaia CN/PN p2p 32323-32324",
                                            VpcId=vpc)["GroupId"],
            "base_ami": ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"],
            "topic": aws_client("sns", self.endpoint, region).create_topic(Name=SNS_TOPIC)["TopicArn"],
        }

    def tags(self, name: str, cell: str, role: str) -> list[dict]:
        return [{"Key": "Name", "Value": name}, {"Key": "kaia:cell", "Value": cell},
                {"Key": "kaia:role", "Value": role}]

    def ec2_node(self, name: str, cell: str, role: str, service: str, region: str = REGION) -> None:
        data_dir = f"/var/{service}/data"
        vpc = self.vpcs[region]
        ec2 = vpc["ec2"]
        reservation = ec2.run_instances(
            ImageId=vpc["base_ami"], MinCount=1, MaxCount=1, InstanceType="m6i.8xlarge", SubnetId=vpc["subnet"],
            SecurityGroupIds=[vpc["sg"]],
            TagSpecifications=[{"ResourceType": "instance", "Tags": self.tags(name, cell, role)}],
        )
        iid = reservation["Instances"][0]["InstanceId"]
        self.world.hosts[iid].label, self.world.hosts[iid].cell, self.world.hosts[iid].role = name, cell, role
        self.install(iid, service, data_dir)
        volume = ec2.create_volume(
            AvailabilityZone=vpc["zone"], Size=4000, VolumeType="gp3", Iops=9000,
            TagSpecifications=[{"ResourceType": "volume", "Tags": self.tags(f"{name}-data", cell, "data")}],
        )["VolumeId"]
        ec2.get_waiter("volume_available").wait(VolumeIds=[volume], WaiterConfig={"Delay": 0.2, "MaxAttempts": 600})
        ec2.get_waiter("instance_running").wait(InstanceIds=[iid], WaiterConfig={"Delay": 0.2, "MaxAttempts": 600})
        ec2.attach_volume(VolumeId=volume, InstanceId=iid, Device="/dev/sdf")
        self.world.add_fstab(iid, "/dev/sdf", data_dir)
        self.world.mount_op({"host": iid, "op": "mount", "device": "/dev/sdf", "mountpoint": data_dir})
        tags = self.tags(f"{name}-eip", cell, role)
        alloc = ec2.allocate_address(Domain="vpc", TagSpecifications=[{"ResourceType": "elastic-ip", "Tags": tags}])
        ec2.associate_address(AllocationId=alloc["AllocationId"], InstanceId=iid)
        self.nodes[name] = {
            "host": iid, "cell": cell, "role": role, "service": service, "data_dir": data_dir, "instance_id": iid,
            "private_ip": self.world.hosts[iid].private_ip, "ip": alloc["PublicIp"], "volume_id": volume,
            "allocation_id": alloc["AllocationId"],
        }

    def metal_node(self, name: str, cell: str, role: str, service: str, private_ip: str, public_ip: str) -> None:
        self.world.add_host(Host(name=name, kind="metal", label=name, cell=cell, role=role, private_ip=private_ip,
                                 public_ip=public_ip))
        data_dir = f"/var/{service}/data"
        self.install(name, service, data_dir)
        self.world.boot(name)
        self.nodes[name] = {"host": name, "cell": cell, "role": role, "service": service, "data_dir": data_dir,
                            "private_ip": private_ip, "ip": public_ip}

    # ----- keys, chain data and peering ---------------------------------------------------------------------
    def identities(self) -> None:
        head = self.world.head()
        for name, node in self.nodes.items():
            data = self.data_path(node["host"], node["data_dir"])
            key = identity.new_nodekey()
            write_0600(data / "klay" / "nodekey", key)
            node["node_id"] = identity.node_id(key)
            write_chaindata(data, head - 3)

    def static_nodes(self, name: str, peers: list[str]) -> None:
        node = self.nodes[name]
        urls = [kni(self.nodes[p]["node_id"], self.nodes[p]["ip"], "cn" if self.nodes[p]["service"] == "kcnd" else "pn")
                for p in peers]
        (self.data_path(node["host"], node["data_dir"]) / "static-nodes.json").write_text(json.dumps(urls, indent=2))

    def start(self, name: str) -> None:
        node = self.nodes[name]
        result = self.world.run_on_host(node["host"], f"systemctl enable {node['service']} && systemctl start "
                                                      f"{node['service']}")
        if result.returncode != 0:
            raise RuntimeError(f"seeding: {node['service']} on {name} did not start: {result.stderr.strip()}")

    def cloud_cell(self, cell: str, cn: str, pns: list[str], region: str) -> None:
        for name in pns:
            self.ec2_node(name, cell, "pn", "kpnd", region)
        self.ec2_node(cn, cell, "cn-active", "kcnd", region)

    def seed(self) -> None:
        for region in self.regions:
            self.network(region)
        self.cloud_cell(*self.cloud_cells[0])
        self.metal_node("pn-metal-1", "cc-metal", "pn", "kpnd", f"127.{self.net}.2.21", "10.50.0.21")
        self.metal_node("cn-metal-a", "cc-metal", "cn-active", "kcnd", f"127.{self.net}.2.11", "10.50.0.11")
        self.metal_node("cn-metal-b", "cc-metal", "cn-standby", "kcnd", f"127.{self.net}.2.12", "10.50.0.12")
        self.world.run_on_host(
            "cn-metal-a", "ip addr add 10.50.0.100/24 dev eth0 && arping -U -c 3 -I eth0 10.50.0.100 && "
            "ip route replace default via 10.50.0.1 dev eth0 src 10.50.0.100",
        )
        self.nodes["cn-metal-a"]["ip"] = "10.50.0.100"
        for extra in self.cloud_cells[1:]:  # after the default world's nodes, which stay as they were
            self.cloud_cell(*extra)
        self.identities()
        for _, cn, pns, _ in self.cloud_cells:
            for pn in pns:
                self.static_nodes(pn, [cn])
            self.static_nodes(cn, pns)
        self.static_nodes("pn-metal-1", ["cn-metal-a", "cn-metal-b"])  # the PN accepts the standby too
        self.static_nodes("cn-metal-a", ["pn-metal-1"])
        self.static_nodes("cn-metal-b", ["pn-metal-1"])
        for cell, cn in [(cell, cn) for cell, cn, *_ in self.cloud_cells] + [("cc-metal", "cn-metal-a")]:
            self.world.validators[cell] = (self.nodes[cn]["node_id"], self.nodes[cn]["ip"])
        for name in self.nodes:
            self.start(name)
        aws_client("s3", self.endpoint).create_bucket(Bucket=STATE_BUCKET)
        self.wait_in_sync(timeout=max(30, 2 * len(self.nodes)))  # many cells on a small machine peer more slowly

    def wait_in_sync(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            nodes = self.world.status()["nodes"]
            if all(n["running"] and n["peer_count"]["total"] > 0 for n in nodes):
                return
            time.sleep(0.2)
        raise RuntimeError(f"seeding: nodes not peered after {timeout}s: {self.world.status()['nodes']}")

    # ----- what the DAGs are given --------------------------------------------------------------------------
    @staticmethod
    def conn_id(name: str) -> str:
        return "ssh_" + name.replace("-", "_")

    def inventory(self) -> dict:
        def node(name: str) -> dict:
            n = self.nodes[name]
            out = {"name": name, "ssh_conn_id": self.conn_id(name), "data_dir": n["data_dir"], "host": n["private_ip"]}
            if n["service"] == "kcnd":
                out |= {"role": n["role"].split("-")[1], "node_id": n["node_id"],
                        "nodekey_secret_id": f"kaia-ha/{n['cell']}/{name}/nodekey"}
            if "instance_id" in n:
                out |= {"instance_id": n["instance_id"], "data_device": "/dev/sdf"}
                out |= ({"data_volume_id": n["volume_id"]} if n["service"] == "kpnd"
                        else {"elastic_ip_allocation_id": n["allocation_id"]})
            return out

        def cloud(cell: str, cn: str, pns: list[str], region: str) -> dict:
            vpc = self.vpcs[region]
            return {
                "name": cell, "scheme": "cloud", "aws_conn_id": CONN_IDS[region], "region": region,
                "sns_topic_arn": vpc["topic"],
                "cns": [node(cn)], "pns": [node(pn) for pn in pns],
                "launch": {"instance_type": "m6i.8xlarge", "subnet_id": vpc["subnet"],
                           "security_group_ids": [vpc["sg"]], "ssh_conn_template": "ssh_new_cn"},
                "maintenance": {"keep_images": 3, "keep_snapshots": 3},
            }

        return {
            "version": 1,
            "maintenance_schedule": "@daily",
            "state": {"url": f"s3://{STATE_BUCKET}/simcell", "aws_conn_id": CONN_IDS[REGION], "region": REGION},
            "cells": [
                cloud(*self.cloud_cells[0]),
                {
                    "name": "cc-metal", "scheme": "bare-metal", "aws_conn_id": CONN_IDS[REGION], "region": REGION,
                    "sns_topic_arn": self.vpcs[REGION]["topic"],
                    "cns": [node("cn-metal-a"), node("cn-metal-b")], "pns": [node("pn-metal-1")],
                    # gateway: outbound connections must leave from the floating IP (peers allow CNs by source IP)
                    "floating_ip": {"address": "10.50.0.100/24", "interface": "eth0", "gateway": "10.50.0.1"},
                },
                *(cloud(*c) for c in self.cloud_cells[1:]),
            ],
        }

    def env_lines(self, coord_url: str, airflow_home: Path) -> list[str]:
        def export(key: str, value) -> str:
            value = value if isinstance(value, str) else json.dumps(value)
            return f"export {key}='{value}'"

        lines = [
            export("AWS_ENDPOINT_URL", self.endpoint),
            export("AWS_ACCESS_KEY_ID", "testing"),
            export("AWS_SECRET_ACCESS_KEY", "testing"),
            export("AWS_DEFAULT_REGION", REGION),
            export("SIMCELL_COORD", coord_url),
            export("SIMCELL_DIR", str(paths.STATE)),
            export("KAIA_HA_INVENTORY", str(paths.INVENTORY)),
            export("AIRFLOW_HOME", str(airflow_home)),
            *(export(f"AIRFLOW_CONN_{CONN_IDS[region].upper()}",
                     {"conn_type": "aws", "login": "testing", "password": "testing",
                      "extra": {"region_name": region, "endpoint_url": self.endpoint}})
              for region in self.regions),
            # A replacement CN: login, port and key; its address and host key are learned at launch.
            export("AIRFLOW_CONN_SSH_NEW_CN", {"conn_type": "ssh", "login": "root", "port": paths.SSH_PORT,
                                               "extra": {"key_file": str(self.key)}}),
        ]
        for name, node in self.nodes.items():
            host = self.world.hosts[node["host"]]
            conn = {"conn_type": "ssh", "host": host.private_ip, "port": paths.SSH_PORT, "login": "root",
                    "extra": {"key_file": str(self.key), "host_key": host.host_key}}
            lines.append(export("AIRFLOW_CONN_" + self.conn_id(name).upper(), conn))
        return lines

    def write(self, coord_url: str, airflow_home: Path) -> None:
        paths.INVENTORY.write_text(
            "# Generated by `python -m simcell up` for the simulated core cells.\n"
            + yaml.safe_dump(self.inventory(), sort_keys=False)
        )
        paths.ENV_FILE.write_text("\n".join(["# . .simcell/env  (written by `python -m simcell up`)",
                                             *self.env_lines(coord_url, airflow_home)]) + "\n")
