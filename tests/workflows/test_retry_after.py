"""A step asks for its next attempt's delay: ``RetryAfter`` and ``retry_after(response)``."""

from __future__ import annotations

import math
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

import flow_tracker
from flow_tracker import RetryAfter, UsageError, retry_after
from flow_tracker.subscribers import BUS

WAIT = 30.0  # generous; a run whose step waited its policy's backoff (300 s) would not end


class Response:
    """A response as requests makes one, as far as ``retry_after`` reads it."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


def _http_date(moment: datetime) -> str:
    return format_datetime(moment.astimezone(timezone.utc), usegmt=True)


# -- reading the header -------------------------------------------------------------------


def test_delta_seconds_of_an_httpx_response_are_read_whatever_the_header_case() -> None:
    assert retry_after(httpx.Response(429, headers={"retry-after": "120"})) == 120.0
    assert retry_after(httpx.Response(503, headers={"Retry-After": " 0 "})) == 0.0
    assert retry_after(Response({"retry-after": "7"})) == 7.0  # a plain dict, lower case


def test_an_http_date_is_the_seconds_until_then_and_zero_once_it_passed() -> None:
    ahead = _http_date(datetime.now(timezone.utc) + timedelta(hours=1))
    seconds = retry_after(Response({"Retry-After": ahead}))
    assert seconds is not None and 3000 < seconds <= 3600
    past = _http_date(datetime.now(timezone.utc) - timedelta(days=1))
    assert retry_after(Response({"Retry-After": past})) == 0.0


@pytest.mark.parametrize(
    "header", ["soon", "-5", "1.5", "", "12 s", "Thu, 99 Foo 2026 25:61:00 GMT", "9" * 5000]
)
def test_an_unreadable_header_gives_the_default(header: str) -> None:
    assert retry_after(Response({"Retry-After": header})) is None
    assert retry_after(Response({"Retry-After": header}), default=30) == 30.0


def test_a_missing_header_gives_the_default() -> None:
    assert retry_after(httpx.Response(429)) is None
    assert retry_after(httpx.Response(429), default=5.5) == 5.5


@pytest.mark.parametrize("default", [math.nan, -1.0, math.inf, "5", True])
def test_a_bad_default_is_a_usage_error(default: Any) -> None:
    with pytest.raises(UsageError, match="retry_after's default"):
        retry_after(Response({}), default=default)


def test_something_without_headers_is_a_usage_error_naming_it() -> None:
    with pytest.raises(UsageError, match=r"with \.headers\), not str"):
        retry_after("429 Too Many Requests")


@pytest.mark.parametrize("seconds", [math.nan, math.inf, -0.5, "10", True, [1]])
def test_retry_after_of_no_finite_number_of_seconds_is_a_usage_error(seconds: Any) -> None:
    with pytest.raises(UsageError, match="RetryAfter"):
        RetryAfter(seconds)


def test_retry_after_says_its_delay_or_that_the_backoff_decides() -> None:
    assert str(RetryAfter(2.5)) == "retry after 2.5 s"
    assert RetryAfter().seconds is None and "backoff decides" in str(RetryAfter())
    assert str(RetryAfter(1, reason="rate limited by the gateway")) == "rate limited by the gateway"


# -- in a step ----------------------------------------------------------------------------


def _retries(seen: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + WAIT
    while sum(e["event"] == "step.retrying" for e in list(seen)) < count:
        assert time.monotonic() < deadline, "the retries were never announced"
        BUS.drain(0.1)
    return [e for e in seen if e["event"] == "step.retrying"]


def test_the_asked_delay_replaces_the_policys_backoff(tracked: str) -> None:
    seen: list[dict[str, Any]] = []
    flow_tracker.on("step.retrying", seen.append)
    wf = flow_tracker.workflow("retry_after_asked")
    attempts: list[int] = []

    @wf.step(retries=1, backoff=300.0, jitter=0)
    def call_api(context: Any) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise RetryAfter(0.05)
        return "ok"

    status = wf.run().wait(WAIT)
    assert status.status == "completed" and status.steps["call_api"].attempts == 2
    (retry,) = _retries(seen, 1)
    assert retry["delay_s"] == 0.05
    assert retry["error"] == {"class": "flow_tracker.RetryAfter", "message": "retry after 0.05 s"}


def test_the_asked_delay_and_the_header_are_bounded_by_backoff_max(tracked: str) -> None:
    seen: list[dict[str, Any]] = []
    flow_tracker.on("step.retrying", seen.append)
    read: list[float | None] = []
    wf = flow_tracker.workflow("retry_after_bounded")

    @wf.step(retries=2, backoff=300.0, backoff_max=0.05, jitter=0)
    def call_api(context: Any) -> str:
        read.append(retry_after(Response({"Retry-After": "3600"})))
        if len(read) == 1:
            raise RetryAfter(read[-1])
        if len(read) == 2:
            raise RetryAfter(10**9)  # a year and more: bounded all the same
        return "ok"

    assert wf.run().wait(WAIT).status == "completed"
    assert read == [0.05, 0.05, 0.05]
    assert [r["delay_s"] for r in _retries(seen, 2)] == [0.05, 0.05]
    assert retry_after(Response({"Retry-After": "3600"})) == 3600.0  # outside a step: as sent


def test_retry_after_needs_retries_left_and_then_fails_the_step_saying_so(tracked: str) -> None:
    wf = flow_tracker.workflow("retry_after_none_left")

    @wf.step(retries=1, backoff=0.01, jitter=0)
    def call_api(context: Any) -> str:
        raise RetryAfter(0.01, reason="429 from the gateway")

    status = wf.run().wait(WAIT)
    step = status.steps["call_api"]
    assert status.status == "failed" and step.attempts == 2
    assert step.error is not None
    assert step.error.startswith("flow_tracker.RetryAfter")
    assert "429 from the gateway, but no retries are left (retries=1)" in step.error


def test_retry_after_is_a_retry_whatever_retry_on_names(tracked: str) -> None:
    wf = flow_tracker.workflow("retry_after_retry_on")
    attempts: list[int] = []

    @wf.step(retries=1, backoff=300.0, retry_on=(TimeoutError,))
    def call_api(context: Any) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise RetryAfter(0)
        return "ok"

    assert wf.run().wait(WAIT).status == "completed"


def test_retry_after_without_a_delay_waits_the_policys_backoff(tracked: str) -> None:
    seen: list[dict[str, Any]] = []
    flow_tracker.on("step.retrying", seen.append)
    wf = flow_tracker.workflow("retry_after_policy")
    attempts: list[int] = []

    @wf.step(retries=1, backoff=0.02, jitter=0)
    def call_api(context: Any) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise RetryAfter(retry_after(httpx.Response(503)))  # no header
        return "ok"

    assert wf.run().wait(WAIT).status == "completed"
    assert [r["delay_s"] for r in _retries(seen, 1)] == [0.02]
