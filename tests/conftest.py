import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/cellkit.py

from cellkit import Cell, end_interrupted_runs  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def no_runs_left_running():
    end_interrupted_runs()


@pytest.fixture(scope="session")
def cell(tmp_path_factory):
    """One simulated core cell for the session, brought up with the operator's command line."""
    c = Cell(tmp_path_factory.mktemp("simcell"))
    c.up()
    yield c
    c.down()


@pytest.fixture(scope="module")
def fresh_cell(tmp_path_factory):
    """A cell of the module's own, for tests that break things beyond repair."""
    c = Cell(tmp_path_factory.mktemp("simcell-fresh"))
    c.up()
    yield c
    c.down()
