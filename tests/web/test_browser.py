"""The dashboard in a real headless Chromium.

Pages load cleanly, filters, timeline, cleanup, live refresh. Each page looked
at is photographed into a folder of the system's temporary directory, to look at
when a test fails; the README's own screenshots are made from the demo by
``docs/screenshots/make.py``, never by a test (whose data is hostile on purpose).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

import flow_tracker
from flow_tracker.cli.demo import run_demo
from flow_tracker.store.engine import Store
from flow_tracker.store.schema import processes
from flow_tracker.web import create_app
from tests.conftest import _service_missing
from tests.web.browser import CHROMIUM_FLAGS, chromium_path, missing_reason, serve
from tests.web.conftest import PINGS, Sample

SCREENSHOTS = Path(tempfile.gettempdir()) / "flow-tracker-test-screenshots"
pytestmark = [
    pytest.mark.parametrize("database_url", ["postgresql"], indirect=True),
    pytest.mark.slow,  # a real browser: the full run, not the fast lane
    pytest.mark.postgres,
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module."""
    reason = missing_reason()
    if reason:
        _service_missing(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS
        )
        yield chromium
        chromium.close()


class Watched:
    """A page whose console errors, page errors and dialogs are collected."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.problems: list[str] = []
        page.on(
            "console",
            lambda m: (
                self.problems.append(f"console {m.type}: {m.text}")
                if m.type in ("error", "warning")
                else None
            ),
        )
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("dialog", self._dialog)

    def _dialog(self, dialog: Any) -> None:
        self.problems.append(f"dialog: {dialog.message}")
        dialog.dismiss()


@pytest.fixture
def site(sample: Sample, browser: Any) -> Iterator[tuple[str, Watched]]:
    """The dashboard over HTTP (refreshing every second) and a watched browser page."""
    app = create_app(sample.url, refresh_seconds=1)
    with serve(app) as base:
        context = browser.new_context(viewport={"width": 1360, "height": 900})
        yield base, Watched(context.new_page())
        context.close()
    app.state.dashboard.store.dispose()


def _shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_every_page_loads_without_console_errors(site: tuple[str, Watched], sample: Sample) -> None:
    base, watched = site
    page = watched.page
    for path in [
        "/",
        "/?window=7d",
        "/processes",
        f"/processes/{sample.imported}",
        f"/processes/{sample.charged}",
        f"/processes/{sample.running}",
        "/cleanup?days=0",
        "/health",
    ]:
        response = page.goto(base + path)
        assert response is not None and response.status == 200, path
        page.wait_for_load_state("networkidle")
        assert page.locator("main#ft-main").is_visible(), path
        # The stylesheet applied (a CSP or path mistake would leave the page unstyled).
        assert page.eval_on_selector(".topbar", "e => getComputedStyle(e).position") == "sticky"
    assert watched.problems == []


def test_demo_pages_load_cleanly_and_are_photographed(database_url: str, browser: Any) -> None:
    """The README's screenshots: the demo's data (with its week of history)."""
    run_demo(database_url, fresh=False, echo=lambda _line: None)
    recent = flow_tracker.list_processes(
        limit=50, since=datetime.now(timezone.utc) - timedelta(minutes=5)
    )
    ids = {p.name: p.id for p in recent}
    app = create_app(database_url, refresh_seconds=3600)
    with serve(app) as base:
        context = browser.new_context(viewport={"width": 1360, "height": 900})
        watched = Watched(context.new_page())
        for name, path in [
            ("overview", "/"),
            ("processes", "/processes"),
            ("process-detail", f"/processes/{ids['nightly_import']}"),
            ("process-failed", f"/processes/{ids['PaymentWebhook']}"),
            ("process-running", f"/processes/{ids['LongRunningSync']}"),
            ("cleanup", "/cleanup?days=3"),
            ("health", "/health"),
        ]:
            response = watched.page.goto(base + path)
            assert response is not None and response.status == 200, path
            _shot(watched.page, name)
        context.close()
    app.state.dashboard.store.dispose()
    assert watched.problems == []


def test_status_filter_narrows_the_list_and_lives_in_the_url(
    site: tuple[str, Watched], sample: Sample
) -> None:
    base, watched = site
    page = watched.page
    page.goto(base + "/processes")
    assert page.locator("tbody tr").count() == 50  # first page of PINGS + 3
    page.check("input[name=status][value=failed]")
    page.click("button[type=submit]")
    page.wait_for_url("**/processes?*status=failed*")
    rows = page.locator("tbody tr")
    assert rows.count() == 1
    assert "ChargeCard" in rows.first.inner_text()
    page.fill("input[name=q]", "ping")
    page.uncheck("input[name=status][value=failed]")
    page.click("button[type=submit]")
    page.wait_for_url("**q=ping*")
    assert page.locator("tbody tr").count() == 50
    page.click("a[rel=next]")
    page.wait_for_url("**cursor=*")
    assert page.locator("tbody tr").count() == PINGS - 50
    assert watched.problems == []


def test_detail_page_draws_the_timeline_and_filters_logs_by_level(
    site: tuple[str, Watched], sample: Sample
) -> None:
    base, watched = site
    page = watched.page
    page.goto(f"{base}/processes/{sample.imported}")
    bars = page.locator(".wf-row svg rect")
    assert bars.count() == 3
    # Bars sit left to right in time: "store" starts after "download".
    first_x = float(bars.nth(0).get_attribute("x") or 0)
    last_x = float(bars.nth(2).get_attribute("x") or 0)
    assert last_x > first_x
    assert page.locator(".log").count() == 4
    page.click(".tabs a:text-is('warning')")
    page.wait_for_url("**level=warning")
    assert page.locator(".log").count() == 1
    assert "one row skipped" in page.locator(".log").inner_text()
    assert watched.problems == []


def test_cleanup_deletes_only_after_preview_and_confirmation(
    site: tuple[str, Watched], sample: Sample
) -> None:
    base, watched = site
    page = watched.page
    page.goto(base + "/cleanup")
    page.fill("input[name=days]", "0")
    page.check("input[name=status][value=completed]")
    page.click("button:text-is('Preview')")
    heading = page.locator(".danger-zone h2")
    assert heading.inner_text() == f"{PINGS + 1} processes will be deleted"
    page.click("button:text-is('Delete')")  # not confirmed: the browser keeps the form
    assert "/cleanup?" in page.url and page.locator(".alert-ok").count() == 0
    page.check("input[name=confirm]")
    page.click("button:text-is('Delete')")
    page.wait_for_url("**deleted=*")
    assert f"Deleted {PINGS + 1} processes" in page.locator(".alert-ok").inner_text()
    page.goto(base + "/processes")
    assert page.locator("tbody tr").count() == 2  # the failure and the running one
    assert watched.problems == []


def test_running_process_updates_live_and_pausing_stops_it(
    site: tuple[str, Watched], sample: Sample
) -> None:
    base, watched = site
    page = watched.page
    page.goto(f"{base}/processes/{sample.running}")
    assert page.locator(".progress-text").first.inner_text() == "40 %"
    assert page.locator("#ft-live-label").inner_text() == "Live"
    store = Store(sample.url)
    with store.engine.begin() as conn:
        conn.execute(
            update(processes)
            .where(processes.c.id == __import__("uuid").UUID(sample.running))
            .values(progress_current=7)
        )
    page.wait_for_function(
        "() => document.querySelector('.progress-text').textContent.trim() === '70 %'",
        timeout=10_000,
    )
    page.click("#ft-pause")
    assert page.locator("#ft-live-label").inner_text() == "Paused"
    with store.engine.begin() as conn:
        conn.execute(
            update(processes)
            .where(processes.c.id == __import__("uuid").UUID(sample.running))
            .values(progress_current=9)
        )
    page.wait_for_timeout(2_500)
    assert page.locator(".progress-text").first.inner_text() == "70 %"
    page.reload()
    assert page.locator("#ft-live-label").inner_text() == "Paused"  # remembered
    page.click("#ft-pause")
    store.dispose()
    assert watched.problems == []


def test_workflow_pages_draw_act_and_are_photographed(database_url: str, browser: Any) -> None:
    """The workflow list and a run's page, its actions through the forms, hostile names."""
    import threading

    flow_tracker.configure(database_url=database_url, log_to_stdlib=False)
    hostile = '<img src=x onerror=alert("step")>'
    fails = [1]
    wf = flow_tracker.workflow("browser_orders")
    wf.step(name="validate")(lambda context: {"note": hostile})

    def charge(context: Any, validate: Any) -> dict[str, Any]:
        if fails:
            fails.pop()
            raise TimeoutError("the gateway timed out")
        return {"paid": 42}

    wf.step(name="charge", depends_on=["validate"])(charge)
    wf.step(name=f"reserve {hostile}", depends_on=["validate"])(lambda context, validate: "ok")
    leaves = [f"notify_{i}" for i in range(24)]
    for leaf in leaves:
        wf.step(name=leaf, depends_on=["charge"])(lambda context, charge: True)
    wf.step(name="confirm", depends_on=leaves)(lambda context, **done: len(done))
    failed = wf.run(context={"cart": hostile}).wait(30)
    release = threading.Event()
    slow = flow_tracker.workflow("browser_slow")
    slow.step(name="wait")(lambda context: release.wait(30))
    slow.step(name="after", depends_on=["wait"])(lambda context, wait: None)
    running = slow.run()
    app = create_app(database_url, refresh_seconds=3600)
    try:
        with serve(app) as base:
            context = browser.new_context(viewport={"width": 1360, "height": 900})
            watched = Watched(context.new_page())
            page = watched.page
            assert page.goto(base + "/workflows").status == 200
            _shot(page, "workflows")
            assert page.goto(f"{base}/workflows/{failed.id}").status == 200
            assert page.locator("svg.dag .node-root-cause").count() == 1
            assert page.locator("svg.dag .node-group").count() == 1  # 24 notify steps as one
            _shot(page, "workflow-run")
            context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
            page.click("text=Copy as Mermaid")
            page.wait_for_selector("text=Copied")
            assert page.evaluate("navigator.clipboard.readText()").startswith("flowchart TD")
            page.locator("svg.dag .node-group").click()
            page.wait_for_load_state()
            assert page.locator("svg.dag .node").count() == 28
            page.goto(f"{base}/workflows/{failed.id}")
            page.select_option("form[action$='/retry'] select[name=step]", "charge")
            page.fill("form[action$='/retry'] input[name=reason]", "gateway back")
            page.click("form[action$='/retry'] button")
            page.wait_for_load_state()
            assert "The step was sent again." in page.content()  # declared here: sent at once
            assert (
                flow_tracker.WorkflowRun(failed.id, "browser_orders").wait(30).status == "completed"
            )
            pipeline = flow_tracker.workflow("browser_pipeline")
            pipeline.step(name="extract")(lambda context: 1)
            pipeline.step(name="transform", depends_on=["extract"])(
                lambda context, extract: time.sleep(0.02)
            )
            pipeline.step(name="audit", depends_on=["extract"])(lambda context, extract: 2)
            pipeline.step(name="load", depends_on=["transform", "audit"])(lambda context, **p: 3)
            for _ in range(3):
                assert pipeline.run().wait(30).status == "completed"
            flow_tracker.flush()
            assert page.goto(base + "/workflows/analytics").status == 200
            assert "Critical path" in page.content()
            _shot(page, "workflow-analytics")
            page.goto(f"{base}/workflows/{failed.id}")
            assert page.locator("svg.dag .node-failed").count() == 0
            page.locator("svg.dag a").first.click()  # a node opens its step's process page
            page.wait_for_load_state()
            assert "/processes/" in page.url
            page.goto(f"{base}/workflows/{running.id}")
            page.click("form[action$='/cancel'] button")
            page.wait_for_load_state()
            assert "The run was cancelled." in page.content()
            context.close()
    finally:
        release.set()
        app.state.dashboard.store.dispose()
    assert watched.problems == []
