"""The DAGs run by the real Airflow, driven through its REST API and UI, against a simulated core cell of the
suite's own. The engine is the one ``docker-compose.yaml`` deploys: CeleryExecutor on PostgreSQL and Redis with
two workers, api-server, scheduler, dag-processor and triggerer (``drill.engine``); ``KAIA_HA_EXECUTOR=local``
runs the suite on ``airflow standalone`` instead.

Airflow starts once for the package; the core cell is maintained once (``kaia_cn_maintenance`` through
the REST API), as a failover needs.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import pytest

from cellkit import Cell
from drill.engine import AirflowEngine

from .enginekit import FAILOVER, MAINTENANCE

EXECUTOR = os.environ.get("KAIA_HA_EXECUTOR") or "celery"
TIMES: dict[str, float] = {}  # seconds of each stage, printed at the end of the run (README's measured times)


def pytest_terminal_summary(terminalreporter):
    if TIMES:
        terminalreporter.write_line("engine: " + ", ".join(f"{stage} {seconds:.0f}s"
                                                           for stage, seconds in TIMES.items()))


def pytest_collection_modifyitems(items):
    """The trigger form's dry run before the failover: after a failover the inventory still names the fenced
    instance until the operator updates it, and the preflight then refuses to fail over a CN whose
    replacement is live (as it should)."""
    slots = [i for i, item in enumerate(items) if "tests/engine/" in item.nodeid]
    ordered = sorted((items[i] for i in slots), key=lambda item: "test_trigger_form" not in item.nodeid)
    for i, item in zip(slots, ordered):
        items[i] = item


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
        engine = AirflowEngine(tmp_path_factory.mktemp("engine-airflow"), cell.engine_env(), executor=EXECUTOR).start()
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

