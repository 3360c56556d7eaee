"""A viewer in a real headless Chromium: no action to take and no payload to read, anywhere.

The dashboard is served over HTTP to a browser that visits every page a viewer
reaches from the navigation; what the browser receives (the page source after
its scripts ran, and its live refresh) holds none of the sample's secrets and
no form that would change data. An operator without ``payloads:read`` keeps
its actions and sees no payload either.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from flow_tracker.permissions import ROLES, Principal
from flow_tracker.web import create_app
from flow_tracker.web.hiding import HIDDEN
from tests.conftest import _service_missing
from tests.web.browser import CHROMIUM_FLAGS, chromium_path, missing_reason, serve
from tests.web.secret_payloads import SECRETS, Recorded, record
from tests.web.test_browser import Watched

pytestmark = [
    pytest.mark.parametrize("database_url", ["postgresql"], indirect=True),
    pytest.mark.slow,  # a real browser: the full run, not the fast lane
    pytest.mark.postgres,
]

VIEWER = Principal("vic", role="viewer")
OPS = Principal("ops", permissions=ROLES["operator"] - {"payloads:read"})
# What a viewer must not be offered: every button and link that changes data.
ACTIONS = [
    "form[method=post]",
    "#ft-run-again",
    "a[href*='/run-again']",
    "a[href*='/definitions/start']",
    "a[href$='/cleanup']",
    "button:text-is('Reap now')",
    "button:text-is('Requeue')",
    "button:text-is('Requeue all')",
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


@pytest.fixture
def recorded(tracked: str) -> Recorded:
    """The runs holding a secret in every payload."""
    return record(tracked)


def _pages(recorded: Recorded) -> list[str]:
    return [
        "/",
        "/processes",
        "/processes?status=failed",
        f"/processes/{recorded.failed}",
        f"/processes/{recorded.lost_job}",
        f"/processes/{recorded.skipped}",
        f"/processes/{recorded.failed}/compare",
        f"/processes/{recorded.failed_run}/compare",
        "/workflows",
        "/workflows/definitions",
        "/workflows/analytics",
        f"/workflows/{recorded.failed_run}",
        f"/workflows/{recorded.resolved_run}",
        f"/workflows/{recorded.completed_run}",
        f"/processes/{recorded.failed_step}",
        "/health",
    ]


def _visit(browser: Any, recorded: Recorded, principal: Principal) -> dict[str, Any]:
    """Each page as ``principal``'s browser shows it: its HTML and what it offers."""
    app = create_app(
        recorded.url, auth=lambda request: principal, refresh_seconds=3600, keep_statistics=False
    )
    seen: dict[str, Any] = {}
    with serve(app) as base:
        context = browser.new_context(viewport={"width": 1360, "height": 900})
        watched = Watched(context.new_page())
        page = watched.page
        for path in _pages(recorded):
            response = page.goto(base + path)
            assert response is not None and response.status == 200, path
            page.wait_for_load_state("networkidle")
            seen[path] = {
                "html": page.content(),
                "text": page.locator("main").inner_text(),
                "actions": {s: page.locator(s).count() for s in ACTIONS},
            }
        context.close()
    app.state.dashboard.store.dispose()
    assert watched.problems == []
    return seen


def test_a_viewers_pages_offer_no_action_and_show_no_payload(
    browser: Any, recorded: Recorded
) -> None:
    seen = _visit(browser, recorded, VIEWER)
    for path, shown in seen.items():
        assert [w for w, s in SECRETS.items() if s in shown["html"]] == [], path
        assert {s: n for s, n in shown["actions"].items() if n} == {}, path
    # Payloads are there, hidden; what anyone may read is there, readable.
    detail = seen[f"/processes/{recorded.failed}"]["text"]
    assert HIDDEN in detail and "charging the card" in detail and "CardDeclined" in detail
    assert HIDDEN in seen[f"/workflows/{recorded.failed_run}"]["text"]
    assert "Search" not in seen["/processes"]["text"]  # no search box to be refused


def test_an_operator_without_payloads_keeps_its_actions_and_sees_no_payload(
    browser: Any, recorded: Recorded
) -> None:
    seen = _visit(browser, recorded, OPS)
    for path, shown in seen.items():
        assert [w for w, s in SECRETS.items() if s in shown["html"]] == [], path
    assert seen["/health"]["actions"]["button:text-is('Reap now')"] == 1
    assert seen[f"/workflows/{recorded.failed_run}"]["actions"]["form[method=post]"] > 0
