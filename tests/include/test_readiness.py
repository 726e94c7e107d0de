"""The standby readiness rules, on facts as the hosts would give them."""

from __future__ import annotations

import pytest

from kaia_ha.model.inventory import CN
from kaia_ha.readiness import assess
from kaia_ha.standby import parse_static_nodes

ACTIVE, STANDBY, PN, OTHER = "a" * 128, "b" * 128, "c" * 128, "d" * 128
FLAGS = "dbtype=LevelDB,shards=4,live-pruning=off,single=off"


def cn(name: str, role: str, node_id: str | None) -> CN:
    return CN(name=name, role=role, ssh_conn_id=f"ssh_{name}", node_id=node_id, nodekey_secret_id=f"s/{name}")


def standby_facts(**changes) -> dict:
    facts = {
        "reachable": True, "live_node_id": STANDBY, "disk_node_id": STANDBY, "key_path": "/var/kcnd/data/klay/nodekey",
        "static_nodes_path": "/var/kcnd/data/static-nodes.json",
        "static_nodes": [{"node_id": PN, "ip": "10.0.0.21", "port": 32323, "ntype": "pn"}], "static_nodes_bad": [],
        "sync_ok": True, "sync": [{"name": "pn peers", "ok": True, "detail": "1 PN peers"}], "kcn_version": "v2.2.1",
        "db_flags": FLAGS, "network": "mainnet/", "conf_problems": [], "holds_floating_ip": False,
        "autostart": "enabled",
    }
    return facts | changes


ACTIVE_FACTS = {"cn": "cn-a", "node_id": ACTIVE, "kcn_version": "v2.2.1", "db_flags": FLAGS, "network": "mainnet/"}
BACKUP = {"ok": True, "node_id": ACTIVE, "secret_id": "s/cn-a", "bls": True}


def failed(facts: dict, active: dict | None = ACTIVE_FACTS, backup: dict = BACKUP, pns=None) -> dict[str, str]:
    checks = assess(cn("cn-b", "standby", STANDBY), facts, active, cn("cn-a", "active", ACTIVE), backup,
                    pns or {"pn-1": PN})
    return {c["name"]: c["detail"] for c in checks if c["ok"] is False}


def test_a_ready_standby_has_no_failed_check():
    assert failed(standby_facts()) == {}


@pytest.mark.parametrize("changes, check, words", [
    ({"live_node_id": ACTIVE}, "own identity", "runs with the ACTIVE's node ID"),
    ({"disk_node_id": ACTIVE}, "own identity", "a restart would make it a second validator"),
    ({"disk_node_id": None, "key_path": "malformed"}, "own identity", "silently generate a new identity"),
    ({"disk_node_id": OTHER}, "own identity", "a restart changes its identity"),
    ({"static_nodes_path": None}, "static-nodes.json", "no static-nodes.json"),
    ({"static_nodes": []}, "static-nodes.json", "no entry for PN pn-1"),
    ({"static_nodes_bad": ["kni://xyz@1.2.3.4"]}, "static-nodes.json", "do not parse"),
    ({"sync_ok": False}, "in sync", "pn peers"),
    ({"kcn_version": "v2.2.0"}, "kcn version", "standby v2.2.0, active v2.2.1"),
    ({"db_flags": FLAGS.replace("shards=4", "shards=8")}, "DB flags and network", "shards=8"),
    ({"conf_problems": ["kcnd.conf passes --nodekey"]}, "key path", "--nodekey"),
    ({"holds_floating_ip": True}, "floating IP", "two hosts answering for one address"),
    ({"autostart": "disabled"}, "starts at boot", "after a reboot"),
])
def test_each_kind_of_drift_fails_its_check_and_says_why(changes, check, words):
    found = failed(standby_facts(**changes))
    assert list(found) == [check] and words in found[check]


def test_the_backup_must_exist_and_be_the_node_the_active_runs_as():
    missing = {"ok": False, "detail": "no nodekey backup of cn-a"}
    assert "no nodekey backup" in failed(standby_facts(), backup=missing)["active's key backup"]
    changed = failed(standby_facts(), active=ACTIVE_FACTS | {"node_id": OTHER})
    assert "run kaia_cn_maintenance" in changed["active's key backup"]


def test_an_unreachable_standby_or_active_is_said_plainly():
    assert list(failed({"reachable": False, "detail": "connection refused"})) == ["reachable"]
    checks = assess(cn("cn-b", "standby", STANDBY), standby_facts(), None, cn("cn-a", "active", ACTIVE), BACKUP,
                    {"pn-1": PN})
    assert {c["name"] for c in checks if c["ok"] is None} == {"kcn version", "DB flags and network"}
    unknown_pn = assess(cn("cn-b", "standby", STANDBY), standby_facts(), ACTIVE_FACTS, cn("cn-a", "active", ACTIVE),
                        BACKUP, {"pn-1": None})
    assert next(c for c in unknown_pn if c["name"] == "static-nodes.json")["ok"] is None


def test_static_nodes_parse_kni_and_enode_and_name_what_does_not():
    good, bad = parse_static_nodes(
        f'["kni://{PN}@10.0.0.21:32323?discport=0&ntype=pn", "enode://{OTHER}@10.0.0.22:32323", '
        f'"kni://{PN[:10]}@10.0.0.23:32323", 5]')
    assert [(g["node_id"], g["ip"], g["ntype"]) for g in good] == [(PN, "10.0.0.21", "pn"), (OTHER, "10.0.0.22", None)]
    assert len(bad) == 2
    assert parse_static_nodes("{not json")[1][0].startswith("not JSON")
    assert parse_static_nodes('{"a": 1}')[1] == ["not a JSON array of kni:// URLs"]
