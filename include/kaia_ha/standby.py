"""What a bare-metal standby is, for the failover, the enrolment and the readiness check alike: its kcnd.conf
checks and its static-nodes.json."""

from __future__ import annotations

import json
import re

from kaia_ha.model.inventory import CN
from kaia_ha_airflow.hooks.kaia_node import KaiaNodeHook

KNI = re.compile(r"^(kni|enode)://([0-9a-f]{128})@([^:/?#@]+):(\d{1,5})(\?[^#]*)?$")


def standby_conf_problems(node: KaiaNodeHook, cn: CN) -> list[str]:
    """What in kcnd.conf would make the node read its key from somewhere else than DATA_DIR/klay."""
    conf = node.conf()
    out = []
    if conf.get("DATA_DIR", "").rstrip("/") != cn.data_dir.rstrip("/"):
        out.append(f"kcnd.conf says DATA_DIR={conf.get('DATA_DIR')!r}, the inventory says {cn.data_dir!r}")
    if re.search(r"(^|\s)--nodekey(\s|=)", conf.get("ADDITIONAL", "")):
        out.append("kcnd.conf passes --nodekey in ADDITIONAL: the node reads its key from that file, not "
                   "DATA_DIR/klay/nodekey")
    return out


def parse_static_nodes(text: str) -> tuple[list[dict], list[str]]:
    """``static-nodes.json``: a JSON array of ``kni://<128 hex>@<ip>:<port>?...`` (or enode://) strings.
    Returns the entries that parse and a description of each that does not."""
    try:
        urls = json.loads(text)
    except ValueError as exc:
        return [], [f"not JSON ({exc.msg} at line {exc.lineno})"]
    if not isinstance(urls, list):
        return [], ["not a JSON array of kni:// URLs"]
    good, bad = [], []
    for url in urls:
        found = KNI.match(url) if isinstance(url, str) else None
        if not found:
            bad.append(str(url)[:60])
            continue
        query = dict(part.partition("=")[::2] for part in (found.group(5) or "?")[1:].split("&") if part)
        good.append({"node_id": found.group(2), "ip": found.group(3), "port": int(found.group(4)),
                     "ntype": query.get("ntype")})
    return good, bad
