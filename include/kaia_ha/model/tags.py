"""How the DAGs name and tag what they create, so that a retry or a later run finds it again.

Names and ClientTokens derive from the DAG run id (never from the clock): a cleared task recomputes
the same ones and finds what its first try made.
"""

from __future__ import annotations

import hashlib
import re

MANAGED_BY = "kaia-ha"

CELL = "kaia:cell"
NODE = "kaia:node"
KIND = "kaia:kind"
RUN_ID = "kaia:run-id"
DAG_ID = "kaia:dag"
FINGERPRINT = "kaia:fingerprint"
SOURCE_VOLUME = "kaia:source-volume"
SOURCE_INSTANCE = "kaia:source-instance"  # the CN image's instance: a validator that moved needs a new image
CLEAN_STOP = "kaia:clean-stop"
KCN_VERSION = "kaia:kcn-version"
DB_FLAGS = "kaia:db-flags"  # e.g. dbtype=LevelDB,shards=4,live-pruning=off,single=off
HEAD_BLOCK = "kaia:head-block"  # the PN's head when kpnd was stopped for the snapshot: the lag a CN will catch up
IN_USE_BY = "kaia:in-use-by"  # a failover run using this image or snapshot; retention spares it
FENCED_BY = "kaia:fenced-by"  # the failover run that defused this instance or detached this volume
FENCED_FROM = "kaia:fenced-from"  # on a detached volume: <instance>:<device>, to put it back or inspect it

KIND_CN_IMAGE = "cn-image"
KIND_PN_CHAINDATA = "pn-chaindata"
KIND_REPLACEMENT_CN = "replacement-cn"
KIND_CHAINDATA_VOLUME = "chaindata-volume"


def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": str(v)} for k, v in tags.items()]


def tag_dict(resource: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def filters(tags: dict[str, str]) -> list[dict]:
    return [{"Name": f"tag:{k}", "Values": [v]} for k, v in tags.items()]


def base_tags(cell: str, kind: str, run_id: str, dag_id: str, node: str | None = None) -> dict[str, str]:
    tags = {"managed-by": MANAGED_BY, CELL: cell, KIND: kind, RUN_ID: run_id, DAG_ID: dag_id}
    if node:
        tags[NODE] = node
    return tags


def safe_name(*parts: str, limit: int = 128) -> str:
    """An AMI-safe name (letters, digits, ``-._()/``) from parts such as a run id."""
    raw = "-".join(parts)
    name = re.sub(r"[^A-Za-z0-9._()/-]+", "-", raw).strip("-")
    if len(name) > limit:
        name = name[: limit - 13] + "-" + hashlib.sha256(raw.encode()).hexdigest()[:12]
    return name


def client_token(*parts: str) -> str:
    """A ClientToken (at most 64 ASCII) that is the same for every try of one step of one run."""
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:64]
