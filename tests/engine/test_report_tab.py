"""The run's report in the real Airflow: the plugin's app mounted by the api-server behind the Airflow login, and
the *Report* tab of the DAG run page showing the maintenance run's report, as an operator sees it."""

from __future__ import annotations

import time
from urllib.parse import quote

import requests
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC

from .conftest import TIMES
from .enginekit import MAINTENANCE
from .test_trigger_form import SHOTS, browser, login, wait_for  # noqa: F401 (browser: the fixture)


def test_the_report_app_is_mounted_and_needs_the_login(maintained):
    engine, run_id = maintained.engine, maintained.maintenance_run
    page = f"{engine.url}/kaia-ha/reports/{MAINTENANCE}/{quote(run_id, safe='')}"
    assert requests.get(page, timeout=30).status_code == 401
    assert requests.get(f"{page}/json", headers={"Authorization": "Bearer not-a-token"}, timeout=30).status_code == 403
    auth = {"Authorization": f"Bearer {engine.token}"}
    shown = requests.get(page, headers=auth, timeout=30)
    assert shown.status_code == 200 and f"<h1>Kaia CN maintenance: {run_id}</h1>" in shown.text, shown.text[:500]
    assert requests.get(f"{page}/json", headers=auth, timeout=30).json()["run_id"] == run_id
    missing = requests.get(f"{engine.url}/kaia-ha/reports/{MAINTENANCE}/manual__none", headers=auth, timeout=30)
    assert missing.status_code == 404
    views = [v for p in engine.get("/plugins")["plugins"] for v in p["external_views"]]
    view = next(v for v in views if v["name"] == "Report")
    assert {"name": "Report", "destination": "dag_run", "url_route": "kaia_ha_report",
            "href": "/kaia-ha/reports/{DAG_ID}/{RUN_ID}"}.items() <= view.items()


def test_the_run_page_has_a_report_tab_showing_the_report(maintained, browser):  # noqa: F811
    engine, run_id, began = maintained.engine, maintained.maintenance_run, time.monotonic()
    SHOTS.mkdir(parents=True, exist_ok=True)
    login(browser, engine)
    browser.get(f"{engine.url}/dags/{MAINTENANCE}/runs/{quote(run_id, safe='')}")
    wait_for(browser, (By.XPATH, "//a[normalize-space()='Report'] | //button[normalize-space()='Report']"),
             condition=EC.element_to_be_clickable).click()
    assert browser.current_url.endswith("/plugin/kaia_ha_report")
    frame = wait_for(browser, (By.CSS_SELECTOR, "iframe[title=Report]"))
    browser.switch_to.frame(frame)
    try:
        heading = wait_for(browser, (By.TAG_NAME, "h1"))
        assert heading.text == f"Kaia CN maintenance: {run_id}"
        assert "Result: " in browser.find_element(By.TAG_NAME, "body").text
    finally:
        browser.switch_to.default_content()
    browser.save_screenshot(str(SHOTS / "report-tab.png"))
    assert (SHOTS / "report-tab.png").stat().st_size > 10_000
    TIMES["report tab"] = time.monotonic() - began
