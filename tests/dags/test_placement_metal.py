"""High availability as a cycle on bare metal: a failover leaves the cell without a standby and readiness says so;
enrolling the repaired old active makes it the standby again (its own fresh identity, never the validator's);
readiness passes; a second failover fails back to it. No file is edited."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from kaia_ha import live
from kaia_ha.model.inventory import load_inventory

FAILOVER, READINESS, ENROL = "kaia_cn_failover_standby", "kaia_cn_standby_readiness", "kaia_cn_enroll_standby"


@pytest.fixture(scope="module")
def cycle(metal_cell_airflow):
    cell, runner = metal_cell_airflow
    inventory = Path(cell.read_env()["KAIA_HA_INVENTORY"])
    digest = hashlib.sha256(inventory.read_bytes()).hexdigest()
    before = {n["name"]: n for n in cell.status()["nodes"]}
    published = len(cell.calls("Publish"))
    started = time.monotonic()
    # kcnd stopped for good on the active (a clean stop: the host is repaired and reused below).
    cell.ssh("cn-metal-a", "sudo systemctl disable --now kcnd")
    runs = {"failover 1": runner.run(FAILOVER, {"failed_cn": "cn-metal-a"})}
    runs["readiness without standby"] = runner.run(READINESS)
    runs["alerts"] = [c["params"] for c in cell.calls("Publish")[published:]]
    runs["enrol"] = runner.run(ENROL, {"host": "cn-metal-a"})
    runs["enrolled"] = live.current(load_inventory().cell("cc-metal"))
    runs["enrolled log"] = cell.ssh("cn-metal-a", "sudo tac /var/log/kcnd/kcnd.out | sed '/Starting kcn/q'").stdout
    runs["readiness with standby"] = runner.run(READINESS)
    cell.break_("cn-metal-b", "kill")
    runs["failover 2"] = runner.run(FAILOVER, {"failed_cn": "cn-metal-a"})
    print(f"\nbare-metal cycle (failover, readiness, enrol, readiness, fail back): {time.monotonic() - started:.0f} s")
    return cell, runner, before, runs, inventory, digest


def outcome(run) -> str:
    _, state, states = run
    return state if state == "success" else f"{state}: {sorted(k[0] for k, v in states.items() if v[0] == 'failed')}"


def test_after_a_failover_readiness_alerts_that_the_cell_has_no_standby(cycle):
    cell, runner, before, runs, *_ = cycle
    assert outcome(runs["failover 1"]) == "success"
    run_id, state, states = runs["readiness without standby"]
    assert state == "failed" and states[("cc-metal.standbys", -1)][0] == "failed"
    assert states[("cc-metal.active", -1)][0] == "success"  # the promoted standby is checked as the active now
    report = runner.report(READINESS, run_id)
    metal = next(c for c in report["cells"] if c["cell"] == "cc-metal")
    assert metal["active"]["cn"] == "cn-metal-b" and metal["standbys"][0]["standby"] == "(none)"
    assert any(a.get("Subject") == "[kaia-ha] cc-metal has NO standby" and "kaia_cn_enroll_standby" in a["Message"]
               for a in runs["alerts"])


def test_the_enrolled_host_stands_by_with_a_fresh_identity_of_its_own(cycle):
    cell, runner, before, runs, *_ = cycle
    assert outcome(runs["enrol"]) == "success"
    validator, old_standby = before["cn-metal-a"]["node_id"], before["cn-metal-b"]["node_id"]
    standby = runs["enrolled"].standby("cn-metal-a")
    assert standby is not None and standby.node_id not in (validator, old_standby)
    assert not runs["enrolled"].is_fenced("cn-metal-a")
    assert "Generated nodekey" in runs["enrolled log"]  # the node made its own key: the validator's stayed aside
    assert cell.ssh("cn-metal-a", "sudo ls /var/kcnd/data.keys-aside").stdout.strip()  # kept, not shredded (not asked)
    assert outcome(runs["readiness with standby"]) == "success"


def test_failing_back_to_the_enrolled_host_is_an_ordinary_failover(cycle):
    cell, runner, before, runs, inventory, digest = cycle
    assert outcome(runs["failover 2"]) == "success"
    validator = before["cn-metal-a"]["node_id"]
    status = cell.status()
    running = [n["name"] for n in status["nodes"] if n["node_id"] == validator and n["running"]]
    assert running == ["cn-metal-a"] and status["floating_ips"]["10.50.0.100"] == "cn-metal-a"
    assert status["double_signing_events"] == []
    placement = live.current(load_inventory().cell("cc-metal"))
    assert placement.generation == 3 and placement.active.host == "cn-metal-a" and placement.standbys == []
    assert placement.is_fenced("cn-metal-b")
    assert [p.change.dag_id for p in live.history(load_inventory().cell("cc-metal"))] == [FAILOVER, ENROL, FAILOVER]
    assert hashlib.sha256(inventory.read_bytes()).hexdigest() == digest
