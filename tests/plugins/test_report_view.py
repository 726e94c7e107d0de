"""The Report tab: the plugin's FastAPI app read through FastAPI's TestClient, its login and permission check as
the api-server runs it, and the plugin as Airflow's plugins manager loads it from the plugins folder."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from kaia_ha import report
from kaia_ha_airflow import report_view

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "kaia_cn_failover_cloud"
RUN_ID = "manual__2026-12-03T06:54:28+00:00"
MARKDOWN = ("# Failover of cc-1\n\nRTO **63.7 s** <script>alert(1)</script>\n\n"
            "| task | seconds |\n|---|---|\n| fence | 4 |\n")


@pytest.fixture
def stored(tmp_path, monkeypatch):
    monkeypatch.delenv("KAIA_HA_REPORT_URL", raising=False)
    monkeypatch.setenv("KAIA_HA_REPORT_DIR", str(tmp_path / "reports"))
    (tmp_path / "secret.md").write_text("outside the store")
    report.write(DAG_ID, RUN_ID, {"rto_seconds": 63.7}, MARKDOWN)
    return tmp_path


@pytest.fixture
def client(stored):
    """The app with the login and permission check passed (they have their own tests below)."""
    app = report_view.create_app()
    app.dependency_overrides[report_view.authorize()] = lambda: None
    return TestClient(app)


def url(dag_id: str = DAG_ID, run_id: str = RUN_ID, kind: str = "") -> str:
    from urllib.parse import quote

    return f"/reports/{quote(dag_id, safe='')}/{quote(run_id, safe='')}" + (f"/{kind}" if kind else "")


def test_a_stored_report_is_the_page_the_tab_shows(client):
    page = client.get(url())
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<h1>Failover of cc-1</h1>" in page.text and "<strong>63.7 s</strong>" in page.text
    assert "<td>fence</td>" in page.text  # tables rendered
    assert "<script>" not in page.text and "&lt;script&gt;" in page.text  # the report's text is never markup
    raw = client.get(url(kind="markdown"))
    assert raw.status_code == 200 and raw.text == MARKDOWN
    assert client.get(url(kind="json")).json() == {"rto_seconds": 63.7}


def test_a_run_without_a_report_is_404(client):
    page = client.get(url(run_id="manual__never"))
    assert page.status_code == 404 and "no report of kaia_cn_failover_cloud run manual__never" in page.text
    assert client.get(url(run_id="manual__never", kind="json")).status_code == 404
    assert client.get(url(dag_id="kaia_cn_unknown")).status_code == 404
    assert client.get(url(kind="yaml")).status_code == 404


@pytest.mark.parametrize("dag_id, run_id", [
    (DAG_ID, "../../secret"), (DAG_ID, "..%2F..%2Fsecret"), (DAG_ID, ".."), ("..", "secret"),
    ("..", "..%2Fsecret"), (".", "secret"), (DAG_ID, "/etc/passwd"),
])
def test_no_dag_id_or_run_id_reads_outside_the_store(client, dag_id, run_id):
    for kind in ("", "markdown", "json"):
        reply = client.get(url(dag_id, run_id, kind))
        assert 400 <= reply.status_code < 500, (dag_id, run_id, kind, reply.status_code)
        assert "outside the store" not in reply.text


def test_a_store_set_wrong_answers_502_naming_the_setting(client, monkeypatch):
    monkeypatch.setenv("KAIA_HA_REPORT_URL", "ftp://reports")
    for kind in ("", "json"):
        reply = client.get(url(kind=kind))
        assert reply.status_code == 502 and "KAIA_HA_REPORT_URL" in reply.text


def test_without_the_airflow_login_nothing_is_served(stored):
    """The app as mounted: the core API's check, unmocked. No JWT cookie, no Bearer token: 401."""
    client = TestClient(report_view.create_app())
    for kind in ("", "json", "markdown"):
        reply = client.get(url(kind=kind))
        assert reply.status_code == 401 and "63.7" not in reply.text
    for page in ("/docs", "/redoc", "/openapi.json"):  # FastAPI's own pages would skip the app's login check
        assert client.get(page).status_code in (401, 404), page


def test_a_user_who_may_read_the_dag_runs_gets_the_report_and_one_who_may_not_gets_403(stored, monkeypatch):
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "report-view-test-secret-" + "x" * 48)
    from airflow.api_fastapi.app import create_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.models.dag import DagModel

    monkeypatch.setattr(DagModel, "get_team_name", staticmethod(lambda dag_id, **kw: None))  # no multi-team DB
    manager = create_auth_manager()
    client = TestClient(report_view.create_app())
    viewer = manager.generate_jwt(SimpleAuthManagerUser(username="viewer", role="viewer"))
    nobody = manager.generate_jwt(SimpleAuthManagerUser(username="nobody", role=None))
    assert client.get(url(kind="json"), headers={"Authorization": f"Bearer {viewer}"}).json()["rto_seconds"] == 63.7
    for token, status in ((viewer, 200), (nobody, 403), ("not-a-jwt", 403)):
        client.cookies.set("_token", token)  # the UI's session cookie, which the tab's iframe sends
        assert client.get(url()).status_code == status, token


def test_airflow_loads_the_plugin_from_the_plugins_folder(tmp_path):
    """In a fresh interpreter, as the api-server does: the external view on the DAG run page and the app."""
    code = textwrap.dedent("""
        import json
        from airflow import plugins_manager
        from airflow.api_fastapi.core_api.datamodels.plugins import PluginResponse
        plugins_manager.ensure_plugins_loaded()
        info = [p for p in plugins_manager.get_plugin_info() if p["name"] == "kaia_ha_reports"]
        PluginResponse.model_validate(dict(info[0]))  # what /api/v2/plugins answers the UI with
        apps, _ = plugins_manager.get_fastapi_plugins()
        views, _ = plugins_manager._get_ui_plugins()
        print(json.dumps({"info": info, "apps": [a["url_prefix"] for a in apps], "views": views,
                          "errors": plugins_manager.get_import_errors()}, default=str))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert not [e for e in found["errors"] if "report_view" in e], found["errors"]
    assert "/kaia-ha" in found["apps"]
    assert {"name": "Report", "href": "/kaia-ha/reports/{DAG_ID}/{RUN_ID}", "destination": "dag_run",
            "url_route": "kaia_ha_report"} in found["views"]
    assert found["info"][0]["fastapi_apps"][0]["url_prefix"] == "/kaia-ha"


def test_importing_the_plugin_module_stays_light():
    """Every Airflow process that loads plugins imports it: neither FastAPI nor Airflow's API comes with it."""
    heavy = ("fastapi", "airflow.api_fastapi.core_api.security", "markdown_it")
    code = f"import sys, kaia_ha_airflow.report_view; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
