"""With ``KAIA_HA_REPORT_URL`` set, a run's report goes to S3 (the simulated cell's, through the cell's Airflow
connection) and nowhere on the worker's disk; the Report tab's reader finds it there, and it holds no key."""

from __future__ import annotations

import json
import os

import pytest

DAG_ID = "kaia_cn_failover_standby"
BUCKET, PREFIX = "kaia-ha-state", "reports"  # the cell's state bucket, another prefix


@pytest.fixture
def fresh_object_stores():
    """Airflow caches one file system per (protocol, connection) for the process: each cell has its own endpoint."""
    from airflow.sdk.io.store import _STORE_CACHE

    _STORE_CACHE.pop("s3-kaia_aws", None)
    yield
    _STORE_CACHE.pop("s3-kaia_aws", None)


def test_a_runs_report_goes_to_s3_and_the_report_tab_reads_it_there(fresh_cell, tmp_path, fresh_object_stores):
    from cellkit import AirflowRunner
    from kaia_ha.model.report_store import file_name
    from kaia_ha_airflow import report_view
    from leakscan import LeakScan, _hit

    local = tmp_path / "local"
    with AirflowRunner(fresh_cell, local) as runner:  # the runner gives back the environment as it found it
        os.environ.update({"KAIA_HA_REPORT_URL": f"s3://{BUCKET}/{PREFIX}", "KAIA_HA_REPORT_CONN_ID": "kaia_aws"})
        keys = LeakScan(fresh_cell, runner).keys
        # A cell with no key backup yet: the dry run's preflight fails, and the report says so.
        run_id, state, _ = runner.run(DAG_ID, {"failed_cn": "cn-metal-a", "dry_run": True})
        markdown = report_view.read(DAG_ID, run_id, "markdown")  # as the api-server reads it: no task context
        data = json.loads(report_view.read(DAG_ID, run_id, "json"))
    assert state == "failed"
    assert "Result: DRY RUN, preflight FAILED" in markdown and data["ok"] is False
    assert not local.exists() or not any(local.rglob("*.md"))  # nothing on the worker's disk
    key = f"{PREFIX}/{DAG_ID}/{file_name(run_id)}"
    s3 = fresh_cell.client("s3")
    assert s3.get_object(Bucket=BUCKET, Key=f"{key}.md")["Body"].read().decode() == markdown
    for suffix in (".json", ".md"):
        assert _hit(keys, s3.get_object(Bucket=BUCKET, Key=key + suffix)["Body"].read()) is None, suffix
