"""A run whose context and results are huge: its pages read previews, not the values."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

import flow_tracker
from flow_tracker.web import create_app
from flow_tracker.web.context import SHOWN_VALUE_LIMIT

WAIT = 60.0


@pytest.fixture
def dashboard(tracked: str) -> Iterator[TestClient]:
    """The dashboard on the tracked database."""
    app = create_app(tracked)
    with TestClient(app, base_url="http://testserver") as client:
        yield client
    app.state.dashboard.store.dispose()


def test_pages_of_a_run_with_a_huge_context_and_result_show_previews(
    tracked: str, dashboard: TestClient
) -> None:
    flow_tracker.configure(
        database_url=tracked,
        log_to_stdlib=False,
        max_context_bytes=50_000_000,
        max_result_bytes=50_000_000,
    )
    wf = flow_tracker.workflow("huge_values")

    @wf.step()
    def load(context: Any) -> list[int]:
        return list(range(200_000))

    context = {f"key-{i}": i for i in range(100_000)}
    run = wf.run(context=context)
    assert run.wait(WAIT).status == "completed"

    for path in (f"/workflows/{run.id}", f"/api/workflows/{run.id}", f"/processes/{run.id}"):
        page = dashboard.get(path)
        assert page.status_code == 200, path
        assert "original_size" in page.text, path
        # Previews, not the values: far less than the megabyte each value takes.
        assert len(page.content) < 4 * SHOWN_VALUE_LIMIT, (path, len(page.content))
        # The last key of the context and the end of the result list are past any preview.
        assert "key-99999" not in page.text, path
        assert "199998, 199999" not in page.text and "199998,199999" not in page.text, path
    # The library reads them whole: they are the steps' inputs.
    assert flow_tracker.get_workflow(run.id).context == context
