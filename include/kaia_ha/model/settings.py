"""Knobs read from the environment at parse time (cheap, no I/O beyond os.environ)."""

from __future__ import annotations

import os

import pendulum


def retry_delay() -> pendulum.Duration:
    """Delay before a task's retry: 10 s by default; drills and tests shorten it (KAIA_HA_RETRY_DELAY_SECONDS)."""
    return pendulum.duration(seconds=float(os.environ.get("KAIA_HA_RETRY_DELAY_SECONDS", "10")))


def force_stop_after() -> float:
    """Seconds a fenced instance may stay ``stopping`` before the stop is repeated with Force
    (KAIA_HA_FORCE_STOP_AFTER_SECONDS). A stop without the OS shutdown takes seconds; a graceful one about a minute."""
    return float(os.environ.get("KAIA_HA_FORCE_STOP_AFTER_SECONDS", "30"))


def default_args(retries: int = 3) -> dict:
    return {"owner": "kaia-cco", "retries": retries, "retry_delay": retry_delay(), "retry_exponential_backoff": True,
            "max_retry_delay": pendulum.duration(minutes=5)}
