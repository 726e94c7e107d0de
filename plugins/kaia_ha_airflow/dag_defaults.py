"""What every core-cell DAG shares: start date, no catch-up, one run at a time, retries, SNS on failure."""

from __future__ import annotations

import pendulum

from kaia_ha.model import settings
from kaia_ha_airflow.notifications.sns import CoreCellFailureNotifier

# Airflow 3.3 fails a reschedule-mode sensor when one poke's exit reaches the scheduler after the next poke is
# already due (apache/airflow#71172; fix pending in #71194). Seen here through the real scheduler with 2 s pokes
# under load: the fence's wait failed all four tries. A wait of seconds to minutes therefore pokes inside one task
# (one worker slot while it lasts); reschedule mode only for polls at least this many seconds apart.
RESCHEDULE_MIN_SECONDS = 10


def wait(poke_interval: float) -> dict:
    """A sensor's ``mode`` and ``poke_interval``: reschedule mode (no worker slot between pokes) only for pokes at
    least RESCHEDULE_MIN_SECONDS apart, else poke inside one task (the race above)."""
    mode = "reschedule" if poke_interval >= RESCHEDULE_MIN_SECONDS else "poke"
    return {"mode": mode, "poke_interval": poke_interval}


def local(task_id: str) -> str:
    """A task's id inside its task group, from its full id (``fence.fence`` -> ``fence``): the steps modules hold the
    full ids they read, and the DAG files name their tasks with them."""
    return task_id.rsplit(".", 1)[-1]


def runbook(doc: str, inventory_error: str | None) -> str:
    """The DAG's doc_md: with a broken inventory, its error first, where the operator opening the DAG reads."""
    if not inventory_error:
        return doc
    quoted = "\n".join(f">     {line}" for line in inventory_error.splitlines())
    return ("> **The inventory is broken: this DAG cannot run until it is fixed.** A run fails at its first task "
            f"with this error:\n>\n{quoted}\n\n{doc}")


def core_cell_dag(*, tags: list[str], retries: int = 3) -> dict:
    """Keyword arguments for ``@dag``; each DAG adds its id, schedule, doc_md and params."""
    return {
        "start_date": pendulum.datetime(2026, 1, 1, tz="UTC"),
        "catchup": False,
        "max_active_runs": 1,
        "tags": ["kaia", "core-cell", *tags],
        "default_args": settings.default_args(retries=retries),
        "on_failure_callback": CoreCellFailureNotifier(),
    }
