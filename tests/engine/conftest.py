"""The DAGs run by the real Airflow (``airflow standalone``: api-server, scheduler, dag-processor,
triggerer), driven through its REST API and UI, against a simulated core cell of the suite's own.

Airflow starts once for the package; the core cell is maintained once (``kaia_cn_maintenance`` through
the REST API), as a failover needs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest

from .enginekit import FAILOVER, MAINTENANCE  # first: puts the repo (drill/) and tests/ (cellkit) on sys.path

from cellkit import Cell  # noqa: E402,I001
from drill.engine import AirflowEngine  # noqa: E402


@dataclass
class Maintained:
    engine: AirflowEngine
    cell: Cell
    maintenance_run: str
    maintenance_state: str
    timings: dict = field(default_factory=dict)


@pytest.fixture(scope="package")
def maintained(tmp_path_factory):
    began = time.monotonic()
    cell = Cell(tmp_path_factory.mktemp("engine-simcell"))
    engine = None
    try:
        cell.up()
        engine = AirflowEngine(tmp_path_factory.mktemp("engine-airflow"), cell.env).start()
        up = time.monotonic() - began
        for dag_id in (MAINTENANCE, FAILOVER):
            engine.unpause(dag_id)
        run_id = engine.trigger(MAINTENANCE)
        state = engine.wait(MAINTENANCE, run_id, timeout=600)
        yield Maintained(engine, cell, run_id, state, {"up": up, "maintained": time.monotonic() - began})
    finally:
        if engine:
            engine.stop()
            assert engine.ours() == [], "Airflow processes left running"
        cell.down()

