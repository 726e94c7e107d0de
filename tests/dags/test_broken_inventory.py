"""A broken inventory is shown, not hidden: every DAG still loads with the error (naming the field) on top of
its page, and a run fails at its first task with that error instead of "choose one of []" later."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
FIELD = "cells[0].cns[0].node_id: must be the node ID"


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    from cellkit import AirflowRunner

    data = yaml.safe_load((REPO / "inventory.example.yaml").read_text())
    data["cells"][0]["cns"][0]["node_id"] = "abc"  # an operator's typo
    path = tmp_path_factory.mktemp("inventory") / "inventory.yaml"
    path.write_text(yaml.safe_dump(data))
    no_cell = SimpleNamespace(env={"KAIA_HA_INVENTORY": str(path)})  # nothing is reached: the inventory stops it all
    with AirflowRunner(no_cell, tmp_path_factory.mktemp("reports")) as runner:
        yield runner


def test_every_dag_loads_and_its_page_opens_with_the_error(broken):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    assert {p.stem for p in (REPO / "dags").glob("kaia_*.py")} == set(bag.dags)
    for dag_id, dag in bag.dags.items():
        assert dag.doc_md.startswith("> **The inventory is broken"), dag_id
        assert FIELD in dag.doc_md.split("\n\n")[0], dag_id


@pytest.mark.parametrize("dag_id, first", [("kaia_cn_failover_cloud", "preflight"),
                                           ("kaia_cn_failover_standby", "preflight.validate"),
                                           ("kaia_cn_enroll_standby", "preflight"),
                                           ("kaia_cn_maintenance", "report"), ("kaia_cn_standby_readiness", "report"),
                                           ("kaia_cn_watchdog", "inventory_broken")])
def test_a_run_fails_at_its_first_task_with_the_error(broken, dag_id, first):
    broken.log_text = ""
    _, state, states = broken.run(dag_id)
    assert state == "failed"
    assert states[(first, -1)] == ("failed", 1)  # at once: no retry can fix the inventory
    assert FIELD in broken.log_text
    assert "choose one of []" not in broken.log_text
