"""Progress values stay finite floats, whatever finite numbers a job passes, on both databases.

The API, the status endpoint and the dashboard serve progress as JSON, which has
no infinity; SQLite cannot bind an integer beyond 64 bits and PostgreSQL's float
column refuses one beyond the float range. A value out of range would either
print ``Infinity`` or lose the batch that holds it, the process's end with it.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import pytest
from starlette.testclient import TestClient

import flow_tracker
from flow_tracker.web import create_app

LARGEST = sys.float_info.max


def strict_json(text: str) -> Any:
    """``text`` parsed as JSON, refusing the ``Infinity`` and ``NaN`` that Python writes."""

    def refuse(token: str) -> Any:
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_increments_past_the_float_range_stop_at_the_largest_float(tracked: str) -> None:
    tracker = flow_tracker.start("overflowing increments")
    tracker.progress.total = 10
    tracker.progress.increment(1e308)
    tracker.progress.increment(1e308)  # 2e308 is beyond the float range
    assert tracker.progress.current == LARGEST
    tracker.progress.update(current=tracker.progress.current)  # stored at once
    status = flow_tracker.get_status(tracker.process_id)
    assert status is not None and status.current == LARGEST
    assert strict_json(status.to_json())["current"] == LARGEST
    tracker.complete()

    record = flow_tracker.get_process(tracker.process_id)
    assert record is not None and record.status is flow_tracker.Status.COMPLETED
    assert record.progress_current == LARGEST
    app = create_app(tracked)
    with TestClient(app) as client:
        response = client.get(f"/api/processes/{tracker.process_id}")
    app.state.dashboard.store.dispose()
    assert response.status_code == 200
    assert strict_json(response.text)["progress"]["current"] == LARGEST


def test_decrements_past_the_float_range_stop_at_the_lowest_float(tracked: str) -> None:
    with flow_tracker.track("overflowing decrements") as tracker:
        tracker.progress.decrement(1e308)
        tracker.progress.decrement(1e308)
        assert tracker.progress.current == -LARGEST
        assert tracker.progress.fraction == 0.0
    record = flow_tracker.get_process(tracker.process_id)
    assert record is not None and record.progress_current == -LARGEST


@pytest.mark.parametrize("huge", [2**64, 10**400], ids=["2**64", "10**400"])
def test_an_integer_beyond_64_bits_is_stored_as_a_float_with_the_process_end(
    tracked: str, huge: int
) -> None:
    with flow_tracker.track("huge totals") as tracker:
        tracker.progress.total = huge
        tracker.progress.current = -huge
    record = flow_tracker.get_process(tracker.process_id)
    assert record is not None
    assert record.progress_total == min(LARGEST, huge)
    assert record.progress_current == -min(LARGEST, huge)
    assert record.status is flow_tracker.Status.COMPLETED
    assert type(tracker.progress.total) is float


def test_progress_reads_back_as_floats_and_keeps_small_counts_exact(tracked: str) -> None:
    with flow_tracker.track("counting") as tracker:
        tracker.progress.total = 3
        for _ in range(3):
            tracker.progress.increment()
        assert tracker.progress.current == 3.0 and type(tracker.progress.current) is float
        assert tracker.progress.fraction == 1.0
    record = flow_tracker.get_process(tracker.process_id)
    assert record is not None and (record.progress_current, record.progress_total) == (3, 3)


def test_non_finite_arguments_are_refused_and_leave_the_value_as_it_was(tracked: str) -> None:
    tracker = flow_tracker.start("non finite")
    tracker.progress.update(current=2, total=4)
    for bad in (math.inf, -math.inf, math.nan):
        with pytest.raises(flow_tracker.UsageError, match="finite number"):
            tracker.progress.increment(bad)
        with pytest.raises(flow_tracker.UsageError, match="finite number"):
            tracker.progress.update(current=bad, total=8)
    assert (tracker.progress.current, tracker.progress.total) == (2, 4)
    tracker.complete()
    record = flow_tracker.get_process(tracker.process_id)
    assert record is not None and (record.progress_current, record.progress_total) == (2, 4)
