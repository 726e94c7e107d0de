"""The live placement: it starts from the inventory, a change is written once per run, and a writer that acted on
an older generation loses instead of overwriting (file store here; S3 through the simulated AWS in tests/dags)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from kaia_ha import live
from kaia_ha.model.inventory import load_inventory
from kaia_ha.model.placement import Active, Fenced, Standby, after_enrolment, after_failover
from kaia_ha_airflow.hooks.state import StateStore

EXAMPLE = Path(__file__).resolve().parents[2] / "inventory.example.yaml"


@pytest.fixture
def cells():
    inventory = load_inventory(EXAMPLE)
    return inventory.cell("cc-cloud"), inventory.cell("cc-metal")


@pytest.fixture
def store(tmp_path):
    return StateStore(f"file://{tmp_path}/state")


def fenced(host: str, instance_id: str | None = None, run: str = "r1") -> Fenced:
    return Fenced(host=host, instance_id=instance_id, run_id=run, dag_id="d", at="2026-12-02T00:00:00+00:00",
                  how="test")


def test_a_cell_nobody_changed_is_placed_as_the_inventory_says(cells, store):
    cloud, metal = cells
    placement = live.current(metal, store)
    assert placement.generation == 0 and placement.active.host == "cn-a"
    assert [s.host for s in placement.standbys] == ["cn-b"] and placement.fenced == []
    assert live.current(cloud, store).active.instance_id == cloud.validator.instance_id
    assert live.history(metal, store) == []


def test_a_failover_then_an_enrolment_leave_the_cell_protected_again(cells, store):
    _, metal = cells
    after = live.update(metal, lambda p: after_failover(p, Active(host="cn-b"), fenced("cn-a")), dag_id="failover",
                        run_id="r1", why="cn-a died", since=0, st=store)
    assert after.generation == 1 and after.active.host == "cn-b" and after.standbys == []
    assert after.is_fenced("cn-a") and after.change.before == "cn-a on cn-a; standby cn-b; fenced none"
    enrolled = live.update(metal, lambda p: after_enrolment(p, Standby(host="cn-a", node_id="ab" * 64)), dag_id="enrol",
                           run_id="r2", why="repaired", since=1, st=store)
    assert enrolled.standby("cn-a").node_id == "ab" * 64 and not enrolled.is_fenced("cn-a")
    assert [p.generation for p in live.history(metal, store)] == [1, 2]
    assert live.current(metal, store) == enrolled


def test_a_retry_of_the_same_run_writes_nothing_more(cells, store):
    cloud, _ = cells

    def change(p):
        return after_failover(p, Active(host="cn-1", instance_id="i-0aaaaaaaaaaaaaaaa"), fenced("cn-1", "i-1"))

    first = live.update(cloud, change, dag_id="failover", run_id="r1", why="x", since=0, st=store)
    again = live.update(cloud, change, dag_id="failover", run_id="r1", why="x", since=0, st=store)
    assert again == first and len(live.history(cloud, store)) == 1


def test_a_run_that_acted_on_an_older_placement_records_nothing(cells, store):
    cloud, _ = cells
    live.update(cloud, lambda p: p.next(), dag_id="failover", run_id="r1", why="first", since=0, st=store)
    with pytest.raises(live.PlacementConflict, match=r"generation 0 -> 1, by failover run r1.*NOT recorded"):
        live.update(cloud, lambda p: p.next(), dag_id="failover", run_id="r2", why="second", since=0, st=store)
    assert live.current(cloud, store).change.run_id == "r1"


def test_two_writers_at_once_one_wins_the_other_fails_clearly(cells, store):
    cloud, _ = cells
    outcomes: list[str] = []

    def write(run: str) -> None:
        try:
            live.update(cloud, lambda p: p.next(), dag_id="failover", run_id=run, why=run, since=0, st=store)
            outcomes.append("won")
        except live.PlacementConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=write, args=(f"r{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict"] * 5 + ["won"]
    assert [p.generation for p in live.history(cloud, store)] == [1]
