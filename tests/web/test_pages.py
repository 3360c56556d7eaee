"""Every page and API route answers, filters narrow the list, the detail page shows the tree."""

from __future__ import annotations

import re
from pathlib import Path

from starlette.testclient import TestClient

import flow_tracker
from flow_tracker.web import create_app
from tests.web.conftest import PINGS, Sample


def test_every_page_renders_with_the_sample_data(client: TestClient, sample: Sample) -> None:
    for path in (
        "/",
        "/?window=1h",
        "/?window=7d",
        "/?window=30d",
        "/processes",
        f"/processes/{sample.imported}",
        f"/processes/{sample.charged}",
        f"/processes/{sample.running}",
        "/cleanup",
    ):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("text/html"), path
        assert '<main id="ft-main">' in response.text, path


def test_overview_counts_what_finished_in_the_window(client: TestClient) -> None:
    page = client.get("/?window=24h").text
    # ImportOrders + PINGS completed, ChargeCard failed: finished = PINGS + 2.
    assert re.search(rf"Finished</span>\s*<span class=\"stat-value\">{PINGS + 2}<", page)
    assert re.search(r"Failed</span>\s*<span class=\"stat-value\">1<", page)
    assert "ChargeCard" in page and "CardDeclined" in page  # recent failures
    stats = client.get("/api/stats?window=24h").json()
    assert stats["finished"] == {"completed": PINGS + 1, "failed": 1}
    assert stats["unfinished"] == {"running": 1}
    assert abs(stats["failure_rate"] - 1 / (PINGS + 2)) < 1e-9
    names = {s["name"] for s in stats["slowest_processes"]}
    assert {"ImportOrders", "ChargeCard", "Ping"} <= names
    assert sum(b["completed"] + b["failed"] for b in stats["throughput"]["bars"]) == PINGS + 2


def test_status_filter_lists_only_that_status(client: TestClient, sample: Sample) -> None:
    page = client.get("/processes?status=failed").text
    assert sample.charged in page
    assert sample.imported not in page
    api = client.get("/api/processes", params={"status": "running"}).json()
    assert [p["id"] for p in api["items"]] == [sample.running]


def test_name_category_metadata_and_search_filters(client: TestClient, sample: Sample) -> None:
    def ids(**params: str) -> set[str]:
        return {p["id"] for p in client.get("/api/processes", params=params).json()["items"]}

    assert ids(name="ImportOrders") == {sample.imported}
    assert ids(category="billing") == {sample.charged}
    assert ids(meta="tenant=acme") == {sample.imported}
    assert ids(meta="user_id=42") == {sample.imported}
    assert ids(meta='user_id="42"') == set()  # quoted: the string "42", which is not stored
    assert ids(q="one row SKIPPED") == {sample.imported}  # a log message, any case
    assert ids(q="chargecard") == {sample.charged}  # a name
    assert len(ids(range="1h", category="health", limit="100")) == PINGS


def test_keyset_pages_cover_every_process_once(client: TestClient) -> None:
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "25"} | ({"cursor": cursor} if cursor else {})
        page = client.get("/api/processes", params=params).json()
        seen += [p["id"] for p in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == PINGS + 3
    html = client.get("/processes?limit=25").text
    assert 'rel="next"' in html
    oldest = client.get("/api/processes", params={"order": "oldest", "limit": "1"}).json()
    assert oldest["items"][0]["name"] == "ImportOrders"


def test_bad_filters_answer_400_with_the_reason(client: TestClient) -> None:
    page = client.get("/processes?status=bogus")
    assert page.status_code == 400
    assert "status &#39;bogus&#39; is unknown" in page.text
    api = client.get("/api/processes?cursor=not-a-cursor")
    assert api.status_code == 400
    assert "invalid cursor" in api.json()["error"]
    assert client.get("/processes?meta=no-equals-sign").status_code == 400
    assert client.get("/api/stats?window=2y").status_code == 400


def test_numeric_parameters_are_clamped(client: TestClient) -> None:
    assert len(client.get("/api/processes?limit=100000").json()["items"]) == PINGS + 3
    assert len(client.get("/api/processes?limit=-5").json()["items"]) == 1
    assert len(client.get("/api/processes?limit=abc").json()["items"]) == 50
    assert client.get("/cleanup?days=99999999999").status_code == 200


def test_detail_page_shows_header_timeline_tree_and_logs(
    client: TestClient, sample: Sample
) -> None:
    page = client.get(f"/processes/{sample.imported}").text
    assert page.count('class="wf-row"') == 3  # download, fetch orders.csv, store
    for text in ("fetch orders.csv", "Import started", "one row skipped", "&#34;tenant&#34;"):
        assert text in page
    assert "debug line" in page
    filtered = client.get(f"/processes/{sample.imported}?level=warning").text
    assert "one row skipped" in filtered and "debug line" not in filtered
    assert "Import started" not in filtered


def test_detail_of_a_failure_shows_the_error_and_traceback(
    client: TestClient, sample: Sample
) -> None:
    page = client.get(f"/processes/{sample.charged}").text
    assert "CardDeclined" in page
    assert "card 4242 declined" in page
    assert "Traceback (most recent call last)" in page
    assert "wf-failed" in page  # the failed flow is red on the timeline


def test_running_process_refreshes_itself_and_a_finished_one_does_not(
    client: TestClient, sample: Sample
) -> None:
    assert 'data-refresh="5"' in client.get(f"/processes/{sample.running}").text
    assert "40 %" in client.get(f"/processes/{sample.running}").text
    assert 'data-refresh="0"' in client.get(f"/processes/{sample.imported}").text


def test_unknown_process_and_route_answer_404(client: TestClient) -> None:
    assert client.get("/processes/0192f000-0000-7000-8000-000000000000").status_code == 404
    assert client.get("/processes/not-an-id").status_code == 404
    assert client.get("/api/processes/not-an-id").status_code == 404
    assert client.get("/no/such/page").status_code == 404


def test_api_detail_and_status_by_process_id(client: TestClient, sample: Sample) -> None:
    detail = client.get(f"/api/processes/{sample.imported}").json()
    assert detail["name"] == "ImportOrders"
    assert [f["name"] for f in detail["flows"]] == ["download", "store"]
    assert detail["counts"] == {"flows": 3, "logs": 4}
    status = client.get(f"/api/status/{sample.running}").json()
    assert status["status"] == "running"
    assert status["progress"] == 0.4
    assert client.get("/api/status/no-such-job").status_code == 404


def test_openapi_document_describes_every_api_route(client: TestClient, sample: Sample) -> None:
    doc = client.get("/api/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    wf = flow_tracker.workflow("openapi_wf")
    wf.step(name="only")(lambda context: 1)
    run = wf.run().wait(30)
    concrete = {
        "/api/workflows": "/api/workflows",
        "/api/workflows/{run_id}": f"/api/workflows/{run.id}",
        "/api/workflows/{run_id}/diagram": f"/api/workflows/{run.id}/diagram",
        "/api/processes": "/api/processes",
        "/api/processes/{process_id}": f"/api/processes/{sample.imported}",
        "/api/processes/{process_id}/compare": f"/api/processes/{sample.imported}/compare",
        "/api/status/{id}": f"/api/status/{sample.imported}",
        "/api/stats": "/api/stats",
        "/api/health": "/api/health",
        "/api/workflow-definitions": "/api/workflow-definitions",
        "/api/audit": "/api/audit",
    }
    # Actions are POSTs (tests/web/test_retry_failed.py and test_start_api.py check them
    # against the document).
    actions = {"/api/workflows/{run_id}/retry-failed", "/api/workflows/{namespace}/{name}/runs"}
    assert set(doc["paths"]) == set(concrete) | actions
    for template, path in concrete.items():
        response = client.get(path)
        assert response.status_code == 200, path
        content = doc["paths"][template]["get"]["responses"]["200"]["content"]
        if "text/plain" in content:
            assert response.headers["content-type"].startswith("text/plain"), path
            continue
        schema = content["application/json"]
        required = (
            schema["schema"].get("required") or doc["components"]["schemas"]["Process"]["required"]
        )
        assert set(required) <= set(response.json()), path


def test_static_assets_are_served(client: TestClient) -> None:
    assert client.get("/static/app.css").status_code == 200
    assert (
        client.get("/static/app.js")
        .headers["content-type"]
        .startswith(("text/javascript", "application/javascript"))
    )


def test_detail_page_and_api_show_the_state_history_escaped(
    client: TestClient, sample: Sample
) -> None:
    import flow_tracker
    from flow_tracker import Status
    from flow_tracker.jobs import finish_job, record_enqueued, start_job

    pid = record_enqueued(job_system="rq", job_id="hist-1", name="Resize", queue="media")
    first = start_job(job_system="rq", job_id="hist-1", name="Resize", queue="media", attempt=1)
    finish_job(first, Status.RETRYING, ConnectionError("<script>alert(1)</script>"))
    second = start_job(job_system="rq", job_id="hist-1", name="Resize", queue="media", attempt=2)
    finish_job(second, Status.COMPLETED)
    assert pid is not None and flow_tracker.flush()
    page = client.get(f"/processes/{pid}").text
    strip = page[page.index('aria-label="State history"') : page.index('aria-label="Timeline"')]
    assert re.findall(r"pill-(\w+)", strip) == [
        "queued",
        "running",
        "retrying",
        "running",
        "completed",
    ]
    assert "attempt 2" in strip
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in strip and "<script>" not in strip
    history = client.get(f"/api/processes/{pid}").json()["history"]
    assert [h["status"] for h in history][-2:] == ["running", "completed"]
    assert history[2]["reason"] == "ConnectionError: <script>alert(1)</script>"


def test_the_first_page_of_a_database_nothing_was_recorded_in_answers(tmp_path: Path) -> None:
    app = create_app(f"sqlite:///{tmp_path / 'new.db'}")  # with its statistics keeper
    with TestClient(app, base_url="http://testserver") as client:
        assert client.get("/").status_code == 200
        assert client.get("/processes").status_code == 200
    app.state.dashboard.store.dispose()
