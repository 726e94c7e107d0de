"""The watchdog's judgement of one round, from the views alone (no hosts): what counts towards dead, what only
degrades, what is raised at once; and the watchdog block of the inventory."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from kaia_ha import watchdog
from kaia_ha.model.inventory import InventoryError, load_inventory, parse_inventory
from kaia_ha.model.placement import initial

EXAMPLE = Path(__file__).resolve().parents[2] / "inventory.example.yaml"


@pytest.fixture
def cloud():
    cell = load_inventory(EXAMPLE).cell("cc-cloud")
    return cell, initial(cell)


def views(cn=None, pns=None, ec2_state="running", fenced=()):
    node_id = load_inventory(EXAMPLE).cell("cc-cloud").validator.node_id
    return {
        "cn": cn or {"answers": True, "running": True, "node_id": node_id, "block": 100,
                     "peers": {"cn": 5, "pn": 2, "total": 7}},
        "pns": pns or {name: {"answers": True, "running": True, "block": 101, "peers": {"cn": 1, "pn": 3, "total": 4}}
                       for name in ("pn-1", "pn-2")},
        "ec2": {"instance_id": "i-0123456789abcdef0", "state": ec2_state, "checks": {}},
        "fenced_alive": list(fenced),
    }


def test_a_healthy_cn_gives_no_reason(cloud):
    found = watchdog.judge(*cloud, views())
    assert found["bad"] == found["degraded"] == found["immediate"] == []
    assert any(e.startswith("CN i-0123456789abcdef0: block 100") for e in found["evidence"])


def test_a_pn_down_for_a_pre_snapshot_only_degrades(cloud):
    v = views()
    v["pns"]["pn-1"] = {"answers": True, "running": False, "detail": "kpnd is inactive"}
    found = watchdog.judge(*cloud, v)
    assert found["bad"] == [] and found["degraded"] == ["PN pn-1 gives no view (kpnd is inactive)"]


@pytest.mark.parametrize("change, reason", [
    ({"cn": {"answers": False, "running": None, "detail": "SSH: refused"}}, "does not answer over SSH"),
    ({"cn": {"answers": True, "running": False, "detail": "kcnd is inactive"}}, "kcnd is not running"),
    ({"ec2_state": "stopped"}, "EC2 says instance i-0123456789abcdef0 is stopped"),
])
def test_each_way_of_dying_is_a_bad_round(cloud, change, reason):
    found = watchdog.judge(*cloud, views(**change))
    assert any(reason in r for r in found["bad"]), found


def test_a_stalled_head_is_a_bad_round(cloud):
    v = views()
    v["cn"]["block"] = 50  # 51 behind its PNs (limit 10)
    assert any("trails its PNs' 101" in r for r in watchdog.judge(*cloud, v)["bad"])


def test_another_node_id_isolation_and_a_fenced_node_alive_are_raised_at_once(cloud):
    v = views(fenced=["fenced instance i-0aaa (cn-1) is running again"])
    v["cn"] |= {"node_id": "ab" * 64, "peers": {"pn": 2, "total": 2}}
    kinds = [kind for kind, _ in watchdog.judge(*cloud, v)["immediate"]]
    assert kinds == ["identity", "isolated", "fenced"]


def test_an_unreachable_cn_still_seen_by_its_pns_is_said_so(cloud):
    found = watchdog.judge(*cloud, views(cn={"answers": False, "running": None, "detail": "SSH: refused"}))
    assert any("kcnd may still run" in e for e in found["evidence"])


def test_a_metal_cn_is_not_said_alive_because_its_pns_see_the_standby():
    cell = load_inventory(EXAMPLE).cell("cc-metal")
    v = views(cn={"answers": False, "running": None, "detail": "SSH: refused"},
              pns={"pn-a": {"answers": True, "running": True, "block": 9, "peers": {"cn": 1, "total": 1}}})
    del v["ec2"]
    assert not any("kcnd may still run" in e for e in watchdog.judge(cell, initial(cell), v)["evidence"])


def test_the_watchdog_block_is_checked_with_the_field_named():
    text = EXAMPLE.read_text().replace("dead_after_rounds: 3", "dead_after_rounds: 0")
    with pytest.raises(InventoryError, match=r"cells\[0\]\.watchdog\.dead_after_rounds"):
        parse_inventory(text)
    cell = load_inventory(EXAMPLE).cell("cc-metal")  # no block: the defaults
    assert (cell.watchdog.dead_after_rounds, cell.watchdog.auto_failover) == (3, False)


def test_a_round_is_done_on_dead_or_after_its_share():
    assert watchdog.round_done({"verdict": "dead", "run_rounds": 1}, 3)
    assert not watchdog.round_done({"verdict": "degraded", "run_rounds": 2}, 3)
    assert watchdog.round_done({"verdict": "healthy", "run_rounds": 3}, 3)


@pytest.fixture
def rounds(tmp_path, monkeypatch, cloud):
    """watch_round with the views given by the test and the counter in a file store (no hosts, no AWS)."""
    from kaia_ha import live
    from kaia_ha_airflow.hooks.state import StateStore

    cell, placement = cloud
    st = StateStore(f"file://{tmp_path}/state")
    sent = []
    state = {"views": views(), "placement": placement}
    monkeypatch.setattr(live, "store", lambda: st)
    monkeypatch.setattr(live, "current", lambda c, s=None: state["placement"])
    monkeypatch.setattr(watchdog, "observe", lambda c, p: state["views"])
    monkeypatch.setattr(watchdog, "load_inventory", lambda: load_inventory(EXAMPLE))
    monkeypatch.setattr(watchdog, "notify", lambda c, subject, message: sent.append(subject))
    return state, sent, lambda run="r1": watchdog.watch_round(cell.name, run)


def test_dead_only_after_consecutive_bad_rounds_and_a_good_round_starts_over(rounds):
    state, sent, watch_round = rounds
    down = views(cn={"answers": False, "running": None, "detail": "SSH: refused"})
    state["views"] = down
    assert [watch_round()["verdict"] for _ in range(2)] == ["degraded", "degraded"]
    state["views"] = views()  # one good round between: the count starts over
    assert watch_round()["verdict"] == "healthy"
    state["views"] = down
    verdicts = [watch_round() for _ in range(3)]
    assert [v["verdict"] for v in verdicts] == ["degraded", "degraded", "dead"]
    assert verdicts[-1]["bad_since"] == verdicts[0]["bad_since"] and sent == []  # dead opens an approval, no alert here


def test_a_new_active_after_a_failover_is_judged_afresh(rounds, cloud):
    from kaia_ha.model.placement import Active

    state, _, watch_round = rounds
    state["views"] = views(cn={"answers": False, "running": None, "detail": "SSH: refused"})
    assert [watch_round()["verdict"] for _ in range(2)] == ["degraded", "degraded"]
    state["placement"] = cloud[1].model_copy(update={"active": Active(host="cn-1", instance_id="i-0bbbbbbbbbbbbbbbb")})
    verdict = watch_round()
    assert (verdict["active"], verdict["bad_rounds"]) == ("i-0bbbbbbbbbbbbbbbb", 1)


def test_an_immediate_alert_is_sent_once_while_it_holds(rounds):
    state, sent, watch_round = rounds
    state["views"] = views()
    state["views"]["cn"]["node_id"] = "ab" * 64
    watch_round(), watch_round()
    assert len(sent) == 1 and sent[0].startswith("[kaia-ha] cc-cloud: cn-1 on i-0123456789abcdef0 runs node ID")
    state["views"] = views()
    watch_round()  # cleared
    state["views"]["cn"]["node_id"] = "ab" * 64
    watch_round()
    assert len(sent) == 2


# ----- one round over every cell (the one watch task's poke) ----------------------------------------------------------
@pytest.fixture
def all_cells(tmp_path, monkeypatch):
    """watch_cells over the example's two cells: each cell's views given by the test (a callable may raise), the
    records in a file store."""
    from kaia_ha import live
    from kaia_ha_airflow.hooks.state import StateStore

    st = StateStore(f"file://{tmp_path}/state")
    probed: list[str] = []
    metal = load_inventory(EXAMPLE).cell("cc-metal")
    metal_views = views(pns={"pn-a": {"answers": True, "running": True, "block": 101,
                                      "peers": {"cn": 1, "pn": 3, "total": 4}}})
    metal_views["cn"]["node_id"] = metal.validator.node_id or metal_views["cn"]["node_id"]
    del metal_views["ec2"]
    by_cell = {"cc-cloud": views(), "cc-metal": metal_views}

    def observe(cell, placement):
        probed.append(cell.name)
        found = by_cell[cell.name]
        return found() if callable(found) else found

    monkeypatch.setattr(live, "store", lambda: st)
    monkeypatch.setattr(live, "current", lambda c, s=None: initial(c))
    monkeypatch.setattr(watchdog, "observe", observe)
    monkeypatch.setattr(watchdog, "load_inventory", lambda: load_inventory(EXAMPLE))
    monkeypatch.setattr(watchdog, "notify", lambda c, subject, message: None)
    return by_cell, probed, st


def test_one_cells_probe_raising_is_its_bad_round_and_the_others_are_judged(all_cells):
    by_cell, probed, _ = all_cells

    def boom():
        raise RuntimeError("paramiko blew up")

    by_cell["cc-metal"] = boom
    verdicts = watchdog.watch_cells("r1", rounds_per_run=1)
    assert set(verdicts) == {"cc-cloud", "cc-metal"} and sorted(probed) == ["cc-cloud", "cc-metal"]
    assert verdicts["cc-cloud"]["verdict"] == "healthy", verdicts["cc-cloud"]
    metal = verdicts["cc-metal"]
    assert (metal["verdict"], metal["bad_rounds"], metal["run_rounds"]) == ("degraded", 1, 1), metal
    assert metal["reasons"] == ["the round's probe failed (RuntimeError: paramiko blew up)"]
    assert watchdog.cells_done(verdicts, ["cc-cloud", "cc-metal"])


def test_a_cell_is_probed_only_when_due_and_until_its_share_is_done(all_cells, monkeypatch):
    _, probed, _ = all_cells
    first = watchdog.watch_cells("r1", rounds_per_run=2)
    assert sorted(probed) == ["cc-cloud", "cc-metal"] and not watchdog.cells_done(first, ["cc-cloud", "cc-metal"])
    probed.clear()
    again = watchdog.watch_cells("r1", rounds_per_run=2)  # at once: neither is due, their last verdicts stand
    assert probed == [] and again == first
    later = watchdog._now() + timedelta(seconds=10)
    monkeypatch.setattr(watchdog, "_now", lambda: later)
    second = watchdog.watch_cells("r1", rounds_per_run=2)
    assert sorted(probed) == ["cc-cloud", "cc-metal"] and {v["run_rounds"] for v in second.values()} == {2}
    assert watchdog.cells_done(second, ["cc-cloud", "cc-metal"])
    probed.clear()
    monkeypatch.setattr(watchdog, "_now", lambda: later + timedelta(seconds=10))
    assert watchdog.watch_cells("r1", rounds_per_run=2) == second and probed == []  # its share is done
    assert {v["run_rounds"] for v in watchdog.watch_cells("r2", rounds_per_run=2).values()} == {1}  # a new run


def test_the_run_ends_on_a_cell_turned_dead_and_waits_for_a_cell_not_yet_judged():
    healthy = {"verdict": "healthy", "run_rounds": 1, "run_share": 4, "bad_rounds": 0, "dead_after_rounds": 3}
    assert not watchdog.cells_done({"a": healthy}, ["a", "b"])
    assert watchdog.cells_done({"a": healthy | {"verdict": "dead", "bad_rounds": 3}}, ["a", "b"])
    # still dead from earlier runs (its approval open): the others keep their rounds
    still = healthy | {"verdict": "dead", "bad_rounds": 7}
    assert not watchdog.cells_done({"a": still, "b": healthy}, ["a", "b"])
    assert watchdog.cells_done({"a": still, "b": healthy | {"run_rounds": 4}}, ["a", "b"])
    assert not watchdog.cells_done({"a": healthy | {"run_rounds": 4}}, ["a", "b"])
    assert watchdog.cells_done({"a": healthy | {"run_rounds": 4}, "b": healthy | {"run_rounds": 4}}, ["a", "b"])


def test_no_cell_round_done_fails_the_watch(all_cells, monkeypatch):
    from kaia_ha import live

    monkeypatch.setattr(live, "current", lambda c, s=None: (_ for _ in ()).throw(OSError("store unreadable")))
    monkeypatch.setattr(watchdog, "load_record", lambda c, st=None: (_ for _ in ()).throw(OSError("store unreadable")))
    with pytest.raises(RuntimeError, match="no cell's round could be done"):
        watchdog.watch_cells("r1")


def test_reschedule_mode_only_for_waits_of_at_least_the_minimum():
    from kaia_ha_airflow.dag_defaults import RESCHEDULE_MIN_SECONDS, wait

    assert wait(RESCHEDULE_MIN_SECONDS) == {"mode": "reschedule", "poke_interval": RESCHEDULE_MIN_SECONDS}
    assert wait(1) == {"mode": "poke", "poke_interval": 1}


def test_an_alert_that_cannot_be_sent_still_counts_the_round_and_is_tried_again(rounds, monkeypatch):
    state, sent, watch_round = rounds

    def sns_down(cell, subject, message):
        raise RuntimeError("SNS unreachable")

    monkeypatch.setattr(watchdog, "notify", sns_down)
    state["views"] = views(cn={"answers": False, "running": None, "detail": "SSH: refused"})
    state["views"]["fenced_alive"] = ["fenced instance i-0f (cn-1) is running again"]
    first = watch_round()
    assert first["bad_rounds"] == 1 and first["alerted"] == []
    monkeypatch.setattr(watchdog, "notify", lambda c, subject, message: sent.append(subject))
    second = watch_round()
    assert second["bad_rounds"] == 2 and second["alerted"] and len(sent) == 1


def test_a_cell_with_a_period_longer_than_a_run_does_not_hold_the_others():
    healthy = {"verdict": "healthy", "bad_rounds": 0, "dead_after_rounds": 3, "run_rounds": 4, "run_share": 4}
    assert not watchdog.cells_done({"a": healthy}, ["a", "b"])  # b is due every run: wait for it
    assert watchdog.cells_done({"a": healthy}, ["a", "b"], every_run={"a"})  # b is due every 2 minutes
