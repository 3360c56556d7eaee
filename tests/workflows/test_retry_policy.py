"""A step's RetryPolicy decides its retries; the database's clock times them."""

from __future__ import annotations

import dataclasses
import random
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

import flow_tracker
from flow_tracker import RetryAfter, RetryPolicy, StepTimeout, UsageError
from flow_tracker.store import step_writes
from flow_tracker.store import workflows as stored
from flow_tracker.store.clock import database_now
from flow_tracker.store.engine import Store
from flow_tracker.store.workflows import Dispatch
from flow_tracker.workflows import engine
from tests.workflows.helpers import Calls, waited_for

WAIT = 60.0  # generous: a busy machine; these runs end in a second when idle
# A worker whose clock is an hour behind the database's: far past any slack below.
SKEW = timedelta(hours=1)
# What a stored time may differ from the database's by: SQLite keeps milliseconds,
# and the statement runs between the two reads of the clock.
SLACK = timedelta(seconds=1)


class Gateway(Exception):
    """A failure worth a retry."""


class GatewayTimeout(Gateway):
    """A subclass of it: retried too."""


# -- deciding ---------------------------------------------------------------------------------


def test_the_delay_follows_the_backoff_formula_up_to_its_cap() -> None:
    policy = RetryPolicy(retries=5, backoff=1.0, backoff_factor=2.0, backoff_max=5.0, jitter=0)
    assert [policy.decide(Gateway(), n) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_no_retry_is_left_after_the_last_one() -> None:
    policy = RetryPolicy(retries=2, jitter=0)
    assert policy.decide(Gateway(), 2) == 2.0
    assert policy.decide(Gateway(), 3) is None
    assert RetryPolicy().decide(Gateway(), 1) is None  # the default: no retry at all
    assert (RetryPolicy().max_attempts, policy.max_attempts) == (1, 3)


def test_only_the_exceptions_of_retry_on_and_their_subclasses_retry() -> None:
    policy = RetryPolicy(retries=3, retry_on=(Gateway,), jitter=0)
    assert policy.decide(GatewayTimeout(), 1) == 1.0
    assert policy.decide(KeyError("cart"), 1) is None
    timeouts = RetryPolicy(retries=1, retry_on=(TimeoutError,), jitter=0)
    assert timeouts.decide(StepTimeout(5.0), 1) == 1.0  # a step's timeout is a TimeoutError


def test_a_step_that_asks_for_its_delay_gets_it_up_to_backoff_max_whatever_retry_on_says() -> None:
    policy = RetryPolicy(retries=1, backoff=30.0, backoff_max=60.0, retry_on=(KeyError,))
    assert policy.decide(RetryAfter(0.5), 1) == 0.5  # kept as said: no jitter
    assert policy.decide(RetryAfter(3600), 1) == 60.0
    backoff = policy.decide(RetryAfter(), 1)  # no delay said: the backoff decides
    assert backoff is not None and 27.0 <= backoff <= 33.0
    assert policy.decide(RetryAfter(0.5), 2) is None  # but it needs a retry left


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), SystemExit(1)])
def test_a_stopping_worker_is_never_a_retry(stop: BaseException) -> None:
    assert RetryPolicy(retries=3, retry_on=(BaseException,)).decide(stop, 1) is None


def test_jitter_spreads_the_delay_within_its_fraction() -> None:
    policy = RetryPolicy(retries=1, backoff=10.0, jitter=0.1)
    rng = random.Random(7)
    delays = [policy.decide(Gateway(), 1, rng=rng) for _ in range(200)]
    assert all(d is not None and 9.0 <= d <= 11.0 for d in delays)
    assert len(set(delays)) > 100  # spread, not constant


def test_a_factor_that_overflows_waits_backoff_max() -> None:
    policy = RetryPolicy(retries=1000, backoff_factor=10.0, backoff_max=600.0, jitter=0)
    assert policy.decide(Gateway(), 500) == 600.0


@pytest.mark.parametrize("attempt", [0, -1, 1.5, True, "1"])
def test_an_attempt_is_counted_from_one(attempt: Any) -> None:
    with pytest.raises(UsageError, match="attempt is an integer >= 1"):
        RetryPolicy(retries=1).decide(Gateway(), attempt)


# -- declaring --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"retries": -1}, "retries must be an integer >= 0"),
        ({"retries": 2.0}, "retries must be an integer >= 0"),
        ({"retries": True}, "retries must be an integer >= 0"),
        ({"backoff": -0.5}, "backoff must be a number >= 0"),
        ({"backoff": "1"}, "backoff must be a number >= 0"),
        ({"backoff_factor": 0.5}, "backoff_factor must be a number >= 1"),
        ({"backoff_max": float("inf")}, "backoff_max must be finite"),
        ({"backoff_max": 1e300}, r"backoff_max is at most 3\.1536e\+07 s \(a year\)"),
        ({"backoff": 400 * 86400}, "backoff is at most"),
        ({"backoff_max": float("nan")}, "backoff_max must be a number"),
        ({"jitter": 1.5}, "jitter is a fraction between 0 and 1"),
        ({"retry_on": (KeyError, "ValueError")}, "retry_on takes exception classes"),
        ({"retry_on": int}, "retry_on takes exception classes"),
    ],
)
def test_a_bad_knob_is_refused_where_the_policy_is_made(
    knobs: dict[str, Any], message: str
) -> None:
    with pytest.raises(UsageError, match=f"^RetryPolicy: {message}"):
        RetryPolicy(**knobs)
    with pytest.raises(ValueError, match=message):  # a UsageError is a ValueError
        RetryPolicy(**knobs)


def test_a_policy_is_frozen_and_keeps_its_exceptions_as_a_tuple() -> None:
    policy = RetryPolicy(retries=1, backoff=2, retry_on=[KeyError])  # type: ignore[arg-type]
    assert policy.retry_on == (KeyError,) and policy.backoff == 2.0
    assert RetryPolicy(retry_on=KeyError).retry_on == (KeyError,)  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.retries = 9  # type: ignore[misc]


def test_a_step_takes_a_policy_and_stores_what_the_keywords_stored() -> None:
    policy = RetryPolicy(retries=2, backoff=0.5, jitter=0, retry_on=(Gateway, TimeoutError))
    wf = flow_tracker.workflow("retry_policy_declared")
    wf.step(name="keywords", retries=2, backoff=0.5, jitter=0, retry_on=(Gateway, TimeoutError))(
        lambda context: 1
    )
    wf.step(name="policy", retry=policy)(lambda context: 2)
    by_keywords, by_policy = wf.steps["keywords"], wf.steps["policy"]
    assert by_keywords.retry == by_policy.retry and by_policy.retry is policy
    assert by_keywords.retries == 2 and by_keywords.retry_on == (Gateway, TimeoutError)
    first, second = wf.snapshot()["steps"]
    assert {**first, "name": "x"} == {**second, "name": "x"}
    assert second["retry_on"] == [f"{__name__}.Gateway", "TimeoutError"]
    assert second["retries"] == 2 and second["backoff"] == 0.5
    wf.step(name="none")(lambda context: 3)
    assert wf.steps["none"].retry == RetryPolicy()  # no keyword: the policy's defaults


def test_a_policy_and_its_keywords_together_are_refused() -> None:
    wf = flow_tracker.workflow("retry_policy_both")
    with pytest.raises(
        UsageError, match=r"step 'a': pass retry=RetryPolicy\(...\) or the keywords backoff"
    ):
        wf.step(name="a", retry=RetryPolicy(retries=1), backoff=2.0)(lambda context: 1)
    with pytest.raises(UsageError, match="retry takes a RetryPolicy"):
        wf.step(name="b", retry=3)(lambda context: 1)  # type: ignore[call-overload]
    with pytest.raises(UsageError, match="step 'c': backoff_factor must be a number >= 1"):
        wf.step(name="c", backoff_factor=0.1)(lambda context: 1)
    assert wf.steps == {}


# -- running ----------------------------------------------------------------------------------


def test_a_step_declared_with_a_policy_retries_on_the_pool(tracked: str) -> None:
    calls = Calls()
    wf = flow_tracker.workflow("retry_policy_runs")

    @wf.step(retry=RetryPolicy(retries=2, backoff=0.01, jitter=0, retry_on=(Gateway,)))
    def charge(context: Any) -> str:
        if calls.hit("charge") <= 2:
            raise GatewayTimeout("the gateway timed out")
        return "paid"

    @wf.step(retry=RetryPolicy(retries=5, backoff=0.01, retry_on=(Gateway,)))
    def reserve(context: Any) -> None:
        calls.hit("reserve")
        raise KeyError("no such cart")

    status = waited_for(wf.run(), WAIT)
    assert status.steps["charge"].status == "completed"
    assert status.steps["charge"].attempts == 3 and status.steps["charge"].result == "paid"
    assert status.steps["reserve"].status == "failed" and calls.counts["reserve"] == 1
    assert status.status == "failed"


def _worker_clock_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's worker reads a clock an hour behind the database's."""

    class Behind(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return datetime.now(tz) - SKEW

    monkeypatch.setattr(engine, "datetime", Behind)


def _db_now(url: str) -> datetime:
    store = Store(url)
    try:
        with store.engine.connect() as conn:
            return database_now(conn)
    finally:
        store.dispose()


def test_the_next_attempt_is_timed_by_the_databases_clock_not_the_workers(
    tracked: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    wf = flow_tracker.workflow("retry_policy_clock")

    @wf.step(retry=RetryPolicy(retries=1, backoff=600.0, backoff_max=600.0, jitter=0))
    def flaky(context: Any) -> None:
        raise Gateway("down")

    sent: list[Dispatch] = []
    real = engine.sender_for("threads")
    assert real is not None
    engine.register_sender("threads", sent.append)  # the test plays the queue
    try:
        run = wf.run()
        (first,) = sent
        _worker_clock_behind(monkeypatch)
        before = _db_now(tracked)
        engine.execute_step("threads", *first.args())
        after = _db_now(tracked)
    finally:
        engine.register_sender("threads", real)
        monkeypatch.undo()
    retry = sent[1]
    assert (retry.step, retry.delay) == ("flaky", 600.0)
    step = flow_tracker.get_workflow(run.id).steps["flaky"]
    assert step.status == "retrying" and step.next_attempt_at is not None
    delay = timedelta(seconds=600)
    assert before + delay - SLACK <= step.next_attempt_at <= after + delay + SLACK
    flow_tracker.cancel_workflow(run.id)


def test_a_retrying_end_is_timed_by_the_database_and_found_again_after_a_lost_reply(
    tracked: str,
) -> None:
    wf = flow_tracker.workflow("retry_policy_lost_reply")
    wf.step(name="a")(lambda context: 1)
    sent: list[Dispatch] = []
    real = engine.sender_for("threads")
    assert real is not None
    engine.register_sender("threads", sent.append)
    try:
        run = wf.run().id
    finally:
        engine.register_sender("threads", real)
    store = Store(tracked)
    me = {"host": "worker-1", "pid": 101, "job_system": "threads"}
    try:
        behind = datetime.now(timezone.utc) - SKEW  # this worker's clock
        assert step_writes.claim(store, run, "a", me, behind) is not None
        ended_at = behind + timedelta(seconds=1)
        before = _db_now(tracked)
        error = ("Gateway", "down")
        ended = step_writes.end(
            store, run, "a", 1, "retrying", now=ended_at, error=error, retry_in=30.0
        )
        after = _db_now(tracked)
        assert ended.stored and ended.run_status == "running"
        # The reply was lost: the try again finds nothing to change, and reads back its own.
        again = ended_at + timedelta(milliseconds=5)
        assert not step_writes.end(
            store, run, "a", 1, "retrying", now=again, error=error, retry_in=30.0
        ).stored
        found = step_writes.end_found(
            store, run, "a", 1, [(ended_at, "retrying"), (again, "retrying")]
        )
        assert found.stored and found.stored_at == ended_at and found.queue == "threads"
        step = flow_tracker.get_workflow(run).steps["a"]
        assert step.status == "retrying" and step.next_attempt_at is not None
        delay = timedelta(seconds=30)
        assert before + delay - SLACK <= step.next_attempt_at <= after + delay + SLACK
        # The reaper compares it with the same clock: not overdue (its worker's time,
        # an hour behind, would have been, and the step sent again at once).
        assert stored.overdue_retries(store, 0.0) == []
        # A moment never tried is not this worker's end.
        never = ended_at - timedelta(seconds=5)
        assert not step_writes.end_found(store, run, "a", 1, [(never, "retrying")]).stored
    finally:
        store.dispose()
