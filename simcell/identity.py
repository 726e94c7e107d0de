"""What a Kaia node derives from its keys, as the simulated nodes compute it.

Node ID and address follow the real node (secp256k1, Keccak-256). The BLS key is simulated: the real
node derives a BLS12-381 key; here it is a hash, which keeps the property that matters to a failover
(a bls-nodekey belongs to one nodekey, and a stale one is visible in ``admin.nodeInfo``).
"""

from __future__ import annotations

import hashlib
import re
import secrets

from Crypto.Hash import keccak
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


def new_nodekey() -> str:
    return secrets.token_hex(32)


def public_key(nodekey: str) -> bytes:
    """The 64-byte uncompressed public key without the 0x04 prefix."""
    key = ec.derive_private_key(int(nodekey, 16), ec.SECP256K1())
    point = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return point[1:]


def node_id(nodekey: str) -> str:
    return public_key(nodekey).hex()


def node_address(nodekey: str) -> str:
    return "0x" + keccak.new(digest_bits=256, data=public_key(nodekey)).digest()[-20:].hex()


def derive_bls(nodekey: str) -> str:
    return hashlib.sha256(b"simcell-bls:" + nodekey.lower().encode()).hexdigest()


def bls_public(bls_key: str) -> str:
    return hashlib.sha256(b"simcell-bls-pub:" + bls_key.lower().encode()).hexdigest() * 3
