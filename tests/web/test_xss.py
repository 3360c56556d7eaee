"""Hostile text everywhere the dashboard shows user data: stored safely, shown escaped, never run.

Each payload of the corpus becomes a process name, a flow name, a log message, a metadata
key and value, and an error message; and each is sent as filter parameters. The server's
HTML must never contain a payload raw; in Chromium no payload may run (no dialog, no
``window.__xss``, no console error such as a blocked inline script) and no element may
carry an event handler or a ``javascript:`` link.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from sqlalchemy import update
from starlette.testclient import TestClient

import flow_tracker
from flow_tracker import runtime
from flow_tracker.store.schema import processes
from flow_tracker.web import create_app
from tests.conftest import _service_missing
from tests.web.browser import CHROMIUM_FLAGS, chromium_path, missing_reason, serve
from tests.web.conftest import ORIGIN
from tests.web.xss_payloads import PAYLOADS

DANGEROUS = set("<>\"'")


class Hostile(Exception):
    """Raised with a payload as its message."""


def record_payloads() -> list[str]:
    """One failed process per payload, the payload in every user-supplied field."""
    ids = []
    for index, payload in enumerate(PAYLOADS):
        with contextlib.suppress(Hostile):
            with flow_tracker.track(
                payload, category="xss", metadata={payload: payload, "n": index}
            ) as tracker:
                ids.append(str(tracker.process_id))
                tracker.info(payload, data={"payload": payload})
                with tracker.flow(payload, metadata={"note": payload}) as flow:
                    flow.warning(payload)
                    raise Hostile(payload)
    flow_tracker.flush()
    return ids


def filter_urls(payload: str) -> list[str]:
    """Pages that echo a payload given as a parameter."""
    return [
        "/processes?" + urlencode({"q": payload, "name": payload, "meta": f"{payload}={payload}"}),
        "/processes?" + urlencode({"status": payload}),
        "/processes?" + urlencode({"since": payload}),
        "/cleanup?" + urlencode({"status": payload, "days": payload}),
        "/?" + urlencode({"window": payload}),
        "/health?" + urlencode({"requeued": payload, "refused": "1", "reason": payload}),
        "/processes/" + quote(payload, safe=""),
    ]


@pytest.fixture
def hostile(tracked: str) -> Iterator[tuple[str, list[str]]]:
    """The tracking database with the corpus recorded; some lost, some as held locks."""
    ids = record_payloads()
    with runtime.store().engine.begin() as conn:  # the health page lists lost jobs
        conn.execute(
            update(processes)
            .where(processes.c.id.in_([uuid.UUID(i) for i in ids[:40]]))
            .values(status="lost", host=PAYLOADS[0], queue=PAYLOADS[1], job_system=PAYLOADS[2][:32])
        )
    leases = [flow_tracker.exclusive(p[:200] or "x", key=p, ttl=300) for p in PAYLOADS[:30]]
    for lease in leases:
        lease.__enter__()
    yield tracked, ids
    for lease in leases:
        lease.__exit__(None, None, None)


def test_corpus_has_at_least_a_hundred_payloads() -> None:
    assert len(PAYLOADS) >= 100
    assert len(set(PAYLOADS)) == len(PAYLOADS)


# Some 1,900 requests: the fast lane sweeps SQLite, the full run both databases.
@pytest.mark.parametrize(
    "database_url",
    ["sqlite", pytest.param("postgresql", marks=[pytest.mark.slow, pytest.mark.postgres])],
    indirect=True,
)
def test_no_page_contains_a_payload_unescaped(hostile: tuple[str, list[str]]) -> None:
    url, ids = hostile
    app = create_app(url)
    with TestClient(app, base_url=ORIGIN) as client:
        pages = ["/", "/?window=30d", "/processes?limit=200", "/processes?category=xss&limit=200"]
        pages += ["/health"] + [f"/processes/{pid}" for pid in ids]
        for path in pages:
            response = client.get(path)
            assert response.status_code == 200, path
            for payload in PAYLOADS:
                if DANGEROUS & set(payload):
                    assert payload not in response.text, (path, payload)
        for payload in PAYLOADS:
            for path in filter_urls(payload):
                response = client.get(path)
                assert response.status_code in (200, 400, 404), path
                if DANGEROUS & set(payload):
                    assert payload not in response.text, (path, payload)
        # The API returns the payloads intact, as JSON data.
        detail = client.get(f"/api/processes/{ids[0]}").json()
        assert detail["name"] == PAYLOADS[0]
        assert detail["error"]["message"] == PAYLOADS[0]
    app.state.dashboard.store.dispose()


_CHECK_DOM = """() => {
  const bad = [];
  for (const el of document.querySelectorAll('*')) {
    for (const a of el.attributes) {
      if (a.name.startsWith('on')) bad.push(el.tagName + '[' + a.name + ']');
      if (['href', 'src', 'action', 'data', 'formaction', 'srcdoc'].includes(a.name)
          && /^\\s*(javascript|data):/i.test(a.value)) bad.push(el.tagName + '[' + a.name + ']');
    }
  }
  const foreign = document.querySelectorAll(
    'iframe, object, embed, img, video, audio, base, meta[http-equiv], marquee, template, ' +
    'textarea, math'
  ).length;
  const scripts = Array.from(document.scripts).filter(
    s => !new URL(s.src || 'inline:', location.href).pathname.endsWith('/static/app.js'));
  return {bad, foreign, scripts: scripts.length, xss: window.__xss || 0,
          styles: document.querySelectorAll('style, link[rel=stylesheet]').length};
}"""


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.slow  # a real browser
def test_no_payload_runs_in_the_browser(hostile: tuple[str, list[str]]) -> None:
    reason = missing_reason()
    if reason:
        _service_missing(reason)
    from playwright.sync_api import sync_playwright

    url, ids = hostile
    app = create_app(url)
    problems: list[str] = []
    with serve(app) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS
        )
        page: Any = browser.new_page()

        def on_dialog(dialog: Any) -> None:
            problems.append(f"dialog {dialog.message}")
            dialog.dismiss()

        page.on("dialog", on_dialog)
        page.on(
            "console",
            lambda m: (
                problems.append(f"console {m.type}: {m.text}")
                if m.type in ("error", "warning")
                else None
            ),
        )
        page.on("pageerror", lambda e: problems.append(f"page error {e}"))
        paths = ["/", "/?window=30d", "/processes?limit=200", "/processes?category=xss&limit=200"]
        paths += ["/health"] + [f"/processes/{pid}" for pid in ids]
        paths += [p for payload in PAYLOADS for p in filter_urls(payload)[:2]]
        for path in paths:
            response = page.goto(base + path)
            assert response is not None and response.status in (200, 400, 404), path
            found = page.evaluate(_CHECK_DOM)
            assert found["bad"] == [], (path, found["bad"])
            assert found["foreign"] == 0 and found["scripts"] == 0, (path, found)
            assert found["xss"] == 0 and found["styles"] == 1, (path, found)
        browser.close()
    app.state.dashboard.store.dispose()
    # A 400/404 answer is expected for some filter pages; the browser logs those as console
    # errors about the resource, which are not injections.
    problems = [p for p in problems if "status of 40" not in p]
    assert problems == []
