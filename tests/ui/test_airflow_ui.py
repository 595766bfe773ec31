"""The Airflow UI and the Data Docs in a real browser, used the way a person meets them.

Against the real local platform (``tenfold.local.up``: Airflow's API server and UI, its scheduler and the
rest, the GCS and Pub/Sub emulators) on a temporary home, headless Chromium from Debian driven by Playwright:

1. the login page takes the login ``tenfold status`` prints, and the Dags page shows ``build_features`` and
   ``train_model`` with their tags;
2. the Trigger dialog runs ``build_features`` for January 2013 (logical date 2013-01-01: the cheapest real run,
   as January has no history month to ingest; ingest, Spark, the gate and publish all run), and the grid shows
   the run and each of its tasks succeed;
3. the ``validate`` task's log opens and holds the gate's verdict;
4. the Data Docs index opens from disk with every request off this machine refused: the run's validations are
   listed (the table is filled by JavaScript from the site's own jQuery and bootstrap-table), styled by its
   own bootstrap and font-awesome, and the features validation opens. No request needed the internet.

Screenshots of every step land in ``<platform home>/artifacts/ui`` (``FAILED-<step>.png`` where a step
fails); the path is printed. Playwright waits on what the page shows, with deadlines sized for two busy cores.

Run: ``.venv/bin/pytest tests/ui -q`` (needs ``make setup``: Chromium and the Data Docs assets).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tenfold.local.airflow_api import AirflowApi
from tenfold.quality.gate import data_docs_location

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

ACTION_MS = 90_000  # one click, one page: the API server answers slowly while Spark holds both cores
RUN_MS = 20 * 60_000  # ingest + spark-submit + the gate + publish for one month, on two busy cores
DAG = "build_features"
TASKS = ("ingest", "build_features", "validate", "publish")
RUN_ID = "ui_test__2013-01"
MONTH = "2013-01"
TAGS = {"build_features": {"tenfold", "features", "data-quality"}, "train_model": {"tenfold", "training", "registry"}}


def _expect() -> Any:
    from playwright.sync_api import expect

    expect.set_options(timeout=ACTION_MS)
    return expect


def log_in(page: Any, platform: Any) -> None:
    expect = _expect()
    page.goto(platform.url + "/")
    expect(page.get_by_role("heading", name="Sign into Airflow")).to_be_visible()
    page.get_by_label("Username").fill(platform.user)
    page.get_by_label("Password").fill(platform.password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"^(?!.*/auth/login)"))


@pytest.fixture(scope="module")
def airflow(browser: Any, platform: Any, offline: Any) -> Iterator[Any]:
    """A browser context logged in to the platform's Airflow (through its login page)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900}, timezone_id="UTC")
    context.set_default_timeout(ACTION_MS)
    refused = offline(context)  # the UI is served from loopback: nothing of it may come from the internet
    page = context.new_page()
    with platform.failure_shot(page, "login"):
        log_in(page, platform)
    page.close()
    yield context
    context.close()
    assert refused == [], f"the Airflow UI asked for resources off this machine: {refused}"


def test_logs_in_with_the_generated_login_and_lists_the_dags_with_their_tags(airflow, platform):
    expect = _expect()
    page = airflow.new_page()
    with platform.failure_shot(page, "1-dags"):
        page.goto(platform.url + "/dags")
        expect(page.get_by_role("heading", name=re.compile(r"\d+ Dags"))).to_be_visible()
        assert "/auth/login" not in page.url  # the session of the generated login holds
        for dag_id, tags in TAGS.items():
            card = page.get_by_test_id("dag-card").filter(has=page.get_by_role("link", name=dag_id, exact=True))
            expect(card).to_have_count(1)
            shown = card.locator("a[href*='tags=']")
            expect(shown).to_have_count(len(tags))
            assert set(shown.all_inner_texts()) == tags, dag_id
        platform.screenshot(page, "1-dags")


@pytest.fixture(scope="module")
def january_run(airflow, platform) -> str:
    """``build_features`` for January 2013, triggered in the UI's Trigger dialog; returns the run id once the run
    has ended (succeeded or failed: the grid test checks which, as the page shows it).

    Returned as the run page opened, the run had only begun: the task-log and Data Docs tests, run without the grid
    test (``-k task_log``), acted at once and timed out before ``validate`` ran or ``index.html`` existed."""
    expect = _expect()
    page = airflow.new_page()
    with platform.failure_shot(page, "2-trigger"):
        page.goto(f"{platform.url}/dags/{DAG}")
        page.get_by_role("button", name="Trigger Dag").click()
        dialog = page.get_by_role("dialog").filter(has=page.get_by_role("heading", name=f"Trigger Dag - {DAG}"))
        expect(dialog).to_be_visible()
        # The month comes from the logical date (the run's default): its date picker takes typed text.
        page.get_by_test_id("datetime-input").click()
        page.get_by_role("textbox", name="Logical Date").fill(MONTH.replace("-", "/") + "/01")
        page.get_by_role("textbox", name="HH:mm").fill("00:00")
        dialog.get_by_role("heading", name=f"Trigger Dag - {DAG}").click()  # closes the picker
        expect(page.get_by_test_id("datetime-input")).to_contain_text("Jan 01, 2013")
        # A new platform's DAGs are paused: the dialog's own checkbox unpauses it (the scheduled run of last
        # month that follows skips: the DAG's months ended in 2013).
        expect(dialog.get_by_role("checkbox", name=f"Unpause {DAG} on trigger")).to_be_checked()
        dialog.get_by_role("button", name="Advanced Options").click()
        dialog.get_by_role("textbox", name="Run ID").fill(RUN_ID)
        platform.screenshot(page, "2-trigger-dialog")
        dialog.get_by_role("button", name="Trigger", exact=True).click()
        expect(dialog).to_be_hidden()
        page.wait_for_url(f"**/dags/{DAG}/runs/{RUN_ID}")
    page.close()
    AirflowApi(platform.url, platform.user, platform.password).wait_for_runs(DAG, [RUN_ID], timeout_s=RUN_MS / 1000)
    return RUN_ID


def test_a_run_triggered_in_the_ui_succeeds_in_the_grid(airflow, platform, january_run):
    expect = _expect()
    page = airflow.new_page()
    with platform.failure_shot(page, "3-grid"):
        page.goto(f"{platform.url}/dags/{DAG}/runs/{january_run}")
        header = page.get_by_role("heading", name=january_run, exact=True).locator("xpath=..")
        # The run has ended (january_run waited for it): the page shows how at once.
        expect(header.get_by_test_id("state-badge")).to_have_text(re.compile(r"^(Success|Failed)$"))
        expect(header.get_by_test_id("state-badge")).to_have_text("Success")
        expect(page.get_by_text("2013-01-01 00:00:00", exact=True).first).to_be_visible()  # the month it built
        for task in TASKS:  # every task's cell in the grid: its tooltip names the state
            page.get_by_test_id(f"grid-{january_run}-{task}").hover()
            tooltip = page.get_by_role("tooltip").filter(has_text=f"Task ID: {task}")
            expect(tooltip).to_contain_text("State: Success")
            page.mouse.move(0, 0)  # the open tooltip would cover the next cell
            expect(tooltip).to_be_hidden()
        platform.screenshot(page, "3-grid-success")


def test_a_task_log_opens_with_the_gate_verdict(airflow, platform, january_run):
    expect = _expect()
    page = airflow.new_page()
    with platform.failure_shot(page, "4-log"):
        page.goto(f"{platform.url}/dags/{DAG}/runs/{january_run}")
        page.get_by_test_id(f"grid-{january_run}-validate").click()
        page.wait_for_url(f"**/runs/{january_run}/tasks/validate")
        expect(page.get_by_role("link", name="Logs")).to_be_visible()
        # The log view renders the lines in view only: its search box brings the verdict into view.
        page.get_by_role("textbox", name="Search logs...").fill("expectations passed")
        verdict = re.compile(rf"features {MONTH} vs suite 'features': all \d+ expectations passed \(\d+ rows\)")
        expect(page.get_by_text(verdict).first).to_be_visible()
        platform.screenshot(page, "4-task-log")


def test_data_docs_work_offline_and_list_the_run(browser, platform, offline, january_run):
    expect = _expect()
    site = Path(data_docs_location(platform.settings))
    context = browser.new_context(viewport={"width": 1400, "height": 900}, timezone_id="UTC")
    context.set_default_timeout(ACTION_MS)
    refused = offline(context)
    failed: list[str] = []
    page = context.new_page()
    page.on("requestfailed", lambda request: failed.append(f"{request.url} ({request.failure})"))
    try:
        with platform.failure_shot(page, "5-data-docs"):
            page.goto((site / "index.html").as_uri())
            rows = page.locator("tr.clickable-row")  # bootstrap-table builds these from the page's data
            expect(rows.filter(has_text=f"features_{MONTH}")).to_have_count(1)
            expect(rows.filter(has_text=f"flights_{MONTH}")).to_have_count(1)  # the raw gate's, kept beside it
            # Styled by the site's bootstrap, the status icons drawn by its font-awesome.
            expect(page.locator("nav.navbar")).to_have_css("position", "sticky")  # bootstrap's .sticky-top
            expect(page.locator("i.fa-check-circle").first).to_have_css("font-family", re.compile("Font Awesome"))
            platform.screenshot(page, "5-data-docs-index")

            rows.filter(has_text=f"features_{MONTH}").get_by_role("cell").nth(1).click()
            page.wait_for_url(re.compile(r"/validations/features/.+\.html$"))
            overview = page.locator("#section-1")
            expect(overview).to_contain_text("Expectation Suite: features")
            expect(overview).to_contain_text("Succeeded")
            expect(page.get_by_role("cell", name="Evaluated Expectations")).to_be_visible()
            # bootstrap 4.3.1's primary colour on the "Failed Only" filter button
            expect(page.locator("label.btn-primary:not(.active)")).to_have_css("background-color", "rgb(0, 123, 255)")
            platform.screenshot(page, "5-data-docs-validation")
        assert refused == [], f"Data Docs asked the internet for {refused}"
        assert failed == [], f"Data Docs requests failed: {failed}"
    finally:
        context.close()
