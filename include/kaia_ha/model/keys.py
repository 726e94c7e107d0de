"""A validator's keys held in memory: validated, never printed.

``NodeKey`` and ``BlsKey`` wrap the 64 hex characters of ``nodekey`` / ``bls-nodekey``. Their ``repr`` and
``str`` show only what is public (the node ID), their errors never quote the value, and
``reveal()`` is the one way to get the bytes (to write them to a host or to Secrets Manager). Every key is
registered with Airflow's secret masker as it is read, so no caller has to remember to.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading

from airflow.sdk.log import mask_secret  # a logging utility (redacts secrets in task logs), no task code: kept
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

_HEX64 = re.compile(rb"^[0-9a-fA-F]{64}$")
_MASK_LOCK = threading.Lock()  # Airflow's secrets masker has no lock, and a step reads many cells' keys at once
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


class InvalidKeyError(ValueError):
    """A key file or secret that does not hold a valid key. The message never contains the value."""


def _parse(raw: bytes | str, what: str) -> str:
    data = raw.encode() if isinstance(raw, str) else raw
    head = data[:64]  # the node reads the first 64 bytes, so a trailing newline is harmless
    if len(data) < 64 or not _HEX64.match(head):
        raise InvalidKeyError(
            f"{what}: not 64 hex characters (length {len(data.strip())}); a node given this file would "
            "silently generate a NEW identity"
        )
    if len(data) > 64 and data[64:].strip():
        raise InvalidKeyError(f"{what}: unexpected content after the 64 hex characters")
    return head.decode().lower()


class _Key:
    __slots__ = ("_hex",)
    what = "key"

    def __init__(self, raw: bytes | str):
        self._hex = _parse(raw, self.what)
        # Here, where every reader (host file, secret) makes a key: a log line that quotes it shows ***.
        with _MASK_LOCK:
            mask_secret(self._hex)

    def reveal(self) -> str:
        return self._hex

    def fingerprint(self) -> str:
        """A short non-reversible tag to tell two keys apart in a report."""
        return hashlib.sha256(self._hex.encode()).hexdigest()[:12]

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other._hex == self._hex

    def __hash__(self) -> int:
        return hash((type(self), self._hex))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<redacted>, fingerprint={self.fingerprint()})"

    __str__ = __repr__

    def __reduce__(self):  # never pickled into XCom or a trigger by accident
        raise TypeError(f"{type(self).__name__} must not be serialised")


class NodeKey(_Key):
    what = "nodekey"

    def __init__(self, raw: bytes | str):
        super().__init__(raw)
        if not 0 < int(self._hex, 16) < _SECP256K1_N:
            raise InvalidKeyError("nodekey: not a valid secp256k1 private key")

    @property
    def node_id(self) -> str:
        """The public node ID (128 hex): the uncompressed public key without its 0x04 prefix."""
        key = ec.derive_private_key(int(self._hex, 16), ec.SECP256K1())
        point = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        return point[1:].hex()

    def __repr__(self) -> str:
        return f"NodeKey(<redacted>, node_id={self.node_id[:16]}…)"

    __str__ = __repr__


class BlsKey(_Key):
    what = "bls-nodekey"


class KeyBackup:
    """What the maintenance DAG keeps in Secrets Manager for one CN: both keys and public facts."""

    __slots__ = ("nodekey", "bls", "bls_public_key", "source")

    def __init__(self, nodekey: NodeKey, bls: BlsKey | None, bls_public_key: str | None, source: str):
        self.nodekey, self.bls, self.bls_public_key, self.source = nodekey, bls, bls_public_key, source

    @property
    def node_id(self) -> str:
        return self.nodekey.node_id

    def to_secret_string(self) -> str:
        return json.dumps(
            {
                "nodekey": self.nodekey.reveal(),
                "bls_nodekey": self.bls.reveal() if self.bls else None,
                "node_id": self.node_id,
                "bls_public_key": self.bls_public_key,
                "source": self.source,
            },
            sort_keys=True,
        )

    @classmethod
    def from_secret_string(cls, text: str, secret_id: str) -> KeyBackup:
        try:
            data = json.loads(text)
            nodekey = NodeKey(data["nodekey"])
            bls = BlsKey(data["bls_nodekey"]) if data.get("bls_nodekey") else None
        except (ValueError, KeyError, TypeError) as exc:
            reason = str(exc) if isinstance(exc, InvalidKeyError) else type(exc).__name__
            raise InvalidKeyError(f"secret {secret_id}: not a nodekey backup written by this tool ({reason})") from None
        backup = cls(nodekey, bls, data.get("bls_public_key"), data.get("source", ""))
        if data.get("node_id") and data["node_id"] != backup.node_id:
            raise InvalidKeyError(f"secret {secret_id}: its node_id field does not match the nodekey it holds")
        return backup

    def same_keys(self, other: KeyBackup) -> bool:
        return self.nodekey == other.nodekey and self.bls == other.bls

    def __repr__(self) -> str:
        return f"KeyBackup(node_id={self.node_id[:16]}…, bls={'yes' if self.bls else 'no'}, source={self.source})"

    def __reduce__(self):
        raise TypeError("KeyBackup must not be serialised")
