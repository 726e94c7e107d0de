"""A bare-metal active fenced without SSH (its power was off, the operator declared it dead) comes back: it boots its
own configuration, kcnd with the validator key, and reaches the PN (which accepts any CN that dials it): the cell
records double signing. The next readiness run finds it, fences it over SSH at once, records it and alerts URGENT."""

from __future__ import annotations

import pytest

from kaia_ha import live
from kaia_ha.model.inventory import load_inventory

FAILOVER, READINESS = "kaia_cn_failover_standby", "kaia_cn_standby_readiness"


@pytest.fixture(scope="module")
def returned(metal_cell_airflow):
    cell, runner = metal_cell_airflow
    validator = cell.node("cn-metal-a")["node_id"]
    cell.ssh("cn-metal-a", "sudo systemctl stop kcnd")  # a clean stop, then the power goes: kcnd stays enabled at boot
    cell.break_("cn-metal-a", "stop-instance")
    failover = runner.run(FAILOVER, {"failed_cn": "cn-metal-a", "host_known_dead": True})
    while_down = runner.run(READINESS)
    cell.cli("power-on", "cn-metal-a")
    cell.wait_for(lambda: cell.status()["double_signing_events"], timeout=60, what="the returned host double-signing")
    published = len(cell.calls("Publish"))
    back = runner.run(READINESS)
    alerts = [c["params"] for c in cell.calls("Publish")[published:]]
    return cell, runner, validator, failover, while_down, back, alerts


def test_a_host_fenced_without_ssh_is_recorded_and_watched(returned):
    cell, runner, validator, failover, while_down, *_ = returned
    assert failover[1] == "success"
    run_id, _, states = while_down
    assert states[("cc-metal.fenced", -1)][0] == "success"
    metal = next(c for c in runner.report(READINESS, run_id)["cells"] if c["cell"] == "cc-metal")
    assert "does not answer" in metal["fenced"]["cn-metal-a"]


def test_when_it_comes_back_it_is_fenced_over_ssh_at_once_and_alerted_urgent(returned):
    cell, runner, validator, failover, while_down, back, alerts = returned
    run_id, _, states = back
    assert states[("cc-metal.fenced", -1)] == ("failed", 1)  # URGENT: the run shows red, after acting
    a = lambda cmd: cell.ssh("cn-metal-a", cmd, check=False).stdout.strip()  # noqa: E731
    assert a("systemctl is-active kcnd") != "active" and a("systemctl is-enabled kcnd") == "disabled"
    assert a("sudo ls /var/kcnd/data/klay/nodekey /var/kcnd/data/nodekey 2>/dev/null") == ""
    running = [n["name"] for n in cell.status()["nodes"] if n["node_id"] == validator and n["running"]]
    assert running == ["cn-metal-b"]
    urgent = [x for x in alerts
              if x.get("Subject") == "[kaia-ha] URGENT: fenced host cn-metal-a came back running the VALIDATOR key"]
    assert len(urgent) == 1 and "double signing" in urgent[0]["Message"]
    fenced = next(f for f in live.current(load_inventory().cell("cc-metal")).fenced if f.host == "cn-metal-a")
    assert fenced.how.startswith(f"over SSH by {READINESS}") and "VALIDATOR" in fenced.how
