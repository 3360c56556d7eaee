"""flow_tracker.compare on SQLite and PostgreSQL: a run beside the last good run of its job.

Each kind of difference is checked on a pair of runs built by hand (exact
durations and statuses, see ``tests/compare_runs.py``); workflow runs are real
runs of the in-process pool. The baseline's look-up is checked for its plan.
"""

from __future__ import annotations

import json
import sys
import threading
import uuid
from datetime import timedelta
from typing import Any

import click
import pytest
from click.testing import CliRunner
from sqlalchemy import text, update

import flow_tracker
from flow_tracker import NotFoundError, UsageError, runtime, tracker
from flow_tracker.cli import main
from flow_tracker.cli.compare import report, safe
from flow_tracker.comparison import Change, compare_runs, payload_display
from flow_tracker.store import comparison as stored
from flow_tracker.store.engine import Store
from flow_tracker.store.schema import processes, workflow_steps
from tests.compare_runs import F, L, at, build

WAIT = 30.0
X = "\N{MULTIPLICATION SIGN}"


@pytest.fixture
def store(tracked: str) -> Store:
    """The configured store, its schema in place."""
    found = runtime.store()
    found.ensure_schema()
    return found


# -- the baseline ------------------------------------------------------------------------


def test_the_baseline_is_the_last_completed_run_of_the_same_name_that_started_before(
    store: Store,
) -> None:
    build(store, start=at(0))
    good = build(store, start=at(1))
    build(store, start=at(2), status="failed", error=("TimeoutError", "late"))
    build(store, "other_job", start=at(2.5))
    target = build(store, start=at(3), status="failed", error=("ValueError", "bad row"))
    build(store, start=at(4))  # later: never a baseline of the run before it
    found = flow_tracker.compare(target)
    assert found.found and found.baseline is not None
    assert found.baseline.id == good
    assert not found.baseline_chosen
    assert found.notes == []


def test_runs_started_in_the_same_instant_are_ordered_by_id(store: Store) -> None:
    first = build(store, start=at(1))
    second = build(store, start=at(1))
    found = flow_tracker.compare(second)
    assert found.baseline is not None and found.baseline.id == first
    assert flow_tracker.compare(first).baseline is None


def test_a_run_that_never_started_looks_for_runs_started_before_it_was_queued(
    store: Store,
) -> None:
    good = build(store, start=at(0))
    build(store, start=at(2))  # started after the queued run was queued
    queued = build(store, start=at(1), status="queued", duration_ms=None)
    with store.engine.begin() as conn:
        conn.execute(update(processes).where(processes.c.id == queued).values(started_at=None))
    found = flow_tracker.compare(queued)
    assert found.baseline is not None and found.baseline.id == good
    assert "this run is still queued" in found.notes[0]


def test_no_earlier_good_run_is_an_answer_not_an_error(store: Store) -> None:
    build(store, start=at(0), status="failed")
    target = build(store, start=at(1), status="failed", error=("ValueError", "x"))
    found = flow_tracker.compare(target)
    assert not found.found and found.baseline is None
    assert found.summary == "no earlier good run of nightly to compare with"
    data = found.to_dict()
    assert data["found"] is False and data["baseline"] is None
    assert data["flows"] == [] and data["metadata"] == [] and data["steps"] is None
    json.dumps(data)


def test_a_chosen_baseline_of_another_name_is_compared_and_the_notes_say_so(store: Store) -> None:
    other = build(store, "other_job", start=at(5), status="failed", flows_=[F("download")])
    target = build(store, start=at(1), flows_=[F("download")])
    found = flow_tracker.compare(target, other)
    assert found.baseline is not None and found.baseline.id == other and found.baseline_chosen
    assert found.notes == [
        "the baseline is a run of another name: other_job",
        "the baseline did not complete: it is failed",
        "the baseline started after this run",
    ]
    assert found.counts()["same"] == 1


def test_ids_that_are_no_uuid_or_the_run_itself_are_usage_errors(store: Store) -> None:
    target = build(store, start=at(1))
    for bad in ["", "nope", "x" * 10_000, "a\x00b", "\ud800", "<script>alert(1)</script>"]:
        with pytest.raises(UsageError, match="is not a process id"):
            flow_tracker.compare(bad)
        with pytest.raises(UsageError, match="is not a baseline process id"):
            flow_tracker.compare(target, bad)
    with pytest.raises(UsageError, match="compared with itself"):
        flow_tracker.compare(target, str(target))


def test_unknown_ids_are_not_found(store: Store) -> None:
    target = build(store, start=at(1))
    nobody = uuid.UUID("0192f000-0000-7000-8000-000000000000")
    with pytest.raises(NotFoundError, match="no process with id"):
        flow_tracker.compare(nobody)
    with pytest.raises(NotFoundError, match="to compare with"):
        flow_tracker.compare(target, nobody)


# -- flows ------------------------------------------------------------------------------


def test_flows_only_in_the_run_are_added_and_only_in_the_baseline_removed(store: Store) -> None:
    build(store, start=at(0), flows_=[F("download"), F("charge"), F("archive")])
    target = build(store, start=at(1), flows_=[F("download"), F("notify"), F("charge")])
    found = flow_tracker.compare(target)
    assert [(f.label, f.change) for f in found.flows] == [
        ("download", Change.SAME),
        ("notify", Change.ADDED),
        ("charge", Change.SAME),
        ("archive", Change.REMOVED),
    ]
    notify, archive = found.flows[1], found.flows[3]
    assert (notify.status, notify.baseline_status) == ("completed", None)
    assert (archive.duration_ms, archive.baseline_duration_ms) == (None, 10.0)
    assert found.summary == "1 new flow (notify), 1 flow missing (archive)"


def test_a_flow_missing_from_the_run_sits_where_it_was_in_the_baseline(store: Store) -> None:
    build(store, start=at(0), flows_=[F("a"), F("gone"), F("b"), F("c")])
    target = build(store, start=at(1), flows_=[F("new"), F("a"), F("b"), F("c")])
    found = flow_tracker.compare(target)
    assert [f.label for f in found.flows] == ["new", "a", "gone", "b", "c"]


def test_a_flow_repeated_in_a_loop_is_matched_by_order_at_every_level(store: Store) -> None:
    def batches(n: int, slow: int | None = None) -> list[F]:
        return [
            F("batch", children=[F("commit", ms=400.0 if i == slow else 100.0)]) for i in range(n)
        ]

    build(store, start=at(0), flows_=[F("download"), *batches(3)])
    target = build(store, start=at(1), flows_=[F("download"), *batches(2, slow=1)])
    found = flow_tracker.compare(target)
    rows = [(" / ".join(f.path), f.occurrence, f.depth, f.change) for f in found.flows]
    assert rows == [
        ("download", 1, 0, Change.SAME),
        ("batch", 1, 0, Change.SAME),
        ("batch / commit", 1, 1, Change.SAME),
        ("batch", 2, 0, Change.SAME),
        ("batch / commit", 1, 1, Change.SLOWER),
        ("batch", 3, 0, Change.REMOVED),
        ("batch / commit", 1, 1, Change.REMOVED),
    ]
    assert found.flows[3].label == "batch #2"
    # The missing batch is named, not each flow in it.
    assert found.summary == f"1 flow slower (batch #2 / commit 4.0{X}), 1 flow missing (batch #3)"
    assert found.counts()["removed"] == 2
    # JSON names each flow's parent by its index: a path is the chain of parents.
    every = found.to_dict(all_flows=True)["flows"]
    assert [(f["index"], f["parent"], f["name"]) for f in every[3:5]] == [
        (3, None, "batch"),
        (4, 3, "commit"),
    ]
    listed = found.to_dict()["flows"]  # the flows that differ and the flows above them
    assert [(f["index"], f["change"]) for f in listed] == [
        (3, "same"),
        (4, "slower"),
        (5, "removed"),
        (6, "removed"),
    ]


def test_a_flow_that_fails_now_is_failed_and_one_that_ended_otherwise_is_status(
    store: Store,
) -> None:
    build(store, start=at(0), flows_=[F("charge"), F("notify"), F("sync", status="failed")])
    target = build(
        store,
        start=at(1),
        status="failed",
        error=("CardDeclined", "card 4242 declined"),
        flows_=[
            F("charge", status="failed", error=("CardDeclined", "card 4242 declined")),
            F("notify", status="cancelled", ms=None),
            F("sync", status="completed"),
        ],
    )
    found = flow_tracker.compare(target)
    charge, notify, sync = found.flows
    assert charge.change == Change.FAILED and charge.error is not None
    assert charge.error.type == "CardDeclined"
    assert notify.change == Change.STATUS
    assert (notify.baseline_status, notify.status) == ("completed", "cancelled")
    assert sync.change == Change.STATUS  # failed before, completed now: no new failure
    assert found.summary == (
        "failed (CardDeclined), 1 flow failed (charge), "
        "2 flows ended otherwise (notify: completed → cancelled)"
    )
    assert found.to_dict()["run"]["error"] == {
        "type": "CardDeclined",
        "message": "card 4242 declined",
    }


def test_slower_and_faster_flows_carry_both_durations_and_the_ratio(store: Store) -> None:
    build(store, start=at(0), flows_=[F("charge", ms=100.0), F("render", ms=400.0)])
    target = build(store, start=at(1), flows_=[F("charge", ms=410.0), F("render", ms=100.0)])
    found = flow_tracker.compare(target)
    charge, render = found.flows
    assert (charge.change, charge.baseline_duration_ms, charge.duration_ms) == (
        Change.SLOWER,
        100.0,
        410.0,
    )
    assert charge.ratio == pytest.approx(4.1)
    assert (render.change, render.ratio) == (Change.FASTER, 0.25)
    assert found.summary == f"1 flow slower (charge 4.1{X}), 1 flow faster (render 0.25{X})"
    assert found.to_dict()["flows"][0]["ratio"] == pytest.approx(4.1)


def test_the_slowest_flow_is_the_one_named_among_several(store: Store) -> None:
    build(store, start=at(0), flows_=[F("a", ms=100.0), F("b", ms=100.0), F("c", ms=0.0)])
    target = build(store, start=at(1), flows_=[F("a", ms=200.0), F("b", ms=900.0), F("c")])
    found = flow_tracker.compare(target)
    assert found.summary.startswith("3 flows slower (c from 0 ms)")  # from nothing: unbounded
    build(store, start=at(2), flows_=[F("a", ms=100.0), F("b", ms=100.0)])
    target = build(store, start=at(3), flows_=[F("a", ms=200.0), F("b", ms=900.0)])
    assert flow_tracker.compare(target).summary.startswith(f"2 flows slower (b 9.0{X})")


@pytest.mark.parametrize(
    ("baseline_ms", "run_ms"),
    [(0.003, 0.004), (10.0, 14.0), (1.0, 5.5), (200.0, 290.0), (0.0, 4.9)],
)
def test_durations_within_the_noise_floor_are_the_same(
    store: Store, baseline_ms: float, run_ms: float
) -> None:
    build(store, start=at(0), flows_=[F("step", ms=baseline_ms)], duration_ms=baseline_ms)
    target = build(store, start=at(1), flows_=[F("step", ms=run_ms)], duration_ms=run_ms)
    found = flow_tracker.compare(target)
    assert found.flows[0].change == Change.SAME
    assert found.duration_change == Change.SAME
    assert found.summary == "no difference found"


def test_a_running_run_is_compared_as_far_as_it_got(store: Store) -> None:
    build(store, start=at(0), flows_=[F("download"), F("charge")])
    target = build(
        store,
        start=at(1),
        status="running",
        duration_ms=None,
        flows_=[F("download"), F("charge", status="running", ms=None)],
    )
    found = flow_tracker.compare(target)
    assert [f.change for f in found.flows] == [Change.SAME, Change.STATUS]
    assert "this run is still running" in found.notes[0]


def test_flows_nested_deeper_than_the_recursion_limit_are_matched(store: Store) -> None:
    def chain(depth: int, leaf_ms: float) -> list[F]:
        root = node = F("level", ms=leaf_ms)
        for _ in range(depth - 1):
            child = F("level", ms=leaf_ms)
            node.children.append(child)
            node = child
        return [root]

    depth = sys.getrecursionlimit() + 200
    build(store, start=at(0), flows_=chain(depth, 100.0))
    target = build(store, start=at(1), flows_=chain(depth, 400.0))
    found = flow_tracker.compare(target)
    assert len(found.flows) == depth
    assert {f.change for f in found.flows} == {Change.SLOWER}
    assert found.flows[-1].depth == depth - 1


def test_hostile_names_and_values_are_compared_and_kept_as_they_are(store: Store) -> None:
    long_name = "n" * 255  # the longest name a column holds
    script = "<script>alert('flow')</script>"
    meta_before = {script: "a", "plain": "<img src=x onerror=alert(1)>", "gone": 1}
    meta_now = {script: "b", "plain": "<img src=x onerror=alert(1)>", "new\u202e": [1, {"x": 2}]}
    build(store, long_name, start=at(0), flows_=[F(script), F("é\u202e")], metadata=meta_before)
    target = build(store, long_name, start=at(1), flows_=[F(script, ms=400.0)], metadata=meta_now)
    found = flow_tracker.compare(target)
    assert [f.name for f in found.flows] == [script, "é\u202e"]
    assert [(m.key, m.change) for m in found.metadata] == [
        (script, "changed"),
        ("new\u202e", "added"),
        ("gone", "removed"),
    ]
    assert found.flows[0].change == Change.SLOWER
    json.dumps(found.to_dict())


def test_names_of_ten_thousand_characters_nul_and_lone_surrogates_compare(tracked: str) -> None:
    name = "job\x00\ud800" + "n" * 10_000
    flow = "flow\x00\udfff" + "f" * 10_000
    with flow_tracker.track(name, metadata={"k\x00": "v\ud800", "same": 1}) as good:
        with good.flow(flow):
            good.info("line\x00\ud800")
    with flow_tracker.track(name, metadata={"k\x00": "w\ud800", "same": 1}) as now:
        with now.flow(flow):
            now.info("line\x00\ud800")
        with now.flow(flow):
            pass
    found = flow_tracker.compare(now.process_id)
    assert found.baseline is not None and found.baseline.id == good.process_id
    assert [f.change for f in found.flows] == [Change.SAME, Change.ADDED]
    assert [m.change for m in found.metadata] == ["changed"]
    assert found.log_difference is None
    assert len(found.summary) < 300  # names are cut in the summary, nowhere else
    json.dumps(found.to_dict())


# -- metadata, logs, attempts, queue -------------------------------------------------------


def test_metadata_keys_added_removed_and_changed_carry_both_values_redacted(
    tracked: str,
) -> None:
    flow_tracker.configure(database_url=tracked, log_to_stdlib=False, redact_keys=("tenant",))
    store = runtime.store()
    store.ensure_schema()
    build(
        store,
        start=at(0),
        metadata={"provider": "stripe", "region": "eu", "tenant": "acme", "rows": 10},
    )
    # Rows written by hand skip the write path's redaction: the display redacts anyway.
    target = build(
        store,
        start=at(1),
        metadata={
            "provider": "adyen",
            "rows": 10,
            "tenant": "globex",
            "dsn": "postgresql://app:hunter2@db/app",
            "note": "password=hunter2",
        },
    )
    found = flow_tracker.compare(target)
    assert [(m.key, m.change) for m in found.metadata] == [
        ("provider", "changed"),
        ("tenant", "changed"),
        ("dsn", "added"),
        ("note", "added"),
        ("region", "removed"),
    ]
    shown = {m["key"]: m for m in found.to_dict()["metadata"]}
    assert (shown["provider"]["baseline_value"], shown["provider"]["value"]) == ("stripe", "adyen")
    assert shown["tenant"]["value"] == shown["tenant"]["baseline_value"] == "[REDACTED]"
    assert shown["dsn"]["value"] == "[REDACTED]"
    assert "hunter2" not in json.dumps(shown)
    assert (shown["region"]["value"], shown["region"]["baseline_value"]) == (None, "eu")
    assert found.summary == (
        "metadata keys `provider`, `tenant` changed, metadata keys `dsn`, `note` added, "
        "metadata key `region` removed"
    )


def test_payload_values_pass_through_one_display_function(store: Store) -> None:
    build(store, start=at(0), metadata={"provider": "stripe"}, flows_=[F("charge")])
    target = build(
        store,
        start=at(1),
        status="failed",
        error=("CardDeclined", "card 4242 of alice"),
        metadata={"provider": "adyen"},
        flows_=[F("charge", status="failed", error=("CardDeclined", "card 4242 of alice"))],
        logs=[L("charging alice")],
    )

    def hidden(value: Any, key: str | None = None) -> Any:
        return "[hidden]"

    data = flow_tracker.compare(target).to_dict(hidden)
    assert data["metadata"][0]["value"] == data["metadata"][0]["baseline_value"] == "[hidden]"
    assert data["run"]["error"] == {"type": "CardDeclined", "message": "[hidden]"}
    assert data["flows"][0]["error"] == {"type": "CardDeclined", "message": "[hidden]"}
    # What stays visible without payloads: names, statuses, timings, log messages.
    assert data["metadata"][0]["key"] == "provider"
    assert data["first_log_difference"]["lines"][0]["message"] == "charging alice"
    assert "alice" not in json.dumps({k: v for k, v in data.items() if k != "first_log_difference"})
    assert payload_display()("x") == "x"


def test_the_first_different_log_line_comes_with_its_neighbours(store: Store) -> None:
    download = F("download")
    before = [L(f"line {i}") for i in range(3)] + [
        L("fetched", flow=download),
        L("stored"),
        L("done"),
        L("bye"),
    ]
    build(store, start=at(0), flows_=[download], logs=before)
    download = F("download")
    now = [L(f"line {i}") for i in range(3)] + [
        L("fetched", level="warning", flow=download),
        L("stored"),
        L("done"),
        L("bye"),
    ]
    target = build(store, start=at(1), flows_=[download], logs=now)
    found = flow_tracker.compare(target)
    difference = found.log_difference
    assert difference is not None and difference.index == 3
    assert [(x.index, x.level, x.message) for x in difference.lines] == [
        (1, "info", "line 1"),
        (2, "info", "line 2"),
        (3, "warning", "fetched"),
        (4, "info", "stored"),
        (5, "info", "done"),
    ]
    assert [x.level for x in difference.baseline_lines] == ["info"] * 5
    assert difference.lines[2].flow == "download"
    assert found.logs_compared == 3
    assert found.summary == "logs differ from line 4"


def test_numbers_and_ids_in_log_messages_do_not_count_as_a_difference(store: Store) -> None:
    build(
        store,
        start=at(0),
        logs=[
            L("imported 1,204 rows in 3.2 s"),
            L("job 0192f000-0000-7000-8000-000000000000 at 0xdeadbeef12"),
            L("sha 9f86d081884c7d65"),
        ],
    )
    target = build(
        store,
        start=at(1),
        logs=[
            L("imported 1,310 rows in 4.0 s"),
            L("job 01a24d69-fecc-7002-b05d-8d9e8248301b at 0xfeedface34"),
            L("sha 2c26b46b68ffc68f"),
        ],
    )
    found = flow_tracker.compare(target)
    assert found.log_difference is None and found.logs_compared == 3


def test_a_shorter_log_differs_where_it_ends(store: Store) -> None:
    build(store, start=at(0), logs=[L("a"), L("b"), L("c"), L("d")])
    target = build(store, start=at(1), status="failed", logs=[L("a"), L("b")])
    difference = flow_tracker.compare(target).log_difference
    assert difference is not None and difference.index == 2
    assert [x.message for x in difference.lines] == ["a", "b"]
    assert [x.message for x in difference.baseline_lines] == ["a", "b", "c", "d"]


def test_long_identical_logs_are_read_in_chunks_to_their_end(store: Store) -> None:
    lines = [L(f"row {i}") for i in range(3_000)]
    build(store, start=at(0), logs=lines)
    target = build(store, start=at(1), logs=[*lines, L("one more")])
    found = flow_tracker.compare(target)
    assert found.log_difference is not None and found.log_difference.index == 3_000
    assert found.logs_compared == 3_000


def test_attempts_the_queue_wait_and_the_latest_attempt_only_are_compared(
    store: Store,
) -> None:
    build(
        store,
        start=at(0),
        queued_at=at(-0.001),
        first_start=at(0),
        flows_=[F("download"), F("charge")],
        logs=[L("started")],
    )
    target = build(
        store,
        start=at(2),
        attempt=3,
        queued_at=at(1),
        first_start=at(1.5),
        flows_=[
            F("download", attempt=1),
            F("charge", attempt=1, status="failed"),
            F("download"),
            F("charge"),
        ],
        logs=[L("started")],
    )
    found = flow_tracker.compare(target)
    assert [f.change for f in found.flows] == [Change.SAME, Change.SAME]  # attempt 3 only
    assert found.run.attempt == 3 and found.baseline is not None and found.baseline.attempt == 1
    assert found.queue_wait_ms == pytest.approx(30 * 60 * 1000)
    assert found.baseline_queue_wait_ms == pytest.approx(3.6 * 1000)
    assert "3 attempts (baseline 1)" in found.summary
    assert "latest attempt is compared (attempt 3 against attempt 1)" in found.notes[0]
    data = found.to_dict()
    assert data["run"]["queue_wait_ms"] == pytest.approx(1_800_000)
    assert data["run"]["attempt"] == 3 and data["baseline"]["attempt"] == 1


def test_the_run_duration_is_compared_beyond_the_noise(store: Store) -> None:
    build(store, start=at(0), duration_ms=1_000.0)
    target = build(store, start=at(1), duration_ms=4_000.0)
    found = flow_tracker.compare(target)
    assert found.duration_change == Change.SLOWER
    assert found.summary == f"the run took 4.0{X} as long"
    assert found.to_dict()["duration"] == {
        "ms": 4_000.0,
        "baseline_ms": 1_000.0,
        "ratio": 4.0,
        "change": "slower",
    }


def test_the_attempt_position_shift_matches_the_tracker() -> None:
    assert stored.ATTEMPT_POSITION_SHIFT == tracker.ATTEMPT_POSITION_SHIFT


# -- real runs and workflows ------------------------------------------------------------------


def test_runs_recorded_by_the_tracker_compare_end_to_end(tracked: str) -> None:
    with flow_tracker.track("import", metadata={"provider": "stripe"}) as good:
        with good.flow("download"):
            good.info("fetched 10 rows")
    try:
        with flow_tracker.track("import", metadata={"provider": "adyen"}) as bad:
            with bad.flow("download"):
                bad.info("fetched 12 rows")
            with bad.flow("charge"):
                raise TimeoutError("the gateway did not answer")
    except TimeoutError:
        pass
    found = flow_tracker.compare(bad.process_id)
    assert found.baseline is not None and found.baseline.id == good.process_id
    # Real runs take what they take: their durations may differ beyond the noise.
    assert found.summary.startswith(
        "failed (TimeoutError), 1 new flow (charge, failed), metadata key `provider` changed"
    )


def _order_workflow(name: str, fail: threading.Event) -> Any:
    wf = flow_tracker.workflow(name)
    attempts: dict[str, int] = {}

    @wf.step()
    def validate(context: dict[str, Any]) -> dict[str, Any]:
        return {"total": 42, **({"coupon": "X"} if fail.is_set() else {})}

    @wf.step(depends_on=["validate"], retries=1, backoff=0.01, jitter=0)
    def reserve(context: Any, validate: Any) -> str:
        key = f"{context['n']}"
        attempts[key] = attempts.get(key, 0) + 1
        if fail.is_set() and attempts[key] == 1:
            raise ConnectionError("stock service restarting")
        return "reserved"

    @wf.step(depends_on=["validate"])
    def charge(context: Any, validate: Any) -> dict[str, Any]:
        if fail.is_set():
            raise ValueError("card declined")
        return {"paid": 42}

    return wf


def test_workflow_runs_compare_step_by_step(tracked: str) -> None:
    fail = threading.Event()
    wf = _order_workflow("compare_orders", fail)
    good = wf.run(context={"n": 1}).wait(WAIT)
    assert good.status == "completed"
    fail.set()
    bad = wf.run(context={"n": 2}).wait(WAIT)
    assert bad.status == "failed"
    # validate took 800 ms this time, 100 ms last time: written, not slept.
    store = runtime.store()
    for run_id, ms in ((good.id, 100), (bad.id, 800)):
        step = bad.steps["validate"] if run_id == bad.id else good.steps["validate"]
        assert step.started_at is not None
        with store.engine.begin() as conn:
            conn.execute(
                update(workflow_steps)
                .where(workflow_steps.c.run_id == run_id, workflow_steps.c.name == "validate")
                .values(finished_at=step.started_at + timedelta(milliseconds=ms))
            )
    found = flow_tracker.compare(bad.id)
    assert found.baseline is not None and found.baseline.id == good.id
    assert found.steps is not None
    steps = {s.name: s for s in found.steps}
    assert steps["charge"].newly_failed and steps["charge"].baseline_status == "completed"
    assert steps["reserve"].newly_retried and steps["reserve"].attempts == 2
    assert steps["validate"].change == Change.SLOWER
    assert steps["validate"].ratio == pytest.approx(8.0)
    data = {s["name"]: s for s in found.to_dict()["steps"]}
    assert data["validate"]["result_keys_added"] == ["coupon"]
    assert data["charge"]["result_keys"] is None and data["charge"]["baseline_result_keys"] == [
        "paid"
    ]
    assert data["charge"]["error"] == "ValueError: card declined"
    assert found.summary.startswith(
        "failed (flow_tracker.StepFailed), newly failed: charge, "
        f"newly retried: reserve (2 attempts), slowed down: validate 8.0{X}"
    )


def test_a_workflow_runs_baseline_is_a_workflow_run_not_a_process_of_its_name(
    tracked: str,
) -> None:
    fail = threading.Event()
    wf = _order_workflow("compare_baseline_kind", fail)
    good = wf.run(context={"n": 1}).wait(WAIT)
    with flow_tracker.track("compare_baseline_kind"):  # a plain process of the same name
        pass
    fail.set()
    bad = wf.run(context={"n": 2}).wait(WAIT)
    found = flow_tracker.compare(bad.id)
    assert found.baseline is not None and found.baseline.id == good.id


# -- the baseline's index --------------------------------------------------------------------


def _fill(store: Store, names: int, runs: int) -> None:
    """``names * runs`` processes; the last 90 % of each name's runs failed."""
    with store.engine.begin() as conn:
        if store.dialect == "postgresql":
            conn.execute(
                text(
                    "INSERT INTO flow_tracker_processes (id, name, category, status, created_at,"
                    " started_at, attempt, progress_current, progress_total, lost_count,"
                    " dropped_logs) SELECT gen_random_uuid(), 'job' || (g % :names),"
                    " 'jobs', CASE WHEN g < :total / 10 THEN 'completed' ELSE 'failed'"
                    " END, now() - interval '1 second' * (:total - g),"
                    " now() - interval '1 second' * (:total - g), 1, 0, 0, 0, 0"
                    " FROM generate_series(0, :total - 1) g"
                ),
                # As text, cast by the server: the driver would send small numbers as smallint.
                {"names": str(names), "total": str(names * runs)},
            )
            conn.execute(text("ANALYZE flow_tracker_processes"))
        else:
            conn.execute(
                text(
                    "WITH RECURSIVE g(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM g"
                    " WHERE n + 1 < :total) INSERT INTO flow_tracker_processes (id, name,"
                    " category, status, created_at, started_at, attempt, progress_current,"
                    " progress_total, lost_count, dropped_logs) SELECT lower(hex(randomblob(16))),"
                    " 'job' || (n % :names), 'jobs', CASE WHEN n < :total / 10"
                    " THEN 'completed' ELSE 'failed' END, datetime('now', '-' || (:total - n)"
                    " || ' seconds'), datetime('now', '-' || (:total - n) || ' seconds'),"
                    " 1, 0, 0, 0, 0 FROM g"
                ),
                {"names": names, "total": names * runs},
            )
            conn.execute(text("ANALYZE"))


def _plan(store: Store, run: flow_tracker.ProcessRecord) -> str:
    """The database's plan of the baseline's query, as text."""
    statement = stored.baseline_query(run)
    with store.engine.connect() as conn:
        sql = str(statement.compile(conn, compile_kwargs={"literal_binds": True}))
        if store.dialect == "postgresql":
            plan = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {sql}").scalar_one()
            return json.dumps(plan)
        rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}").all()
        return "\n".join(str(row[-1]) for row in rows)


def test_the_baseline_is_found_by_the_partial_index_not_a_scan(store: Store) -> None:
    _fill(store, names=20, runs=2_000)  # 40,000 processes, 36,000 of them failed
    target = build(store, "job7", start=at(30), status="failed")
    run = stored.read_run(store, target)
    assert run is not None
    plan = _plan(store, run)
    assert "ix_flow_tracker_processes_completed_name_started" in plan, plan
    if store.dialect == "postgresql":
        assert "Seq Scan" not in plan and '"Node Type": "Sort"' not in plan, plan
    else:
        assert "SCAN" not in plan.replace("SEARCH", "") and "TEMP B-TREE" not in plan, plan
    found = flow_tracker.compare(target)
    assert found.baseline is not None and found.baseline.name == "job7"
    assert found.baseline.status == flow_tracker.Status.COMPLETED


# -- the command line ------------------------------------------------------------------------


def test_the_cli_prints_the_summary_the_differences_and_one_json_document(tracked: str) -> None:
    store = runtime.store()
    store.ensure_schema()
    good = build(store, start=at(0), flows_=[F("charge", ms=100.0)], metadata={"p": "stripe"})
    target = build(
        store,
        start=at(1),
        status="failed",
        error=("ValueError", "bad row"),
        flows_=[F("charge", ms=410.0), F("notify")],
        metadata={"p": "adyen"},
        logs=[L("boom", level="error")],
    )
    runner = CliRunner(env={"FLOW_TRACKER_DATABASE_URL": tracked})
    result = runner.invoke(main, ["compare", str(target)])
    assert result.exit_code == 0, result.output
    assert f"against the last good run: {good}" in result.output
    assert (
        f"failed (ValueError), 1 flow slower (charge 4.1{X}), 1 new flow (notify)" in result.output
    )
    assert '~ p                        "stripe" → "adyen"' in result.output
    assert "first different log line: line 1" in result.output
    assert "\x1b[" not in result.output  # not a terminal: no colours
    chosen = runner.invoke(main, ["compare", str(target), str(good), "--json"])
    assert chosen.exit_code == 0, chosen.output
    data = json.loads(chosen.output)
    assert data["baseline"]["id"] == str(good) and data["baseline_chosen"] is True
    assert data["flow_counts"]["slower"] == 1
    alone = runner.invoke(main, ["compare", str(good), "--json"])
    assert json.loads(alone.output)["found"] is False
    text_alone = runner.invoke(main, ["compare", str(good)])
    assert "no earlier good run of nightly to compare with" in text_alone.output


def test_the_cli_colours_in_a_terminal_and_escapes_control_characters(store: Store) -> None:
    build(store, "job\x1b[2J", start=at(0), flows_=[F("charge\x07", ms=100.0)])
    target = build(store, "job\x1b[2J", start=at(1), flows_=[F("charge\x07", ms=400.0)])
    lines = report(compare_runs(store, target), click.style)
    text_out = "\n".join(lines)
    assert "\x1b[33m" in text_out  # yellow: slower
    assert "job\\x1b[2J" in text_out and "charge\\x07" in text_out
    assert "\x1b[2J" not in text_out and "\x07" not in text_out
    assert safe("a\ud800b") == "a\\ud800b"


def test_the_cli_refuses_bad_ids_with_one_clear_line(tracked: str) -> None:
    runner = CliRunner(env={"FLOW_TRACKER_DATABASE_URL": tracked})
    store = runtime.store()
    store.ensure_schema()
    target = build(store, start=at(1))
    for args, message in [
        (["compare", "no-such-job"], "no process with id or job id 'no-such-job'"),
        (["compare", "a\x00b"], "is not a process id or job id"),
        (["compare", str(target), str(target)], "compared with itself"),
        (["compare", str(target), "x" * 300], "is not a baseline process id or job id"),
    ]:
        result = runner.invoke(main, args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output, result.output
        assert "Traceback" not in result.output
