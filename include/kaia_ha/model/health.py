"""What a node says about itself over IPC, and the honest answer to "is it in sync?".

``kaia.syncing`` is ``false`` whenever the node's head is at the highest block it knows of, which
includes a node with ZERO peers. So "in sync" here means all of: not syncing, peers > 0 (of the
types the role needs), head within a few blocks of a PN of the same cell, head still rising, and the
expected identity (``admin.nodeInfo.id``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

# One IPC round trip for everything a check needs; works with kcn and kpn, kaia.* and klay.*.
PROBE_EXPR = (
    "JSON.stringify({syncing: kaia.syncing, block: kaia.blockNumber, peers: net.peerCountByType, "
    "id: admin.nodeInfo.id, bls: admin.nodeInfo.blsPublicKeyInfo})"
)


class ProbeError(RuntimeError):
    pass


def parse_console_json(output: str) -> object:
    """``kcn attach --exec 'JSON.stringify(x)'`` prints a JS string: quoted, with inner quotes escaped."""
    text = output.strip().splitlines()[-1] if output.strip() else ""
    try:
        value = json.loads(text)
        return json.loads(value) if isinstance(value, str) else value
    except ValueError:
        raise ProbeError(f"the node console did not answer with JSON: {text[:200]!r}") from None


@dataclass(frozen=True)
class Probe:
    syncing: bool | dict
    block: int
    peers: dict
    node_id: str
    bls_public_key: str | None

    @classmethod
    def from_console(cls, output: str) -> Probe:
        data = parse_console_json(output)
        try:
            bls = data.get("bls") or {}
            return cls(data["syncing"], int(data["block"]), dict(data["peers"]), data["id"], bls.get("publicKey"))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProbeError(f"unexpected node console answer ({exc}): {str(data)[:200]}") from None

    @property
    def peer_total(self) -> int:
        return int(self.peers.get("total", 0))


@dataclass
class SyncVerdict:
    ok: bool
    checks: list[dict] = field(default_factory=list)

    def failed(self) -> list[str]:
        return [c["detail"] for c in self.checks if not c["ok"]]

    def summary(self) -> str:
        return "; ".join(f"{'ok' if c['ok'] else 'FAILED'} {c['name']}: {c['detail']}" for c in self.checks)


def assess_sync(
    first: Probe,
    last: Probe,
    reference_block: int,
    *,
    expected_node_id: str | None,
    expected_bls_public_key: str | None = None,
    max_lag: int = 5,
    need_peer_types: tuple[str, ...] = ("pn",),
) -> SyncVerdict:
    """Judge two probes of the same node taken some seconds apart against a PN's head."""
    checks = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"name": name, "ok": bool(ok), "detail": detail})

    if expected_node_id is not None:
        check(
            "identity",
            last.node_id == expected_node_id,
            f"admin.nodeInfo.id {last.node_id[:16]}… {'=' if last.node_id == expected_node_id else '!='} expected "
            f"{expected_node_id[:16]}…"
            + ("" if last.node_id == expected_node_id
               else " (the node runs with another nodekey: wrong or regenerated key)"),
        )
    if expected_bls_public_key is not None:
        same = last.bls_public_key == expected_bls_public_key
        check(
            "bls key",
            same,
            "BLS public key matches the backup" if same
            else "BLS public key differs from the backup (a stale bls-nodekey)",
        )
    check("peers", last.peer_total > 0, f"{last.peer_total} peers {last.peers}")
    for kind in need_peer_types:
        n = int(last.peers.get(kind, 0))
        check(f"{kind} peers", n > 0, f"{n} {kind.upper()} peers"
              + ("" if n else f" (no {kind.upper()} accepts this node: its node ID or IP is not the one expected)"))
    check("not syncing", last.syncing is False, "kaia.syncing is false" if last.syncing is False
          else f"still syncing: {last.syncing}")
    lag = reference_block - last.block
    check("head near PN", lag <= max_lag, f"{lag} blocks behind the PN's head {reference_block} (limit {max_lag})")
    check("head rising", last.block > first.block, f"block {first.block} -> {last.block}")
    return SyncVerdict(all(c["ok"] for c in checks), checks)
