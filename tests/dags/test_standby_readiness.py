"""The standby readiness DAG against the simulated core cell: a ready standby passes; drift is reported with
the reason and alerted by SNS. Changes made here are undone, so the session's cell stays as seeded."""

from __future__ import annotations

import json

import pytest

DAG_ID = "kaia_cn_standby_readiness"
STATIC = "/var/kcnd/data/static-nodes.json"


@pytest.fixture(scope="module")
def ready_cell(airflow, cell):
    """The active's keys backed up, as the maintenance DAG does (its own step; idempotent)."""
    from kaia_ha import maintenance

    maintenance.backup_nodekey("cc-metal", "readiness-test")
    return cell, airflow


def checks(report: dict, standby: str = "cn-metal-b") -> dict[str, dict]:
    cell = next(c for c in report["cells"] if c["cell"] == "cc-metal")
    return {c["name"]: c for c in next(s for s in cell["standbys"] if s["standby"] == standby)["checks"]}


def test_a_ready_standby_passes_every_check(ready_cell):
    cell, airflow = ready_cell
    run_id, state, states = airflow.run(DAG_ID)
    assert state == "success", states
    found = checks(airflow.report(DAG_ID, run_id))
    assert {name for name, c in found.items() if c["ok"] is True} == {
        "active's key backup", "own identity", "static-nodes.json", "in sync", "kcn version", "DB flags and network",
        "key path", "floating IP", "starts at boot"}


def test_a_standby_without_the_pns_in_static_nodes_and_on_another_kcn_is_reported_and_alerted(ready_cell):
    cell, airflow = ready_cell
    original = cell.ssh("cn-metal-b", f"cat {STATIC}").stdout
    pn = cell.node("pn-metal-1")["node_id"]
    # The PN's entry lost in an edit, a typo in another, and the standby left behind at an upgrade.
    drifted = [url for url in json.loads(original) if pn not in url] + ["kni://not-a-node-id@10.50.0.21:32323?ntype=pn"]
    cell.ssh("cn-metal-b", f"sudo tee {STATIC} >/dev/null", stdin=json.dumps(drifted))
    cell.ssh("cn-metal-b", "echo v2.2.0 | sudo tee /opt/kaia/kcn.version >/dev/null")
    published = len(cell.calls("Publish"))
    try:
        run_id, state, states = airflow.run(DAG_ID)
    finally:
        cell.ssh("cn-metal-b", f"sudo tee {STATIC} >/dev/null", stdin=original)
        cell.ssh("cn-metal-b", "echo v2.2.1 | sudo tee /opt/kaia/kcn.version >/dev/null")
    assert state == "failed"
    assert states[("cc-metal.standbys", -1)] == ("failed", 1)  # drift is not retried (one alert, not three)
    found = checks(airflow.report(DAG_ID, run_id))
    static = found["static-nodes.json"]
    assert static["ok"] is False
    assert f"no entry for PN pn-metal-1 (node {pn[:16]}" in static["detail"] and "do not parse" in static["detail"]
    assert "would not sync from the cell's PNs" in static["detail"]
    assert found["kcn version"]["ok"] is False and "standby v2.2.0, active v2.2.1" in found["kcn version"]["detail"]
    assert found["in sync"]["ok"] is True  # the running node still syncs: only a restart would read the file
    alerts = [c["params"] for c in cell.calls("Publish")[published:]]
    drift = [a for a in alerts if a.get("Subject") == "[kaia-ha] standby of cc-metal is not ready for a failover"]
    assert len(drift) == 1 and "static-nodes.json" in drift[0]["Message"] and "kcn version" in drift[0]["Message"]
