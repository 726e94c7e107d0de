"""Where reports are stored (``kaia_ha.model.report_store``) and ``report.write`` through Airflow's object storage:
a local folder, and S3 on the simulated cell's AWS front (moto behind the project's proxy)."""

from __future__ import annotations

import json
import types

import boto3
import pytest

from kaia_ha import report
from kaia_ha.model import report_store
from kaia_ha.model.report_store import Store, store

RUN_ID = "manual__2026-12-03T06:54:28.123+00:00"
STEM = "manual__2026-12-03T06_54_28.123_00_00"


def test_the_store_is_the_url_or_else_the_local_folder(tmp_path):
    assert store({"KAIA_HA_REPORT_URL": "s3://bucket/kaia-ha-reports/"}) == Store(
        "s3://bucket/kaia-ha-reports", "kaia_aws")
    assert store({"KAIA_HA_REPORT_URL": "s3://b/p", "KAIA_HA_REPORT_CONN_ID": "aws_reports"}).conn_id == "aws_reports"
    local = store({"KAIA_HA_REPORT_DIR": str(tmp_path / "r")})
    assert local == Store(f"file://{tmp_path}/r", None) and local.local
    assert store({"AIRFLOW_HOME": str(tmp_path)}).url == f"file://{tmp_path}/reports"
    assert store({"KAIA_HA_REPORT_URL": "file:///srv/reports"}) == Store("file:///srv/reports", None)
    for bad in ("gs://b/p", "s3:///no-bucket", "/plain/path"):
        with pytest.raises(ValueError, match="KAIA_HA_REPORT_URL"):
            store({"KAIA_HA_REPORT_URL": bad})


def test_a_run_names_one_file_inside_its_dag_folder():
    s = Store("s3://b/p", "c")
    assert s.locate("kaia_cn_maintenance", RUN_ID) == {
        "json": f"s3://b/p/kaia_cn_maintenance/{STEM}.json", "markdown": f"s3://b/p/kaia_cn_maintenance/{STEM}.md"}
    assert report_store.file_name("../../etc/passwd") == ".._.._etc_passwd"  # no slash survives
    for dag_id in ("..", ".", "a/b", "../x", "", ".hidden"):
        with pytest.raises(ValueError, match="DAG id"):
            s.locate(dag_id, RUN_ID)
    for run_id in ("", "..", "."):
        with pytest.raises(ValueError, match="run id"):
            s.locate("kaia_cn_maintenance", run_id)


def test_a_file_url_is_where_the_report_goes_not_the_default_folder(tmp_path, monkeypatch):
    """KAIA_HA_REPORT_URL=file:///elsewhere: the report is written there (its folder made), not under the
    default folder, and not as the fallback of a failed store."""
    monkeypatch.setenv("KAIA_HA_REPORT_URL", f"file://{tmp_path}/elsewhere")
    monkeypatch.setenv("KAIA_HA_REPORT_DIR", str(tmp_path / "default"))
    paths = report.write("kaia_cn_maintenance", RUN_ID, {"ok": True}, "# report\n")
    assert paths["markdown"] == str(tmp_path / "elsewhere" / "kaia_cn_maintenance" / f"{STEM}.md")
    assert (tmp_path / "elsewhere" / "kaia_cn_maintenance" / f"{STEM}.json").read_text().strip().startswith("{")
    assert not (tmp_path / "default").exists()


def test_write_to_a_local_folder_is_atomic_and_a_retry_replaces(tmp_path, monkeypatch):
    monkeypatch.delenv("KAIA_HA_REPORT_URL", raising=False)
    monkeypatch.setenv("KAIA_HA_REPORT_DIR", str(tmp_path))
    paths = report.write("kaia_cn_maintenance", RUN_ID, {"ok": False}, "# first try\n")
    folder = tmp_path / "kaia_cn_maintenance"
    # the layout and return value of before: file system paths the drill and the tests read
    assert paths == {"json": str(folder / f"{STEM}.json"), "markdown": str(folder / f"{STEM}.md")}
    paths = report.write("kaia_cn_maintenance", RUN_ID, {"ok": True}, "# second try\n")
    assert json.loads((folder / f"{STEM}.json").read_text()) == {"ok": True}
    assert (folder / f"{STEM}.md").read_text() == "# second try\n"
    assert sorted(p.name for p in folder.iterdir()) == [f"{STEM}.json", f"{STEM}.md"]  # no temporary file left


def test_a_failed_local_write_leaves_the_earlier_report_whole(tmp_path, monkeypatch):
    monkeypatch.delenv("KAIA_HA_REPORT_URL", raising=False)
    monkeypatch.setenv("KAIA_HA_REPORT_DIR", str(tmp_path))
    report.write("kaia_cn_readiness", "r1", {"n": 1}, "# one\n")
    from airflow.sdk import ObjectStoragePath

    def broken(self, *args, **kwargs):
        raise OSError("disk gone")

    monkeypatch.setattr(ObjectStoragePath, "replace", broken)
    with pytest.raises(OSError, match="disk gone"):
        report.write("kaia_cn_readiness", "r1", {"n": 2}, "# two\n")
    folder = tmp_path / "kaia_cn_readiness"
    assert json.loads((folder / "r1.json").read_text()) == {"n": 1}
    assert sorted(p.name for p in folder.iterdir()) == ["r1.json", "r1.md"]


@pytest.fixture(scope="module")
def aws_front(tmp_path_factory):
    """The simulated cell's AWS endpoint alone (moto behind the project's proxy), with a bucket."""
    from simcell.aws.proxy import AwsFront

    front = AwsFront(hooks=types.SimpleNamespace(), call_log_path=tmp_path_factory.mktemp("aws") / "calls.jsonl")
    front.start()
    boto3.client("s3", endpoint_url=front.endpoint_url, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="kaia-reports")
    yield front
    front.stop()


@pytest.fixture
def s3_store(aws_front, monkeypatch):
    """``KAIA_HA_REPORT_URL`` on the front's bucket, reached through an Airflow connection of the environment."""
    conn = {"conn_type": "aws", "login": "testing", "password": "testing",
            "extra": {"region_name": "us-east-1", "endpoint_url": aws_front.endpoint_url}}
    monkeypatch.setenv("AIRFLOW_CONN_KAIA_REPORTS_TEST", json.dumps(conn))
    monkeypatch.setenv("KAIA_HA_REPORT_URL", "s3://kaia-reports/kaia-ha")
    monkeypatch.setenv("KAIA_HA_REPORT_CONN_ID", "kaia_reports_test")
    return boto3.client("s3", endpoint_url=aws_front.endpoint_url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def test_write_to_s3_through_the_airflow_connection(s3_store, aws_front):
    urls = report.write("kaia_cn_failover_cloud", RUN_ID, {"rto": 63.7}, "# Failover\n")
    key = f"kaia-ha/kaia_cn_failover_cloud/{STEM}"
    assert urls == {"json": f"s3://kaia-reports/{key}.json", "markdown": f"s3://kaia-reports/{key}.md"}
    report.write("kaia_cn_failover_cloud", RUN_ID, {"rto": 64.0}, "# Failover, retried\n")  # a retry replaces
    body = s3_store.get_object(Bucket="kaia-reports", Key=f"{key}.json")["Body"].read()
    assert json.loads(body) == {"rto": 64.0}
    assert s3_store.get_object(Bucket="kaia-reports", Key=f"{key}.md")["Body"].read() == b"# Failover, retried\n"
    listed = s3_store.list_objects_v2(Bucket="kaia-reports", Prefix="kaia-ha/")["Contents"]
    assert sorted(o["Key"] for o in listed) == [f"{key}.json", f"{key}.md"]


def test_a_store_that_fails_costs_the_run_not_its_report(s3_store, tmp_path, monkeypatch, caplog):
    """No such bucket (or a setting that is not a URL): the report is written locally, and the log says so."""
    monkeypatch.setenv("KAIA_HA_REPORT_DIR", str(tmp_path))
    for url in ("s3://no-such-bucket/kaia-ha", "reports-bucket/kaia-ha"):
        monkeypatch.setenv("KAIA_HA_REPORT_URL", url)
        caplog.clear()
        paths = report.write("kaia_cn_maintenance", "r1", {"ok": True}, "# done\n")
        assert paths["markdown"] == str(tmp_path / "kaia_cn_maintenance" / "r1.md")
        assert (tmp_path / "kaia_cn_maintenance" / "r1.md").read_text() == "# done\n"
        assert "could NOT be stored" in caplog.text and url in caplog.text
