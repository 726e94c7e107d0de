"""Run the project's DAGs for real (DagBag parse, ``dag.test()``) against a simulated core cell."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


class AirflowRunner:
    def __init__(self, cell, report_dir: Path):
        self.cell = cell
        self.report_dir = report_dir

    def __enter__(self):
        self.saved = dict(os.environ)
        os.environ.update({k: v for k, v in self.cell.env.items() if k != "AIRFLOW_HOME"})
        os.environ["KAIA_HA_REPORT_DIR"] = str(self.report_dir)
        os.environ["KAIA_HA_RETRY_DELAY_SECONDS"] = "1"
        return self

    def __exit__(self, *exc):
        os.environ.clear()
        os.environ.update(self.saved)

    def dag(self, dag_id: str):
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(REPO / "dags" / f"{dag_id}.py"))  # each DAG file is named after its DAG
        assert bag.import_errors == {}, bag.import_errors
        return bag.get_dag(dag_id)

    def run(self, dag_id: str, conf: dict | None = None):
        """``dag.test()`` and the final state of every task instance: ``(dag_run, {task_id: (state, try)})``.

        Every log record of the run is kept in ``self.log_text`` for leak scans.
        """
        import logging

        records: list[str] = []

        class Keep(logging.Handler):
            def emit(self, record):
                try:
                    records.append(record.getMessage())
                except Exception:
                    records.append(str(record.msg))

        handler = Keep(level=logging.DEBUG)
        logging.getLogger().addHandler(handler)
        try:
            dag_run = self.dag(dag_id).test(run_conf=conf)
        finally:
            logging.getLogger().removeHandler(handler)
            self.log_text = getattr(self, "log_text", "") + "\n".join(records)
        from airflow.models.dagrun import DagRun
        from airflow.utils.session import create_session

        with create_session() as session:
            dr = session.query(DagRun).filter_by(dag_id=dag_id, run_id=dag_run.run_id).one()
            tis = {(ti.task_id, ti.map_index): (getattr(ti.state, "value", ti.state), ti.try_number)
                   for ti in dr.get_task_instances(session=session)}
            state = dr.state
        return dag_run.run_id, state, tis

    def report(self, dag_id: str, run_id: str) -> dict:
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
        return json.loads((self.report_dir / dag_id / f"{stem}.json").read_text())


@pytest.fixture(scope="session")
def airflow(cell, tmp_path_factory):
    with AirflowRunner(cell, tmp_path_factory.mktemp("reports")) as runner:
        yield runner


@pytest.fixture(scope="module")
def own_cell_airflow(tmp_path_factory):
    """A cell and runner of the module's own, with the maintenance DAG already run once (key backups,
    a CN image, a PN snapshot): what a failover finds in a well-kept core cell. For tests that change
    the cell beyond repair (a failover moves identities and IPs for good)."""
    import sys

    sys.path.insert(0, str(REPO / "tests"))
    from cellkit import Cell

    cell = Cell(tmp_path_factory.mktemp("simcell-own"))
    cell.up()
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
    import sys

    sys.path.insert(0, str(REPO / "tests"))
    from cellkit import Cell

    cell = Cell(tmp_path_factory.mktemp("simcell-metal"))
    cell.up()
    try:
        with AirflowRunner(cell, tmp_path_factory.mktemp("reports-metal")) as runner:
            from kaia_ha import maintenance
            from kaia_ha.inventory import load_inventory

            for metal in load_inventory().cells_of("bare-metal"):
                assert maintenance.backup_nodekey(metal.name, "test-setup")["action"] == "created"
            yield cell, runner
    finally:
        cell.down()
