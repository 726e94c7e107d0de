"""The fault suite: a quick subset in ``make test``, the full sweep with ``make faults`` (KAIA_HA_FULL_FAULTS=1),
which writes the matrix to ``.artifacts/fault-matrix.md`` and ``.json``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/faultkit.py

from faultkit import FULL, Matrix  # noqa: E402


@pytest.fixture(scope="session")
def matrix():
    collected = Matrix()
    yield collected
    if FULL and (collected.outcomes or collected.extra):  # merged into what earlier sessions wrote
        print(f"\nfault matrix: {collected.write()}")
