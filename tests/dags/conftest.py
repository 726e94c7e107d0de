"""Run the project's DAGs for real (DagBag parse, ``dag.test()``) against a simulated core cell."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/cellkit.py

from cellkit import AirflowRunner  # noqa: E402


@pytest.fixture(scope="session")
def airflow(cell, tmp_path_factory):
    with AirflowRunner(cell, tmp_path_factory.mktemp("reports")) as runner:
        yield runner


@pytest.fixture(scope="module")
def own_cell_airflow(tmp_path_factory):
    """A cell and runner of the module's own, with the maintenance DAG already run once (key backups,
    a CN image, a PN snapshot): what a failover finds in a well-kept core cell. For tests that change
    the cell beyond repair (a failover moves identities and IPs for good)."""
    from cellkit import Cell

    cell = Cell(tmp_path_factory.mktemp("simcell-own"))
    cell.up()
    cell.seeded_calls = len(cell.calls())  # what follows is the DAGs' (and the tests' own reads)
    try:
        with AirflowRunner(cell, tmp_path_factory.mktemp("reports-own")) as runner:
            _, state, states = runner.run("kaia_cn_maintenance")
            assert state == "success", states
            yield cell, runner
    finally:
        cell.down()


@pytest.fixture(scope="module")
def metal_cell_airflow(tmp_path_factory):
    """A cell and runner of the module's own with what a bare-metal failover finds in a well-kept core cell:
    the key backups of the bare-metal active CNs, made by the maintenance DAG's own step (without the cloud
    cell's image and PN snapshot, which take most of a maintenance run). For tests that change the
    bare-metal cell for good."""
    from cellkit import Cell

    cell = Cell(tmp_path_factory.mktemp("simcell-metal"))
    cell.up()
    try:
        with AirflowRunner(cell, tmp_path_factory.mktemp("reports-metal")) as runner:
            from kaia_ha import maintenance
            from kaia_ha.model.inventory import load_inventory

            for metal in load_inventory().cells_of("bare-metal"):
                assert maintenance.backup_nodekey(metal.name, "test-setup")["action"] == "created"
            yield cell, runner
    finally:
        cell.down()
