"""The honest sync check: `kaia.syncing == false` alone proves nothing."""

from __future__ import annotations

from kaia_ha.model.health import Probe, assess_sync, parse_console_json

ID = "a" * 128


def probe(block, peers, syncing=False, node_id=ID):
    return Probe(syncing, block, peers, node_id, "blspub")


def test_console_output_of_json_stringify_is_a_quoted_string():
    assert parse_console_json('"{\\"a\\":1}"\n') == {"a": 1}
    assert parse_console_json("5\n") == 5


def test_zero_peers_and_not_syncing_is_not_in_sync():
    verdict = assess_sync(probe(100, {"total": 0}), probe(100, {"total": 0}), 150, expected_node_id=ID)
    assert not verdict.ok
    assert any("0 peers" in f for f in verdict.failed())


def test_in_sync_needs_identity_pn_peers_near_head_and_rising():
    good = assess_sync(probe(100, {"pn": 2, "total": 2}), probe(103, {"pn": 2, "total": 2}), 104, expected_node_id=ID)
    assert good.ok, good.summary()
    wrong = assess_sync(probe(100, {"pn": 2, "total": 2}), probe(103, {"pn": 2, "total": 2}, node_id="b" * 128), 104,
                        expected_node_id=ID)
    assert "another nodekey" in " ".join(wrong.failed())
    stuck = assess_sync(probe(100, {"pn": 2, "total": 2}), probe(100, {"pn": 2, "total": 2}), 101, expected_node_id=ID)
    assert not stuck.ok and "head rising" in stuck.summary()
    behind = assess_sync(probe(90, {"pn": 2, "total": 2}), probe(95, {"pn": 2, "total": 2}), 200, expected_node_id=ID)
    assert not behind.ok
    no_cn = assess_sync(probe(100, {"pn": 2, "total": 2}), probe(103, {"pn": 2, "total": 2}), 104, expected_node_id=ID,
                        need_peer_types=("pn", "cn"))
    assert not no_cn.ok and "0 CN peers" in " ".join(no_cn.failed())
