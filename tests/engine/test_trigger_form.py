"""The failover's trigger form in a real browser (headless Debian Chromium): an operator logs in, finds
the fields with their titles and choices, chooses the failed CN, switches dry run on and triggers; the run
must exist with that conf and succeed without changing anything. Screenshots: ``.artifacts/screenshots``."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import ElementClickInterceptedException, TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from . import REPO
from .conftest import TIMES
from .enginekit import FAILOVER

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SHOTS = REPO / ".artifacts" / "screenshots"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1400,1100")


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), "scripts/bootstrap.sh installs chromium and chromium-driver"
    profile = tempfile.mkdtemp(prefix="engine-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver, locator, timeout: float = 30, condition=EC.visibility_of_element_located):
    return WebDriverWait(driver, timeout).until(condition(locator))


def field(dialog, title: str):
    """A form field's group, found by its visible title (the Param's ``title``)."""
    return dialog.find_element(By.XPATH, f".//div[@role='group'][.//label[starts-with(normalize-space(.), '{title}')]]")


def open_section(driver, dialog, section: str):
    """The form's sections (the Params' ``section``) are an accordion: open one to see its fields."""
    button = dialog.find_element(By.XPATH, f".//button[@aria-expanded][normalize-space(.)='{section}']")
    if button.get_attribute("aria-expanded") != "true":
        button.click()
        WebDriverWait(driver, 10).until(lambda _: button.get_attribute("aria-expanded") == "true")


OPTION = ".//*[@role='option' or contains(@id, '-option-')]"


def click(driver, element) -> None:
    """Click as a person would: the field scrolled to the middle of the dialog first. A field's helper text can
    lie over the control's hit point (a section still opening, a long description beside a switch): wait and
    try again, then click the control itself (its own click handler, as a click on its visible part does)."""
    for _ in range(4):
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
        try:
            element.click()
            return
        except ElementClickInterceptedException:
            time.sleep(0.5)
    driver.execute_script("arguments[0].click();", element)


def choices(driver, dialog, title: str) -> list[str]:
    """The options a select field offers: open its menu, read them, close it (the field re-renders: find it anew)."""
    click(driver, field(dialog, title).find_element(By.CSS_SELECTOR, "input[role=combobox]"))
    WebDriverWait(driver, 10).until(lambda _: field(dialog, title).find_elements(By.XPATH, OPTION))
    texts = [o.text for o in field(dialog, title).find_elements(By.XPATH, OPTION)]
    dialog.find_element(By.TAG_NAME, "h2").click()  # closes the menu (Escape would close the whole dialog)
    WebDriverWait(driver, 10).until(lambda _: not field(dialog, title).find_elements(By.XPATH, OPTION))
    return texts


def choose(driver, dialog, title: str, option: str) -> str:
    """Pick an option by its visible text; the value the form will send."""
    click(driver, field(dialog, title).find_element(By.CSS_SELECTOR, "input[role=combobox]"))
    WebDriverWait(driver, 10).until(lambda _: [o for o in field(dialog, title).find_elements(By.XPATH, OPTION)
                                               if o.text == option])[0].click()
    return field(dialog, title).find_element(By.CSS_SELECTOR, "input[type=hidden]").get_attribute("value")


def login(driver, engine):
    user, password = engine.login()
    driver.get(engine.url)
    wait_for(driver, (By.NAME, "username")).send_keys(user)
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.XPATH, "//button[normalize-space()='Sign in']").click()
    wait_for(driver, (By.XPATH, "//button[@aria-label='User' or normalize-space()='User']"))


def test_trigger_form_shows_the_fields_and_runs_a_dry_run(maintained, browser):
    engine, began = maintained.engine, time.monotonic()
    SHOTS.mkdir(parents=True, exist_ok=True)
    before = {r["dag_run_id"] for r in engine.get(f"/dags/{FAILOVER}/dagRuns", limit=100)["dag_runs"]}
    login(browser, engine)
    browser.get(f"{engine.url}/dags/{FAILOVER}")
    wait_for(browser, (By.XPATH, "//button[@aria-label='Trigger Dag']"), condition=EC.element_to_be_clickable).click()
    dialog = wait_for(browser, (By.CSS_SELECTOR, "[data-scope=dialog][data-part=content]"))
    assert f"Trigger Dag - {FAILOVER}" in " ".join(dialog.find_element(By.TAG_NAME, "h2").text.split())

    open_section(browser, dialog, "What failed")
    assert "The CN that is down" in field(dialog, "Failed CN").text
    # none preselected, then the inventory's cloud CNs
    assert choices(browser, dialog, "Failed CN") == ["Choose the failed CN", "cn-aws-1"]
    assert choose(browser, dialog, "Failed CN", "cn-aws-1") == "cn-aws-1"
    assert field(dialog, "Fence the failed CN").find_element(By.CSS_SELECTOR, "input[type=checkbox]").is_selected()

    open_section(browser, dialog, "Chain data")
    assert choices(browser, dialog, "Volume warm-up") == [
        "None (lazy loading)", "Provisioned initialisation rate (300 MiB/s)",
        "Fast Snapshot Restore (must be enabled beforehand)", "Read every block after mounting"]
    assert choices(browser, dialog, "PN to snapshot") == ["auto", "pn-aws-1", "pn-aws-2"]
    field(dialog, "Use the newest pre-taken PN snapshot")  # shown, left on

    open_section(browser, dialog, "Run")
    def dry_run_box():
        return field(dialog, "Dry run").find_element(By.CSS_SELECTOR, "input[type=checkbox]")

    assert not dry_run_box().is_selected()  # the default is a real failover
    # The switch's visible part (its thumb), as a person clicks it; the field's long helper text can lie over
    # the switch's centre, so click the thumb, and only if the switch did not move, the switch's own input.
    switch = field(dialog, "Dry run").find_element(By.XPATH, ".//label[.//input[@type='checkbox']]")
    thumb = switch.find_elements(By.CSS_SELECTOR, "[data-part=control]")
    click(browser, thumb[0] if thumb else switch)
    try:
        WebDriverWait(browser, 3).until(lambda _: dry_run_box().is_selected())
    except TimeoutException:
        browser.execute_script("arguments[0].click();", dry_run_box())
    WebDriverWait(browser, 10).until(lambda _: dry_run_box().is_selected())
    browser.save_screenshot(str(SHOTS / "trigger-form.png"))

    dialog.find_element(By.CSS_SELECTOR, "[data-testid=trigger-dag-submit]").click()
    try:
        WebDriverWait(browser, 30).until(EC.invisibility_of_element(dialog))
    except TimeoutException:
        browser.save_screenshot(str(SHOTS / "trigger-form-stuck.png"))
        raise

    deadline = time.monotonic() + 30
    while not (new := [r for r in engine.get(f"/dags/{FAILOVER}/dagRuns", limit=100)["dag_runs"]
                       if r["dag_run_id"] not in before]):
        assert time.monotonic() < deadline, "no run after pressing Trigger"
        time.sleep(1)
    assert len(new) == 1
    run = new[0]
    assert run["conf"]["failed_cn"] == "cn-aws-1" and run["conf"]["dry_run"] is True
    assert run["conf"]["fence"] is True and run["conf"]["warmup"] == "none"
    calls_before = len(maintained.cell.calls())
    assert engine.wait(FAILOVER, run["dag_run_id"], timeout=300) == "success"
    time.sleep(2)  # the grid polls: let it show the finished run
    browser.save_screenshot(str(SHOTS / "trigger-form-after.png"))
    assert all((SHOTS / name).stat().st_size > 10_000 for name in ("trigger-form.png", "trigger-form-after.png"))

    states = {t["task_id"]: t["state"] for t in engine.task_instances(FAILOVER, run["dag_run_id"])}
    assert states["preflight"] == "success" and states["not_dry_run"] == "success" and states["report"] == "success"
    assert states["launch.launch"] == "skipped" and states["fence.fence"] == "skipped"
    report_log = engine.log(FAILOVER, run["dag_run_id"], "report", 1)
    assert "DRY RUN, preflight passed; nothing was changed" in report_log
    # Airflow's own records (the run report, the task logs, in the cell's S3) are not changes to the cell.
    records = ("/kaia-ha-state/reports/", "/kaia-ha-state/logs/")
    mutating = [c["action"] for c in maintained.cell.calls()[calls_before:]
                if not c["action"].startswith(("Describe", "Get", "List", "Publish")) and not c["dry_run"]
                and not c.get("path", "").startswith(records)]
    assert mutating == []
    TIMES["trigger form + dry run"] = time.monotonic() - began
