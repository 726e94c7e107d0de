"""What the engine tests share besides fixtures (``conftest`` names clash across test folders)."""

from __future__ import annotations

import json

MAINTENANCE = "kaia_cn_maintenance"
FAILOVER = "kaia_cn_failover_cloud"


def keys_of(cell, cn: str = "cn-aws-1") -> list[str]:
    """The CN's nodekey and bls-nodekey as backed up (what must never reach a log)."""
    secret = json.loads(cell.client("secretsmanager").get_secret_value(
        SecretId=f"kaia-ha/cc-cloud/{cn}/nodekey")["SecretString"])
    return [secret["nodekey"], secret["bls_nodekey"]]

