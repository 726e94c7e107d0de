"""Every DAG's id, in one place: the step modules and the DAG files name other DAGs through these, never by
importing each other (tests/include/test_layers.py)."""

from __future__ import annotations

MAINTENANCE = "kaia_cn_maintenance"
FAILOVER_CLOUD = "kaia_cn_failover_cloud"
FAILOVER_STANDBY = "kaia_cn_failover_standby"
ENROLL_STANDBY = "kaia_cn_enroll_standby"
STANDBY_READINESS = "kaia_cn_standby_readiness"
WATCHDOG = "kaia_cn_watchdog"
FAILOVER_APPROVAL = "kaia_cn_failover_approval"

FAILOVERS = (FAILOVER_CLOUD, FAILOVER_STANDBY)


def failover_for(scheme: str) -> str:
    """The failover DAG of a cell's scheme: the cloud one for ``cloud``, the standby one for ``bare-metal``."""
    return FAILOVER_CLOUD if scheme == "cloud" else FAILOVER_STANDBY
