"""The DAGs run by the real Airflow (``airflow standalone``: api-server, scheduler, dag-processor,
triggerer), driven through its REST API and UI, against a simulated core cell of the suite's own.

Airflow starts once for the package; the core cell is maintained once (``kaia_cn_maintenance`` through
the REST API), as a failover needs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from .enginekit import FAILOVER, MAINTENANCE  # first: puts the repo (drill/) and tests/ (cellkit) on sys.path

from cellkit import Cell  # noqa: E402,I001
from drill.engine import AirflowEngine  # noqa: E402


TIMES: dict[str, float] = {}  # seconds of each stage, printed at the end of the run (README's measured times)


def pytest_terminal_summary(terminalreporter):
    if TIMES:
        terminalreporter.write_line("engine: " + ", ".join(f"{stage} {seconds:.0f}s" for stage, seconds in TIMES.items()))


@dataclass
class Maintained:
    engine: AirflowEngine
    cell: Cell
    maintenance_run: str
    maintenance_state: str


@pytest.fixture(scope="package")
def maintained(tmp_path_factory):
    began = time.monotonic()
    cell = Cell(tmp_path_factory.mktemp("engine-simcell"))
    engine = None
    try:
        cell.up()
        TIMES["cell up"] = time.monotonic() - began
        engine = AirflowEngine(tmp_path_factory.mktemp("engine-airflow"), cell.env).start()
        TIMES["airflow up"] = time.monotonic() - began - TIMES["cell up"]
        for dag_id in (MAINTENANCE, FAILOVER):
            engine.unpause(dag_id)
        started = time.monotonic()
        run_id = engine.trigger(MAINTENANCE)
        state = engine.wait(MAINTENANCE, run_id, timeout=600)
        TIMES["maintenance run"] = time.monotonic() - started
        yield Maintained(engine, cell, run_id, state)
    finally:
        if engine:
            stopping = time.monotonic()
            engine.stop()
            TIMES["airflow stop"] = time.monotonic() - stopping
            assert engine.ours() == [], "Airflow processes left running"
        cell.down()

