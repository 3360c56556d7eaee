"""The comparison on the dashboard: ``/processes/{id}/compare``, its API, its links, its safety.

Runs are built by hand (``tests/compare_runs.py``) on SQLite and PostgreSQL;
the browser test fills names, metadata, log lines and errors with the XSS
corpus and looks at the pages in Chromium.
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy.engine import make_url
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

import flow_tracker
from flow_tracker import runtime
from flow_tracker.cli import main
from flow_tracker.comparison import compare_runs
from flow_tracker.store.engine import Store
from flow_tracker.web import create_app
from flow_tracker.web.compare_views import rows_shown
from tests.compare_runs import F, L, at, build
from tests.conftest import _service_missing
from tests.support.hostile import TEXTS
from tests.support.proxy import TcpProxy
from tests.web.browser import CHROMIUM_FLAGS, chromium_path, missing_reason, serve
from tests.web.conftest import ORIGIN
from tests.web.test_xss import _CHECK_DOM, DANGEROUS
from tests.web.xss_payloads import PAYLOADS

SCREENSHOTS = Path(tempfile.gettempdir()) / "flow-tracker-test-screenshots"
NOBODY = "0192f000-0000-7000-8000-000000000000"
WAIT = 30.0
X = "\N{MULTIPLICATION SIGN}"


@pytest.fixture
def store(tracked: str) -> Store:
    found = runtime.store()
    found.ensure_schema()
    return found


@pytest.fixture
def client(tracked: str) -> Iterator[TestClient]:
    app = create_app(tracked, keep_statistics=False)
    with TestClient(app, base_url=ORIGIN, raise_server_exceptions=False) as test_client:
        yield test_client
    app.state.dashboard.store.dispose()


def _pair(store: Store) -> tuple[uuid.UUID, uuid.UUID]:
    """A good run and a failed one after it: slower, new, missing and failed flows, metadata."""
    good = build(
        store,
        "nightly_import",
        start=at(0),
        metadata={"provider": "stripe", "rows": 10},
        flows_=[F("download", children=[F("fetch")]), F("charge", ms=100.0), F("archive")],
        logs=[L("start"), L("fetched"), L("charged")],
    )
    failed = build(
        store,
        "nightly_import",
        start=at(1),
        status="failed",
        error=("CardDeclined", "card 4242 declined"),
        metadata={"provider": "adyen", "rows": 10},
        flows_=[
            F("download", children=[F("fetch")]),
            F("charge", ms=410.0),
            F("notify", status="failed", error=("CardDeclined", "card 4242 declined")),
        ],
        logs=[L("start"), L("fetched"), L("declined", level="error")],
    )
    return good, failed


def test_the_page_shows_the_summary_both_trees_and_marks_each_difference(
    store: Store, client: TestClient
) -> None:
    good, failed = _pair(store)
    page = client.get(f"/processes/{failed}/compare")
    assert page.status_code == 200
    html = page.text
    summary = re.search(r'id="cmp-summary">([^<]*)<', html)
    assert summary is not None
    assert summary.group(1) == (
        f"failed (CardDeclined), 1 flow slower (charge 4.1{X}), 1 new flow (notify, failed), "
        "1 flow missing (archive), metadata key `provider` changed, logs differ from line 3"
    )
    assert f'href="/processes/{good}"' in html and "(last good run)" in html
    rows = re.findall(r'<tr class="chg-(\w+)">', html.split('class="table compact cmp-tree"')[1])
    assert rows == ["same", "same", "slower", "removed", "added"]  # archive where it was
    assert '<td class="cmp-name cmp-d1" title="fetch">fetch</td>' in html
    assert "&#34;stripe&#34;" in html and "&#34;adyen&#34;" in html
    assert 'class="log log-error cmp-diff-line"' in html
    assert "CardDeclined" in html and "card 4242 declined" in html


def test_the_api_answers_what_the_library_does(store: Store, client: TestClient) -> None:
    good, failed = _pair(store)
    answer = client.get(f"/api/processes/{failed}/compare")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == flow_tracker.compare(failed).to_dict()
    chosen = client.get(f"/api/processes/{good}/compare?with={failed}").json()
    assert chosen["baseline"]["id"] == str(failed) and chosen["baseline_chosen"] is True
    assert chosen["notes"] == [
        "the baseline did not complete: it is failed",
        "the baseline started after this run",
    ]


def test_a_run_without_an_earlier_good_run_gets_a_page_that_says_so(
    store: Store, client: TestClient
) -> None:
    good, _failed = _pair(store)
    page = client.get(f"/processes/{good}/compare")
    assert page.status_code == 200
    assert "no earlier good run of nightly_import to compare with" in page.text
    answer = client.get(f"/api/processes/{good}/compare").json()
    assert answer["found"] is False and answer["baseline"] is None


def test_bad_and_unknown_ids_answer_400_or_404_with_the_reason(
    store: Store, client: TestClient
) -> None:
    _good, failed = _pair(store)
    for path, status, reason in [
        ("/processes/nope/compare", 404, "no process with this id"),
        (f"/processes/{NOBODY}/compare", 404, f"no process with id {NOBODY}"),
        (f"/processes/{failed}/compare?with=nope", 400, "with: &#39;nope&#39; is not a process id"),
        (f"/processes/{failed}/compare?with={failed}", 400, "compared with itself"),
        (f"/processes/{failed}/compare?with={NOBODY}", 404, "to compare with"),
        ("/api/processes/nope/compare", 404, "no process with this id"),
        (f"/api/processes/{NOBODY}/compare", 404, f"no process with id {NOBODY}"),
        (f"/api/processes/{failed}/compare?with=nope", 400, "with: 'nope' is not a process id"),
        (f"/api/processes/{failed}/compare?with={failed}", 400, "compared with itself"),
        (f"/api/processes/{failed}/compare?with={NOBODY}", 404, "to compare with"),
    ]:
        response = client.get(path)
        assert response.status_code == status, path
        assert reason in response.text, (path, response.text[:300])
    assert client.get(f"/processes/{failed}/compare?with=").status_code == 200  # the default
    assert client.get(f"/processes/{failed}/compare?with=%20").status_code == 200


@pytest.mark.parametrize("prefix", ["/processes", "/api/processes"])
def test_hostile_ids_never_answer_5xx(store: Store, client: TestClient, prefix: str) -> None:
    _good, failed = _pair(store)
    values = ["%00", "a%00b", "%ff", "%ED%A0%80", "x" * 10_000, "%3Cscript%3E", "9" * 5_000]
    for value in values:
        for path in (f"{prefix}/{value}/compare", f"{prefix}/{failed}/compare?with={value}"):
            response = client.get(path)
            assert response.status_code in (400, 404), (path[:80], response.status_code)
            assert "Traceback" not in response.text


def test_failed_and_slow_runs_link_to_the_comparison_and_ordinary_ones_do_not(
    store: Store, client: TestClient
) -> None:
    good, failed = _pair(store)
    slow = build(store, "nightly_import", start=at(2), duration_ms=9_000.0)
    usual = build(store, "nightly_import", start=at(3), duration_ms=1_100.0)
    link = "Compare with last good run"
    assert link in client.get(f"/processes/{failed}").text
    assert f'href="/processes/{slow}/compare"' in client.get(f"/processes/{slow}").text
    assert link not in client.get(f"/processes/{usual}").text
    assert link not in client.get(f"/processes/{good}").text  # no earlier good run


def test_a_failed_workflow_runs_page_links_to_its_step_by_step_comparison(
    tracked: str, client: TestClient
) -> None:
    fail = threading.Event()
    wf = flow_tracker.workflow("compare_page_orders")

    @wf.step()
    def validate(context: Any) -> dict[str, Any]:
        return {"total": 42}

    @wf.step(depends_on=["validate"])
    def charge(context: Any, validate: Any) -> dict[str, Any]:
        if fail.is_set():
            raise ValueError("card <b>declined</b>")
        return {"paid": 42}

    good = wf.run().wait(WAIT)
    fail.set()
    bad = wf.run().wait(WAIT)
    assert (good.status, bad.status) == ("completed", "failed")
    assert f'href="/processes/{bad.id}/compare"' in client.get(f"/workflows/{bad.id}").text
    assert "Compare with last good run" not in client.get(f"/workflows/{good.id}").text
    page = client.get(f"/processes/{bad.id}/compare").text
    assert "newly failed: charge" in page
    steps = page.split('class="table compact cmp-steps"')[1].split("</table>")[0]
    assert steps.count("<tr class=") == 2 and '<tr class="chg-failed">' in steps
    assert "card &lt;b&gt;declined&lt;/b&gt;" in steps


def test_everything_user_supplied_is_escaped_on_the_page(store: Store, client: TestClient) -> None:
    # Stored as the write path stores them: no NUL (it escapes those), names within 255.
    dangerous = [p for p in PAYLOADS if DANGEROUS & set(p) and len(p) <= 255 and "\x00" not in p]
    dangerous = dangerous[:60]
    base_flows = [F(p, ms=10.0) for p in dangerous[:30]]
    run_flows = [F(p, ms=100.0) for p in dangerous[10:40]]
    build(
        store,
        dangerous[0],
        start=at(0),
        flows_=base_flows,
        metadata={p: p for p in dangerous[:30]},
        logs=[L(p) for p in dangerous[:5]],
    )
    target = build(
        store,
        dangerous[0],
        start=at(1),
        status="failed",
        error=(dangerous[1][:200], dangerous[2]),
        flows_=run_flows,
        metadata={p: p + "!" for p in dangerous[10:40]},
        logs=[L(p) for p in reversed(dangerous[:5])],
    )
    html = client.get(f"/processes/{target}/compare").text
    for payload in dangerous:
        assert payload not in html, payload
    answer = client.get(f"/api/processes/{target}/compare").json()
    assert answer["run"]["name"] == dangerous[0]  # JSON carries the data as it is


def test_a_large_tree_draws_the_flows_that_differ_and_the_flows_above_them(
    store: Store, client: TestClient
) -> None:
    def batches(slow: int | None) -> list[F]:
        return [
            F("batch", children=[F("commit", ms=400.0 if i == slow else 100.0)])
            for i in range(1_500)
        ]

    build(store, "wide", start=at(0), flows_=batches(None))
    target = build(store, "wide", start=at(1), flows_=batches(700))
    found = compare_runs(store, target)
    assert [(f.label, f.depth) for f in rows_shown(found)] == [("batch #701", 0), ("commit", 1)]
    page = client.get(f"/processes/{target}/compare").text
    assert "2,998 unchanged flows are not drawn" in page
    table = page.split('class="table compact cmp-tree"')[1].split("</table>")[0]
    assert table.count("<tr class=") == 2 and '<tr class="chg-slower">' in table
    assert f'href="/api/processes/{target}/compare?flows=all"' in page


def test_the_page_of_a_comparison_of_thousands_of_flows_answers(
    store: Store, client: TestClient
) -> None:
    build(store, "wide", start=at(0), flows_=[F(f"item {i}") for i in range(3_000)])
    target = build(
        store,
        "wide",
        start=at(1),
        flows_=[F(f"item {i}", ms=200.0 if i == 5 else 10.0) for i in range(3_000)],
    )
    page = client.get(f"/processes/{target}/compare")
    assert page.status_code == 200
    assert "2,999 unchanged flows are not drawn" in page.text
    assert page.text.count('<tr class="chg-') == 2  # the facts' duration row, the one flow
    assert len(compare_runs(store, target).flows) == 3_000
    listed = client.get(f"/api/processes/{target}/compare").json()
    assert listed["flows_listed"] == "differing" and len(listed["flows"]) == 1
    assert listed["flow_counts"]["same"] == 2_999
    every = client.get(f"/api/processes/{target}/compare?flows=all").json()
    assert every["flows_listed"] == "all" and len(every["flows"]) == 3_000
    assert [f["index"] for f in every["flows"]] == list(range(3_000))
    bad = client.get(f"/api/processes/{target}/compare?flows=some")
    assert bad.status_code == 400 and "flows must be" in bad.json()["error"]


# -- in a browser ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
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


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.slow  # a real browser
def test_compare_pages_with_xss_payloads_run_nothing_in_the_browser(
    store: Store, tracked: str, browser: Any
) -> None:
    payloads = [p for p in PAYLOADS if len(p) <= 255 and "\x00" not in p]
    targets = []
    build(
        store,
        "xss_compare",
        start=at(0),
        flows_=[F(p, ms=10.0, children=[F(p, ms=5.0)]) for p in payloads[::2]],
        metadata={p: p for p in payloads[::3]},
        logs=[L(p) for p in payloads[:20]],
    )
    targets.append(
        build(
            store,
            "xss_compare",
            start=at(1),
            status="failed",
            error=("Hostile", payloads[0]),
            flows_=[F(p, ms=80.0, error=("Hostile", p)) for p in payloads[::3]],
            metadata={p: [p, {p: p}] for p in payloads[::4]},
            logs=[L(p, level="error") for p in payloads[:20]],
        )
    )
    for payload in payloads[:15]:  # the payload as the job's own name
        build(store, payload, start=at(0), flows_=[F(payload)], metadata={"k": payload})
        targets.append(
            build(
                store,
                payload,
                start=at(1),
                status="failed",
                error=(payload[:200], payload),
                flows_=[F(payload, ms=90.0), F("new " + payload[:240])],
            )
        )
    app = create_app(tracked, refresh_seconds=1)
    problems: list[str] = []
    with serve(app) as base:
        page = browser.new_page(viewport={"width": 1360, "height": 900})

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
        for number, target in enumerate(targets):
            for path in (f"/processes/{target}/compare", f"/processes/{target}"):
                response = page.goto(base + path)
                assert response is not None and response.status == 200, path
                page.wait_for_load_state("networkidle")
                found = page.evaluate(_CHECK_DOM)
                assert found["bad"] == [], (path, found["bad"])
                assert found["foreign"] == 0 and found["scripts"] == 0, (path, found)
                assert found["xss"] == 0 and found["styles"] == 1, (path, found)
            if number == 0:
                assert page.locator("#ft-compare").count() == 1  # the failed run links to it
                page.goto(base + f"/processes/{target}/compare")
                assert page.locator("#cmp-summary").is_visible()
                assert page.locator(".cmp-tree tbody tr").count() > len(payloads) // 3
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SCREENSHOTS / "compare-xss.png"), full_page=True)
        page.close()
    app.state.dashboard.store.dispose()
    assert problems == []


def test_under_a_prefix_the_link_and_every_link_of_the_comparison_keep_it(
    store: Store, tracked: str
) -> None:
    _good, failed = _pair(store)
    inner = create_app(tracked, keep_statistics=False)
    outer = Starlette(routes=[Mount("/jobs", app=inner)])
    with TestClient(outer, base_url=ORIGIN) as client:
        detail = client.get(f"/jobs/processes/{failed}").text
        assert f'href="/jobs/processes/{failed}/compare"' in detail
        page = client.get(f"/jobs/processes/{failed}/compare")
        assert page.status_code == 200
        links = re.findall(r'(?:href|src|action)="(/[^"]*)"', page.text)
        assert links and all(link.startswith("/jobs/") for link in links), links
    inner.state.dashboard.store.dispose()


def test_the_comparison_answers_503_while_the_database_is_away(pg_server_url: str) -> None:
    url = make_url(pg_server_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    proxy.start()
    through = url.set(port=proxy.port).render_as_string(hide_password=False)
    flow_tracker.configure(database_url=through, log_to_stdlib=False)
    store = runtime.store()
    store.ensure_schema()
    _good, failed = _pair(store)
    app = create_app(through, keep_statistics=False)
    try:
        with TestClient(app, base_url=ORIGIN) as client:
            assert client.get(f"/processes/{failed}/compare").status_code == 200
            proxy.stop()
            page = client.get(f"/processes/{failed}/compare")
            assert page.status_code == 503 and str(proxy.port) not in page.text
            answer = client.get(f"/api/processes/{failed}/compare")
            assert answer.status_code == 503 and answer.json()["status"] == 503
    finally:
        proxy.stop()
        app.state.dashboard.store.dispose()
        flow_tracker.reset()


class Failure(Exception):
    """The error of a hostile run, with a hostile message."""


@pytest.mark.hostile
@pytest.mark.parametrize("key", list(TEXTS))
def test_runs_written_with_hostile_text_compare_on_the_page_the_api_and_the_cli(
    key: str, tracked: str, client: TestClient
) -> None:
    value = TEXTS[key]

    def job(fail: bool) -> uuid.UUID:
        with contextlib.suppress(Failure):
            with flow_tracker.track(value, metadata={value: value, "same": 1}) as tracker:
                with tracker.flow(value) as flow:
                    flow.log(value)
                if fail:
                    with tracker.flow(value + "!"):
                        tracker.error(value)
                        raise Failure(value)
        return tracker.process_id

    good, failed = job(fail=False), job(fail=True)
    found = flow_tracker.compare(failed)
    assert found.baseline is not None and found.baseline.id == good
    assert [f.change.value for f in found.flows] == ["same", "added"]
    assert "hunter2" not in json.dumps(found.to_dict())
    page = client.get(f"/processes/{failed}/compare")
    assert page.status_code == 200, page.text[:300]
    assert "<script>alert(1)" not in page.text and "<img src=x onerror" not in page.text
    answer = client.get(f"/api/processes/{failed}/compare")
    assert answer.status_code == 200
    data = json.loads(answer.text, parse_constant=lambda token: pytest.fail(token))
    assert data["summary"] == found.summary
    printed = CliRunner(env={"FLOW_TRACKER_DATABASE_URL": tracked}).invoke(
        main, ["compare", str(failed), "--all"]
    )
    assert printed.exit_code == 0, printed.output
    assert "\x1b[31m" not in printed.output and "\x07" not in printed.output
