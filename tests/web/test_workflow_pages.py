"""The workflow pages: the list, a run drawn as SVG, and retry, resolve and cancel by form."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

import flow_tracker
from flow_tracker.store.schema import transitions
from flow_tracker.web import create_app
from tests.web.conftest import ORIGIN

XSS = '<script>alert("x")</script>'
WAIT = 30.0


def _order(name: str, fails: list[int]) -> flow_tracker.Workflow:
    wf = flow_tracker.workflow(name)

    @wf.step(name=f"validate {XSS}")
    def validate(context: Any) -> dict[str, Any]:
        return {"note": XSS, "api_token": "tok-secret-1"}

    def charge(context: Any, **parents: Any) -> dict[str, Any]:
        if fails:
            fails.pop()
            raise TimeoutError("the gateway timed out")
        return {"paid": 42}

    wf.step(name="charge", depends_on=[validate])(charge)
    wf.step(name="confirm", depends_on=["charge"])(lambda context, charge: charge)
    return wf


@pytest.fixture
def board(tracked: str) -> Iterator[TestClient]:
    app = create_app(tracked)
    with TestClient(app, base_url=ORIGIN) as client:
        yield client
    app.state.dashboard.store.dispose()


def _token(client: TestClient, path: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).text)
    assert match, f"{path} carries a CSRF token"
    return match.group(1)


def _post(client: TestClient, path: str, token: str, **form: str) -> Any:
    return client.post(
        path, data={"csrf_token": token, **form}, headers={"origin": ORIGIN}, follow_redirects=False
    )


def test_the_list_shows_runs_with_filters_and_pages(board: TestClient) -> None:
    ok = _order("pages_list", []).run(context={"n": 1}).wait(WAIT)
    bad = _order("pages_list", [1]).run(context={"n": 2}).wait(WAIT)
    page = board.get("/workflows")
    assert page.status_code == 200
    assert f'/workflows/{ok.id}"' in page.text and f'/workflows/{bad.id}"' in page.text
    failed = board.get("/workflows?status=failed").text
    assert f'/workflows/{bad.id}"' in failed and f'/workflows/{ok.id}"' not in failed
    assert "<code>charge</code>" in failed
    assert board.get("/workflows?status=weird").status_code == 400
    broken = board.get("/workflows?before=garbage")
    assert broken.status_code == 400 and "page link is broken" in broken.text
    assert 'href="/workflows"' in board.get("/").text  # the overview links to workflows


def test_the_list_pages_by_cursor(board: TestClient) -> None:
    wf = flow_tracker.workflow("pages_many")
    wf.step(name="only")(lambda context: 1)
    runs = [wf.run() for _ in range(51)]
    for run in runs:
        run.wait(WAIT)
    first = board.get("/workflows?name=pages_many").text
    match = re.search(r'href="(/workflows\?[^"]*before=[^"]+)"', first)
    assert match, "a next-page link"
    second = board.get(match.group(1).replace("&amp;", "&")).text
    oldest = f'/workflows/{runs[0].id}"'
    assert oldest in second and oldest not in first


def test_a_run_page_draws_the_graph_names_the_root_cause_and_escapes_everything(
    board: TestClient,
) -> None:
    run = _order("pages_run", [1]).run(context={"cart": XSS, "password": "pw-secret-2"}).wait(WAIT)
    page = board.get(f"/workflows/{run.id}")
    assert page.status_code == 200
    text = page.text
    assert '<svg class="dag"' in text and "node-root-cause" in text and "node-blocked" in text
    assert "Root cause:</strong> step <code>charge</code>" in text
    assert "blocked: upstream charge failed" in text
    assert XSS not in text and "&lt;script&gt;" in text
    assert "pw-secret-2" not in text and "tok-secret-1" not in text
    step_link = f'href="/processes/{run.steps["charge"].process_id}"'
    assert step_link in text
    assert f'href="/api/workflows/{run.id}/diagram"' in text and "flowchart TD" in text
    assert board.get("/workflows/00000000-0000-0000-0000-000000000000").status_code == 404
    assert board.get("/workflows/not-an-id").status_code == 404
    step_page = board.get(f"/processes/{run.steps['charge'].process_id}").text
    assert f'href="/workflows/{run.id}"' in step_page  # back to its run


def test_a_wide_fan_out_is_one_node_with_counts_that_expands(board: TestClient) -> None:
    wf = flow_tracker.workflow("pages_fan_out")
    wf.step(name="root")(lambda context: 0)
    leaves = [f"leaf_{i}" for i in range(25)]
    for leaf in leaves:
        wf.step(name=leaf, depends_on=["root"])(lambda context, root: 1)
    wf.step(name="join", depends_on=leaves)(lambda context, **p: len(p))
    run = wf.run().wait(WAIT)
    collapsed = board.get(f"/workflows/{run.id}").text
    assert "25 steps: leaf_0" in collapsed and "25 completed" in collapsed
    assert collapsed.count('class="node ') == 3
    expanded = board.get(f"/workflows/{run.id}?expand=1").text
    assert expanded.count('class="node ') == 27


def test_retry_and_resolve_by_form_act_and_are_kept_with_who(board: TestClient) -> None:
    fails = [1, 1]
    run = _order("pages_actions", fails).run().wait(WAIT)
    path = f"/workflows/{run.id}"
    token = _token(board, path)
    refused = _post(board, f"{path}/resolve", token, step="charge", result="{nope")
    assert refused.status_code == 400 and "must be JSON" in refused.text
    done = _post(board, f"{path}/retry", token, step="charge", reason="gateway back")
    assert done.status_code == 303 and done.headers["location"].endswith("?done=retry")
    assert flow_tracker.get_workflow(run.id).status in ("running", "failed")
    status = flow_tracker.WorkflowRun(run.id, "pages_actions").wait(WAIT)
    assert status.status == "failed"  # the second failure
    done = _post(
        board,
        f"{path}/resolve",
        _token(board, path),
        step="charge",
        result='{"paid": "phone"}',
        reason="paid by phone",
    )
    assert done.status_code == 303
    status = flow_tracker.WorkflowRun(run.id, "pages_actions").wait(WAIT)
    assert status.status == "completed" and status.steps["confirm"].result == {"paid": "phone"}
    again = _post(board, f"{path}/retry", token, step="charge")
    assert again.status_code == 409 and "not failed" in again.text
    store = flow_tracker.runtime.store()
    with store.engine.connect() as conn:
        reasons = {r for (r,) in conn.execute(select(transitions.c.reason))}
    assert "retried step charge by dashboard: gateway back" in reasons
    assert "resolved step charge by dashboard: paid by phone" in reasons


def test_cancel_by_form_and_forged_or_read_only_posts_are_refused(tracked: str) -> None:
    release = threading.Event()
    wf = flow_tracker.workflow("pages_cancel")
    wf.step(name="slow")(lambda context: release.wait(WAIT))
    wf.step(name="after", depends_on=["slow"])(lambda context, slow: None)
    run = wf.run()
    app = create_app(tracked)
    read_only = create_app(tracked, read_only=True)
    try:
        with TestClient(app, base_url=ORIGIN) as client:
            path = f"/workflows/{run.id}"
            forged = client.post(f"{path}/cancel", data={"csrf_token": "x" * 43})
            assert forged.status_code == 403
            assert flow_tracker.get_workflow(run.id).status == "running"
            with TestClient(read_only, base_url=ORIGIN) as viewer:
                assert "Cancel run" not in viewer.get(path).text
                token = _token(client, path)
                assert _post(viewer, f"{path}/cancel", token).status_code == 403
            done = _post(client, f"{path}/cancel", token, reason="customer left")
            assert done.status_code == 303
            assert flow_tracker.get_workflow(run.id).status == "cancelled"
            assert _post(client, f"{path}/nope", token).status_code == 404
    finally:
        release.set()
        app.state.dashboard.store.dispose()
        read_only.state.dashboard.store.dispose()


def test_step_analytics_come_from_the_rollups_with_a_critical_path(board: TestClient) -> None:
    wf = flow_tracker.workflow("pages_analytics")
    wf.step(name="fetch")(lambda context: 1)
    wf.step(name="slow_branch", depends_on=["fetch"])(lambda context, fetch: time.sleep(0.05))
    wf.step(name="fast_branch", depends_on=["fetch"])(lambda context, fetch: 2)
    wf.step(name="merge", depends_on=["slow_branch", "fast_branch"])(lambda context, **p: 3)
    for _ in range(3):
        wf.run().wait(WAIT)
    bad = flow_tracker.workflow("pages_analytics_bad")
    bad.step(name="boom")(lambda context: 1 / 0)
    bad.run().wait(WAIT)
    flow_tracker.flush()
    page = board.get("/workflows/analytics?window=24h")
    assert page.status_code == 200
    text = page.text
    assert "pages_analytics" in text and "3 runs" in text
    assert "<code>fetch</code>" in text and "<code>slow_branch</code>" in text
    assert "<code>fast_branch</code>" not in text.split("Critical path")[1].split("</p>")[0]
    assert "100.0 % failed" in text  # the bad workflow
    assert board.get("/workflows/analytics?window=9y").status_code == 400


def test_analytics_show_retry_rates_and_the_slowest_steps_with_all_on_request(
    board: TestClient,
) -> None:
    flaky = flow_tracker.workflow("pages_flaky")
    failures = [1]

    @flaky.step(retries=2, backoff=0.01)
    def call_api(context: Any) -> int:
        if failures:
            failures.pop()
            raise ConnectionError("reset by peer")
        return 1

    flaky.step(name="store", depends_on=[call_api])(lambda context, call_api: 2)
    flaky.run().wait(WAIT)
    flaky.run().wait(WAIT)  # no failure left: one of two call_api steps was retried

    wide = flow_tracker.workflow("pages_wide")
    names = [f"part_{i:02d}" for i in range(25)]
    for name in names:
        wide.step(name=name)(lambda context: 0)
    wide.run().wait(WAIT)
    flow_tracker.flush()

    text = board.get("/workflows/analytics?window=24h").text
    flaky_card = text.split('aria-label="pages_flaky"')[1].split("</section>")[0]
    call_row = flaky_card.split("<td>call_api</td>")[1].split("</tr>")[0]
    assert re.findall(r'class="num">([^<]*)</td>', call_row)[:3] == ["2", "0.0 %", "50.0 %"]
    assert "25.0 % of steps retried" in flaky_card  # 1 of 4 finished steps
    wide_card = text.split('aria-label="pages_wide"')[1].split("</section>")[0]
    assert wide_card.count("<td>part_") == 20
    assert "The 20 slowest of 25 steps." in wide_card
    assert "/workflows/analytics?window=24h&amp;name=pages_wide" in wide_card

    one = board.get("/workflows/analytics?window=24h&name=pages_wide").text
    assert one.count("<td>part_") == 25 and 'aria-label="pages_flaky"' not in one
    nothing = board.get(f"/workflows/analytics?window=24h&name={XSS}")
    assert nothing.status_code == 200 and XSS not in nothing.text
    assert "No run of &lt;script&gt;" in nothing.text


def test_a_failure_in_a_drawn_fan_out_is_drawn_alone_at_the_next_view(board: TestClient) -> None:
    wf = flow_tracker.workflow("pages_fan_out_fails")
    wf.step(name="root")(lambda context: 0)
    failing = {"leaf_7"}
    leaves = [f"leaf_{i}" for i in range(25)]
    for leaf in leaves:

        def body(context: Any, root: int, leaf: str = leaf) -> int:
            if leaf in failing:
                raise ValueError(f"{leaf} broke")
            return 1

        wf.step(name=leaf, depends_on=["root"])(body)
    run = wf.run().wait(WAIT)
    assert run.status == "failed"
    first = board.get(f"/workflows/{run.id}").text
    assert "24 steps: leaf_0" in first and 'class="node node-failed node-root-cause"' in first
    failing.clear()
    flow_tracker.retry_step(run.id, "leaf_7")
    deadline = time.monotonic() + WAIT
    while flow_tracker.get_workflow(run.id).status != "completed":
        assert time.monotonic() < deadline, f"the retried run did not complete in {WAIT:g} s"
        time.sleep(0.05)
    again = board.get(f"/workflows/{run.id}").text  # the run's DAG is drawn from a cache now
    assert "25 steps: leaf_0" in again and "25 completed" in again
    assert "node-failed" not in again
