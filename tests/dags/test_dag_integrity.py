"""Every DAG file imports; every DAG carries tags, a runbook (doc_md) and retries."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory, monkeypatch_module):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


@pytest.fixture(scope="module")
def monkeypatch_module(tmp_path_factory):
    """An inventory like an operator's (the simulated cell's shape), so parsing needs no running cell."""
    from _pytest.monkeypatch import MonkeyPatch

    inventory = Path(__file__).resolve().parents[2] / "inventory.example.yaml"
    mp = MonkeyPatch()
    mp.setenv("KAIA_HA_INVENTORY", str(inventory))
    yield mp
    mp.undo()


def test_every_dag_file_imports(dagbag):
    assert dagbag.import_errors == {}
    assert {p.stem for p in DAGS.glob("*.py")} <= {dag.fileloc and Path(dag.fileloc).stem
                                                   for dag in dagbag.dags.values()}


def test_every_dag_has_tags_docs_retries_and_no_catchup(dagbag):
    assert dagbag.dags
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, dag_id
        assert dag.doc_md and len(dag.doc_md) > 200, f"{dag_id}: the runbook belongs in doc_md"
        assert dag.default_args.get("retries", 0) >= 1, dag_id
        assert dag.catchup is False, dag_id
        for task in dag.tasks:
            retried = task.retries is not None and (task.retries >= 1 or task.task_id.endswith("report"))
            assert retried, f"{dag_id}.{task.task_id}"


def test_dag_files_parse_fast(monkeypatch_module):
    """Nothing slow at parse time: each DAG file parses in well under the dag-processor's budget."""
    from airflow.dag_processing.dagbag import DagBag

    for path in DAGS.glob("*.py"):
        start = time.perf_counter()
        DagBag(dag_folder=str(path))
        assert time.perf_counter() - start < 5, path


@pytest.mark.parametrize("dag_id, module", [("kaia_cn_failover_cloud", "failover_cloud"),
                                            ("kaia_cn_failover_standby", "failover_standby"),
                                            ("kaia_cn_enroll_standby", "enroll")])
def test_the_trigger_form_and_the_param_check_know_the_same_fields(dagbag, dag_id, module):
    """A field the form shows but the check refuses (or the reverse) would fail every trigger."""
    import importlib

    steps = importlib.import_module(f"kaia_ha.{module}")
    assert set(dagbag.dags[dag_id].params.keys()) == set(steps.PARAMS)
    with pytest.raises(steps.FailoverInputError, match="dryrun: not a parameter"):
        steps.refuse_unknown_params({"failed_cn": "x", "dryrun": True}, steps.PARAMS)


def test_the_maintenance_runs_on_the_inventorys_top_level_schedule(dagbag):
    assert dagbag.dags["kaia_cn_maintenance"].schedule == "0 3 * * *"  # inventory.example.yaml's


@pytest.mark.parametrize("module", ["failover_cloud", "failover_standby", "enroll", "maintenance", "readiness"])
def test_the_task_ids_the_steps_read_are_tasks_of_their_dag(dagbag, module):
    """Each steps module holds the task ids it reads (``*_TASK`` and the fence branch targets) and its DAG file names
    its tasks with them: every one must be a task of that DAG (per cell inside a cell's group for the readiness DAG).
    A renamed task or group that the report still reads by its old id fails here, not in a postmortem."""
    import importlib

    steps = importlib.import_module(f"kaia_ha.{module}")
    ids = {name: value for name, value in vars(steps).items()
           if isinstance(value, str) and (name.endswith("_TASK") or name in ("FENCE_OVER_SSH", "CONFIRM_DOWN",
                                                                            "DECLARED_DOWN"))}
    assert len(ids) >= 2, ids
    tasks = set(dagbag.dags[steps.DAG_ID].task_dict)
    per_cell = module == "readiness"
    missing = {name: value for name, value in ids.items()
               if not (any(t.endswith(f".{value}") and t.count(".") == value.count(".") + 1 for t in tasks)
                       if per_cell else value in tasks)}
    assert missing == {}, f"{steps.DAG_ID} has no task {missing}"


def test_the_maintenance_has_one_task_per_step_for_every_cell(dagbag):
    """Each maintenance task is a step over every cell (a task per cell and step was ~260 tasks at 20 cells, 11-24x
    the time of one cell): no task belongs to one cell, and every cell is in the inventory the steps read."""
    from kaia_ha.model.inventory import load_inventory

    dag = dagbag.dags["kaia_cn_maintenance"]
    cells = load_inventory().cells
    assert len(cells) >= 2 and {c.scheme for c in cells} == {"cloud", "bare-metal"}
    assert not [t for t in dag.task_dict for c in cells if c.name in t]
    assert len(dag.task_dict) == 12, sorted(dag.task_dict)
    # The waits for every cell's image and snapshot hold no worker slot between pokes, and last as long as AWS may.
    for task_id, hours in (("cn_image.wait_image", 6), ("pn_snapshot.wait_snapshot", 48)):
        sensor = dag.task_dict[task_id]
        assert sensor.mode == "reschedule" and sensor.timeout >= hours * 3600, (task_id, sensor.mode, sensor.timeout)


def test_the_watchdog_has_one_watch_task_for_every_cell(dagbag):
    """One round over every cell is one poke of one task (a task per cell cost a task start per cell per round):
    one ``watch`` sensor, at the smallest round period, and per cell its ``decide`` and ``open_approval``."""
    from kaia_ha.model.inventory import load_inventory
    from kaia_ha_airflow.dag_defaults import wait

    dag = dagbag.dags["kaia_cn_watchdog"]
    cells = load_inventory().cells
    assert len(cells) >= 2
    assert [t for t in dag.task_dict if t.rsplit(".", 1)[-1] == "watch"] == ["watch"]
    watch = dag.task_dict["watch"]
    expected = wait(min(c.watchdog.round_seconds for c in cells))
    assert (watch.mode, watch.poke_interval) == (expected["mode"], expected["poke_interval"])
    for cell in cells:
        assert {f"{cell.name}.decide", f"{cell.name}.open_approval"} <= set(dag.task_dict)
        assert dag.task_dict[f"{cell.name}.decide"].upstream_task_ids == {"watch"}
