"""The inventory rejects what would go wrong later, naming the field and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kaia_ha.model.inventory import InventoryError, load_inventory, parse_inventory

EXAMPLE = Path(__file__).resolve().parents[2] / "inventory.example.yaml"


def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def errors_of(data: dict) -> str:
    with pytest.raises(InventoryError) as exc:
        parse_inventory(yaml.safe_dump(data), source="inv.yaml")
    return str(exc.value)


def test_the_example_inventory_is_valid():
    inventory = load_inventory(EXAMPLE)
    cloud = inventory.cell("cc-cloud")
    assert cloud.validator.name == "cn-1" and cloud.validator.data_dir == "/var/kcnd/data"
    metal = inventory.cell("cc-metal")
    assert [cn.name for cn in metal.standby_cns] == ["cn-b"]
    assert metal.floating_ip.ip == "10.0.0.100"
    assert inventory.maintenance_schedule == "0 3 * * *"


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d["cells"][0]["cns"][0].update(role="stanby"),
         "cells[0].cns[0].role: Input should be 'active' or 'standby'"),
        (lambda d: d["cells"][0]["cns"][0].update(node_id="abc"), "cells[0].cns[0].node_id: must be the node ID"),
        (lambda d: d["cells"][0]["cns"][0].update(instance_id="i-xyz"),
         "cells[0].cns[0].instance_id: must be an EC2 instance id"),
        (lambda d: d["cells"][0]["cns"][0].update(data_dir="var/kcnd"),
         "cells[0].cns[0].data_dir: must be an absolute path"),
        (lambda d: d["cells"][0]["cns"][0].pop("data_device"), "cns[0].data_device: required for scheme 'cloud'"),
        (lambda d: d["cells"][0].pop("launch"), "launch: required for scheme 'cloud'"),
        (lambda d: d["cells"][1].pop("floating_ip"), "floating_ip: required for scheme 'bare-metal'"),
        (lambda d: d["cells"][1]["cns"][1].update(role="active"), "exactly one CN must have role 'active', found 2"),
        (lambda d: d["cells"][0]["pns"][0].update(name="cn-1"), "'cn-1' appears twice"),
        (lambda d: d["cells"][0]["cns"][0].update(nodkey_secret_id="x"),
         "cells[0].cns[0].nodkey_secret_id: unknown field"),
        (lambda d: d["cells"][1]["floating_ip"].update(address="10.0.0.100"), "needs a prefix length"),
        (lambda d: d["cells"][0]["maintenance"].update(snapshot_pn="pn-9"),
         "maintenance.snapshot_pn: 'pn-9' is not one of this cell's PNs"),
        # One DAG serves every cell: a per-cell schedule would be ignored for all but one cell.
        (lambda d: d["cells"][1].update(maintenance={"schedule": "@hourly"}),
         "cells[1].maintenance.schedule: the maintenance DAG runs every core cell on one schedule; move it to the top "
         "level of the inventory as maintenance_schedule"),
    ],
)
def test_bad_fields_are_named_with_the_fix(mutate, expected):
    data = example()
    mutate(data)
    message = errors_of(data)
    assert message.startswith("inv.yaml: invalid inventory")
    assert expected in message


def test_a_missing_inventory_says_how_to_get_one(tmp_path):
    with pytest.raises(InventoryError, match="set KAIA_HA_INVENTORY"):
        load_inventory(tmp_path / "nope.yaml")


def test_not_yaml_is_said_plainly():
    with pytest.raises(InventoryError, match="not valid YAML"):
        parse_inventory("cells: [", source="inv.yaml")


def test_the_floating_ip_commands_are_templates_checked_at_load_and_quoted_when_filled():
    data = example()
    data["cells"][1]["floating_ip"]["add_cmd"] = "ip addr add {adress} dev {interface}"
    assert "cells[1].floating_ip.add_cmd: unknown placeholder {adress}" in errors_of(data)
    data = example()
    data["cells"][1]["floating_ip"]["gateway"] = "10.0.0.1.5"
    assert "cells[1].floating_ip.gateway: must be the default gateway's address" in errors_of(data)
    data = example()
    data["cells"][1]["floating_ip"] |= {"gateway": "10.0.0.1", "interface": "bond0"}
    fip = parse_inventory(yaml.safe_dump(data)).cell("cc-metal").floating_ip
    assert fip.command("add") == "sudo ip addr add 10.0.0.100/24 dev bond0"
    assert fip.command("announce") == "sudo arping -U -c 3 -I bond0 10.0.0.100"
    assert fip.command("check_free") == "sudo arping -D -c 2 -w 3 -I bond0 10.0.0.100"
    assert fip.command("source") == "sudo ip route replace default via 10.0.0.1 dev bond0 src 10.0.0.100"
    assert fip.command("unsource") == "sudo ip route replace default via 10.0.0.1 dev bond0"
