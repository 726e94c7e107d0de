"""Can a CN open chain data a PN wrote? DB flags are not auto-detected, and a node refuses a
database written by a newer schema (shared/reference/kaia-node.md, "Chaindata from a PN on a CN")."""

from __future__ import annotations

import re
import shlex


def db_flags(additional: str) -> str:
    """The flags that must match between writer and reader, as one comparable string."""
    args = shlex.split(additional or "")
    flags = {"dbtype": "LevelDB", "shards": "4", "live-pruning": "off", "single": "off"}
    for i, arg in enumerate(args):
        key, _, value = arg.partition("=")
        value = value or (args[i + 1] if i + 1 < len(args) else "")
        if key == "--dbtype":
            flags["dbtype"] = value
        elif key == "--db.num-statetrie-shards":
            flags["shards"] = value
        elif key == "--state.live-pruning":
            flags["live-pruning"] = "on"
        elif key == "--db.single":
            flags["single"] = "on"
    return ",".join(f"{k}={v}" for k, v in flags.items())


def nodekey_file(additional: str) -> str | None:
    """The file ``--nodekey`` in ADDITIONAL names: the node reads its key there instead of DATA_DIR."""
    try:
        args = shlex.split(additional or "")
    except ValueError:
        return None
    for i, arg in enumerate(args):
        key, _, value = arg.partition("=")
        if key == "--nodekey":
            return value or (args[i + 1] if i + 1 < len(args) else None)
    return None


def version(text: str) -> tuple[int, ...]:
    found = re.search(r"v?(\d+)\.(\d+)\.(\d+)", text or "")
    if not found:
        raise ValueError(f"not a version: {text!r}")
    return tuple(int(x) for x in found.groups())


def problems(cn_flags: str, cn_version: str, pn_flags: str, pn_version: str, pn: str) -> list[str]:
    out = []
    if cn_flags != pn_flags:
        out.append(f"DB flags differ: the CN image runs with {cn_flags}, {pn} wrote its data with {pn_flags}")
    if version(cn_version) < version(pn_version):
        out.append(f"kcn {cn_version} in the CN image is older than kpn {pn_version} on {pn}: it would refuse the "
                   "newer database")
    return out
