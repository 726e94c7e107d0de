"""Keys are validated, derive the right node ID, and never show their value."""

from __future__ import annotations

import pickle
import secrets

import pytest
from airflow.sdk._shared.secrets_masker import redact

from kaia_ha.model.keys import BlsKey, InvalidKeyError, KeyBackup, NodeKey

# secp256k1 test vector: private key 1 -> the generator point G.
ONE = "0" * 63 + "1"
G = ("79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
     "483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8")
KEY = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"


def test_node_id_is_the_uncompressed_public_key():
    assert NodeKey(ONE).node_id == G


def test_a_trailing_newline_is_harmless_like_on_the_node():
    assert NodeKey(KEY + "\n") == NodeKey(KEY)


@pytest.mark.parametrize("raw", ["", "0x" + KEY[:62], KEY[:63], KEY[:63] + "g", KEY + "junk", "0" * 64])
def test_a_malformed_key_is_refused_without_quoting_it(raw):
    with pytest.raises(InvalidKeyError) as exc:
        NodeKey(raw)
    if len(raw) >= 16:
        assert raw[:16] not in str(exc.value)


def test_repr_str_and_pickle_never_reveal_the_key():
    key = NodeKey(KEY)
    for text in (repr(key), str(key), f"{key}", repr(BlsKey(KEY)), repr(KeyBackup(key, BlsKey(KEY), None, "cn")) ):
        assert KEY not in text
    with pytest.raises(TypeError):
        pickle.dumps(key)


def test_backup_round_trip_and_tamper_detection():
    backup = KeyBackup(NodeKey(KEY), BlsKey(ONE), "pub", "cn-1")
    again = KeyBackup.from_secret_string(backup.to_secret_string(), "s")
    assert again.same_keys(backup) and again.node_id == backup.node_id
    tampered = backup.to_secret_string().replace(backup.node_id, "0" * 128)
    with pytest.raises(InvalidKeyError, match="does not match"):
        KeyBackup.from_secret_string(tampered, "s")
    with pytest.raises(InvalidKeyError) as exc:
        KeyBackup.from_secret_string('{"nodekey": "%s"}' % KEY[:60], "s")
    assert KEY[:60] not in str(exc.value)


def test_a_key_from_a_secret_is_masked_in_logs_without_the_caller_asking():
    nodekey, bls = secrets.token_hex(32), secrets.token_hex(32)  # new values: nothing masked them before
    text = KeyBackup(NodeKey(nodekey), BlsKey(bls), None, "cn").to_secret_string()
    KeyBackup.from_secret_string(text, "s")
    assert redact(f"nodekey={nodekey} bls={bls}") == "nodekey=*** bls=***"


def test_a_key_read_from_a_host_is_masked_in_logs(cell, tmp_path):
    from cellkit import AirflowRunner
    from kaia_ha.model.inventory import load_inventory
    from kaia_ha_airflow.hooks.kaia_node import KaiaNodeHook

    with AirflowRunner(cell, tmp_path):
        node = KaiaNodeHook(load_inventory().cell("cc-metal").validator)
        try:
            key, path = node.read_key("nodekey")
        finally:
            node.close()
    on_disk = cell.ssh("cn-metal-a", f"sudo cat {path}").stdout.strip()
    assert key is not None and len(on_disk) == 64
    assert redact(f"read {on_disk}") == "read ***"


def test_keys_made_in_many_threads_at_once_are_all_masked():
    """A maintenance step reads every cell's keys in threads; Airflow's secrets masker has no lock of its own."""
    from concurrent.futures import ThreadPoolExecutor

    values = [secrets.token_hex(32) for _ in range(200)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(NodeKey, values))  # a masker that lost a race raises here, or masks fewer keys
    assert [v for v in values if redact(f"k={v}") != "k=***"] == []
