"""The inventory: which core cells the DAGs act on, and how to reach every CN and PN in them.

A YAML file named by ``KAIA_HA_INVENTORY`` (default ``inventory.yaml`` beside ``dags/``). It is read at
DAG parse time, so loading it does nothing but read and validate one small file (cached by mtime).
Every error names the field and says what would be valid, before any DAG touches AWS or a host.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import string
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"
NODE_ID = r"^[0-9a-f]{128}$"
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "inventory.yaml"
DEFAULT_MAINTENANCE_SCHEDULE = "@daily"


class InventoryError(ValueError):
    """The inventory is missing or invalid; the message names the field and the fix."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _absolute(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"must be an absolute path, got {value!r}")
    return value.rstrip("/") or "/"


class Node(_Model):
    """What CNs and PNs share: how to reach the host and where the node keeps its files."""

    name: str = Field(pattern=NAME)
    ssh_conn_id: str = Field(min_length=1)
    instance_id: str | None = Field(default=None, pattern=r"^i-[0-9a-f]{8,17}$")
    host: str | None = None  # bare metal: the host's address (informational; SSH uses ssh_conn_id)
    data_dir: str
    conf_path: str
    service: Literal["kcnd", "kpnd"]
    # How to ask the node a question over IPC; {data_dir} and {expr} are filled in (expr shell-quoted).
    attach_cmd: str = "sudo {binary} attach --datadir {data_dir} --exec {expr}"
    # cloud: where DATA_DIR's volume is attached
    data_device: str | None = Field(default=None, pattern=r"^/dev/[a-z0-9]+$")
    data_volume_id: str | None = Field(default=None, pattern=r"^vol-[0-9a-f]{8,17}$")

    _paths = field_validator("data_dir", "conf_path")(_absolute)

    @property
    def binary(self) -> str:
        return "kcn" if self.service == "kcnd" else "kpn"


class CN(Node):
    role: Literal["active", "standby"]
    service: Literal["kcnd"] = "kcnd"
    data_dir: str = "/var/kcnd/data"
    conf_path: str = "/etc/kcnd/conf/kcnd.conf"
    node_id: str | None = Field(default=None, pattern=NODE_ID)  # expected identity (admin.nodeInfo.id)
    nodekey_secret_id: str = Field(min_length=1)  # Secrets Manager secret holding nodekey + bls-nodekey
    elastic_ip_allocation_id: str | None = Field(default=None, pattern=r"^eipalloc-[0-9a-f]{8,17}$")


class PN(Node):
    service: Literal["kpnd"] = "kpnd"
    data_dir: str = "/var/kpnd/data"
    conf_path: str = "/etc/kpnd/conf/kpnd.conf"


class FloatingIP(_Model):
    """Bare metal: the address that moves with the validator, and the site's commands to move it.

    The defaults assume the floating IP is a secondary address on an interface in one L2 segment with
    both CNs: ``ip addr`` moves it and a gratuitous ARP makes the neighbours (the gateway) send to the new
    holder. Sites that route it otherwise (BGP, a provider API, keepalived) replace the commands. Each
    command is a template over {address} (with prefix length), {ip}, {interface} and {gateway}.
    """

    address: str  # with prefix length, e.g. 10.50.0.100/24
    interface: str = "eth0"
    add_cmd: str = "sudo ip addr add {address} dev {interface}"
    del_cmd: str = "sudo ip addr del {address} dev {interface}"
    announce_cmd: str = "sudo arping -U -c 3 -I {interface} {ip}"
    # Exit 0 when no other host answers for the IP (duplicate address detection); "" skips the check.
    check_free_cmd: str = "sudo arping -D -c 2 -w 3 -I {interface} {ip}"
    # Peers' firewalls allow a CN by SOURCE address, but Linux picks the interface's primary address as the
    # source of outbound connections. With a gateway set, the default route is given the floating IP as
    # source on the new holder (and restored on the old one before the address goes, or the kernel drops it).
    gateway: str | None = None
    source_cmd: str = "sudo ip route replace default via {gateway} dev {interface} src {ip}"
    unsource_cmd: str = "sudo ip route replace default via {gateway} dev {interface}"

    @field_validator("gateway")
    @classmethod
    def _gateway(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ValueError(f"must be the default gateway's address like 10.0.0.1, got {value!r}") from None
        return value

    @field_validator("add_cmd", "del_cmd", "announce_cmd", "check_free_cmd", "source_cmd", "unsource_cmd")
    @classmethod
    def _template(cls, value: str) -> str:
        names = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
        unknown = names - {"address", "ip", "interface", "gateway"}
        if unknown:
            raise ValueError(f"unknown placeholder {{{sorted(unknown)[0]}}}; use {{address}}, {{ip}}, {{interface}} "
                             "or {gateway}")
        return value

    def command(self, which: str) -> str:
        """One of the site's commands with the address filled in (shell-quoted values)."""
        template = getattr(self, f"{which}_cmd")
        values = {"address": self.address, "ip": self.ip, "interface": self.interface, "gateway": self.gateway or ""}
        return template.format(**{k: shlex.quote(v) if v else v for k, v in values.items()})

    @field_validator("address")
    @classmethod
    def _cidr(cls, value: str) -> str:
        try:
            ipaddress.ip_interface(value)
        except ValueError:
            raise ValueError(f"must be an address with prefix length like 10.0.0.100/24, got {value!r}") from None
        if "/" not in value:
            raise ValueError(f"needs a prefix length, like {value}/24")
        return value

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]


class Launch(_Model):
    """Cloud: how a replacement CN is launched from the CN image."""

    instance_type: str = "m6i.8xlarge"
    subnet_id: str = Field(pattern=r"^subnet-[0-9a-f]{8,17}$")
    security_group_ids: list[str] = Field(min_length=1)
    # login, port and key for a new instance; host and host key are learned
    ssh_conn_template: str = Field(min_length=1)
    key_name: str | None = None


class Maintenance(_Model):
    image_max_age_hours: float = Field(default=168, gt=0)
    snapshot_max_age_hours: float = Field(default=24, gt=0)
    keep_images: int = Field(default=3, ge=1)
    keep_snapshots: int = Field(default=3, ge=1)
    snapshot_pn: str | None = None  # which PN to snapshot; None rotates through the cell's PNs
    # How long kpnd may take to stop on its own before a snapshot; past it that PN is skipped (never killed), and
    # another PN is tried only while the whole search stays within pn_stop_budget_seconds.
    pn_stop_limit_seconds: float = Field(default=60, gt=0)
    pn_stop_budget_seconds: float = Field(default=180, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _no_schedule(cls, data):
        # One maintenance DAG serves every cell, so one schedule: a per-cell one would be silently ignored.
        if isinstance(data, dict) and "schedule" in data:
            raise ValueError("schedule: the maintenance DAG runs every core cell on one schedule; move it to the top "
                             "level of the inventory as maintenance_schedule")
        return data


class Watchdog(_Model):
    """How ``kaia_cn_watchdog`` judges the cell's active CN and what it does when the CN is dead."""

    # Consecutive bad rounds before "dead": one dropped SSH session or one slow probe is one bad round at most.
    dead_after_rounds: int = Field(default=3, ge=1, le=100)
    round_seconds: float = Field(default=10, ge=1, le=300)  # between rounds (plus a poke's own time)
    max_head_lag: int = Field(default=10, ge=1)  # blocks the CN may trail its PNs' head (~1 block/s)
    auto_failover: bool = False  # True: the failover starts without an approval (the alert still goes out)
    repeat_alert_minutes: float = Field(default=30, gt=0)  # while still dead (or an immediate alert still holds)
    approval_timeout_minutes: float = Field(default=60, gt=0)


class State(_Model):
    """Where the live placement is kept: one home every worker sees (see kaia_ha.live).

    ``s3://bucket/prefix`` (conditional writes, any number of workers and schedulers) or ``file:///path``
    (one machine only). Reached through ``aws_conn_id`` in ``region``.
    """

    url: str = Field(pattern=r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?|file:///.+)$")
    aws_conn_id: str = "aws_default"
    region: str = "us-east-1"


class Cell(_Model):
    name: str = Field(pattern=NAME)
    scheme: Literal["cloud", "bare-metal"]
    aws_conn_id: str = "aws_default"
    region: str = "us-east-1"
    sns_topic_arn: str | None = Field(default=None, pattern=r"^arn:aws[a-z-]*:sns:")
    cns: list[CN] = Field(min_length=1)
    pns: list[PN] = Field(min_length=1)
    floating_ip: FloatingIP | None = None
    launch: Launch | None = None
    maintenance: Maintenance = Maintenance()
    watchdog: Watchdog = Watchdog()
    # False only where this cell's CN is the network's one CN (a private test network): then a failover's node
    # cannot have CN peers, and only PN peers are required of it.
    network_has_other_cns: bool = True

    @model_validator(mode="after")
    def _shape(self) -> Cell:
        active = [cn.name for cn in self.cns if cn.role == "active"]
        if len(active) != 1:
            raise ValueError(f"cns: exactly one CN must have role 'active', found {len(active)} "
                             f"({', '.join(active) or 'none'})")
        if self.scheme == "cloud":
            if self.launch is None:
                raise ValueError("launch: required for scheme 'cloud' (subnet_id, security_group_ids, "
                                 "ssh_conn_template)")
            for i, node in enumerate([*self.cns, *self.pns]):
                kind = "cns" if i < len(self.cns) else "pns"
                idx = i if i < len(self.cns) else i - len(self.cns)
                for attr in ("instance_id", "data_device"):
                    if getattr(node, attr) is None:
                        raise ValueError(f"{kind}[{idx}].{attr}: required for scheme 'cloud' (node {node.name})")
            for i, pn in enumerate(self.pns):
                if pn.data_volume_id is None:
                    raise ValueError(f"pns[{i}].data_volume_id: required for scheme 'cloud' "
                                     "(the PN volume to snapshot)")
            for i, cn in enumerate(self.cns):
                if cn.role == "active" and cn.elastic_ip_allocation_id is None:
                    raise ValueError(f"cns[{i}].elastic_ip_allocation_id: required for the active CN of a cloud cell")
        elif self.floating_ip is None:
            raise ValueError("floating_ip: required for scheme 'bare-metal' (address, interface)")
        if self.maintenance.snapshot_pn and self.maintenance.snapshot_pn not in {pn.name for pn in self.pns}:
            raise ValueError(f"maintenance.snapshot_pn: {self.maintenance.snapshot_pn!r} is not one of this cell's PNs")
        return self

    @property
    def validator(self) -> CN:
        """The validator's entry: its keys (nodekey_secret_id, node_id) and the node that runs it FIRST. Where it
        runs now is live placement (kaia_ha.live), not this file."""
        return next(cn for cn in self.cns if cn.role == "active")

    def cn(self, name: str) -> CN:
        for cn in self.cns:
            if cn.name == name:
                return cn
        raise InventoryError(f"no CN named {name!r} in core cell {self.name}; its CNs are {[c.name for c in self.cns]}")

    @property
    def standby_cns(self) -> list[CN]:
        return [cn for cn in self.cns if cn.role == "standby"]


class Inventory(_Model):
    version: Literal[1] = 1
    # When kaia_cn_maintenance runs (cron or a preset): one DAG, so one schedule for every cell.
    maintenance_schedule: str = Field(default=DEFAULT_MAINTENANCE_SCHEDULE, min_length=1)
    # Live placement's home; without it, a folder in AIRFLOW_HOME (one machine only).
    state: State | None = None
    cells: list[Cell] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Inventory:
        seen: dict[str, str] = {}  # name -> the field that has it first
        for c, cell in enumerate(self.cells):
            fields = [(f"cells[{c}].name", cell.name),
                      *((f"cells[{c}].cns[{i}].name", n.name) for i, n in enumerate(cell.cns)),
                      *((f"cells[{c}].pns[{i}].name", n.name) for i, n in enumerate(cell.pns))]
            for where, name in fields:
                if name in seen:  # the message names the field, like every other error
                    raise ValueError(f"{where}: {name!r} appears twice (also {seen[name]}); names must be unique "
                                     "across cells and nodes")
                seen[name] = where
        return self

    def cell(self, name: str) -> Cell:
        for cell in self.cells:
            if cell.name == name:
                return cell
        raise InventoryError(f"no core cell named {name!r}; the inventory has {[c.name for c in self.cells]}")

    def cells_of(self, scheme: str) -> list[Cell]:
        return [c for c in self.cells if c.scheme == scheme]

    def find_cn(self, name: str) -> tuple[Cell, CN]:
        for cell in self.cells:
            for cn in cell.cns:
                if cn.name == name:
                    return cell, cn
        raise InventoryError(f"no CN named {name!r}; the inventory's CNs are "
                             f"{[cn.name for c in self.cells for cn in c.cns]}")


HINTS = {
    "node_id": "must be the node ID, the 128 lower-case hex characters of admin.nodeInfo.id",
    "instance_id": "must be an EC2 instance id like i-0123456789abcdef0",
    "data_volume_id": "must be an EBS volume id like vol-0123456789abcdef0",
    "elastic_ip_allocation_id": "must be an Elastic IP allocation id like eipalloc-0123456789abcdef0",
    "subnet_id": "must be a subnet id like subnet-0123456789abcdef0",
    "data_device": "must be a device name like /dev/sdf",
    "name": "must be lower-case letters, digits and dashes (at most 63), starting with a letter or digit",
    "sns_topic_arn": "must be an SNS topic ARN like arn:aws:sns:REGION:ACCOUNT:NAME",
}


def _format(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".") or "(top level)"
        msg = re.sub(r"^Value error, ", "", err["msg"])
        # A model check names the field below its own place ("cns[0].instance_id: ..."): one path, like the rest.
        inner = (re.match(r"^([a-z_]+(?:\[\d+\])?(?:\.[a-z_]+(?:\[\d+\])?)*): (.*)$", msg, re.S)
                 if err["type"] == "value_error" else None)
        if inner:
            where, msg = (inner[1] if where == "(top level)" else f"{where}.{inner[1]}"), inner[2]
        field = next((p for p in reversed(err["loc"]) if isinstance(p, str)), "")
        if err["type"] == "string_pattern_mismatch" and field in HINTS:
            msg = HINTS[field]
        elif err["type"] == "extra_forbidden":
            msg = "unknown field (a typo?); remove it or check the spelling against inventory.example.yaml"
        shown = err["type"] not in ("value_error", "missing") and not isinstance(err.get("input"), dict | list)
        got = f" (got {err['input']!r})" if shown else ""
        lines.append(f"  {where}: {msg}{got}")
    return "\n".join(lines)


def parse_inventory(text: str, source: str = "<inventory>") -> Inventory:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InventoryError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise InventoryError(f"{source}: must be a mapping with 'version' and 'cells'")
    try:
        return Inventory.model_validate(data)
    except ValidationError as exc:
        raise InventoryError(f"{source}: invalid inventory:\n{_format(exc)}") from None


def inventory_path() -> Path:
    return Path(os.environ.get("KAIA_HA_INVENTORY") or DEFAULT_PATH)


@lru_cache(maxsize=4)
def _load(path: str, mtime: float) -> Inventory:
    return parse_inventory(Path(path).read_text(), source=path)


def try_load_inventory() -> tuple[Inventory | None, str | None]:
    """At DAG parse time: ``(inventory, None)``, or ``(None, the error naming the field)``. A DAG must still parse
    with a broken inventory, so that its page shows the error and its first task fails with it."""
    try:
        return load_inventory(), None
    except InventoryError as exc:
        return None, str(exc)


def load_inventory(path: str | Path | None = None) -> Inventory:
    path = Path(path) if path else inventory_path()
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        raise InventoryError(
            f"inventory not found at {path}: set KAIA_HA_INVENTORY to your inventory file "
            "(the simulated cell writes one: `make simcell-up`, then `. .simcell/env`)"
        ) from None
    return _load(str(path), mtime)
