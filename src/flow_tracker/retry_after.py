"""A workflow step asks for its next attempt's delay: :class:`RetryAfter` and :func:`retry_after`.

::

    @orders.step(retries=5, backoff_max=600)
    def charge(context, validate):
        response = httpx.post(GATEWAY, json=...)
        if response.status_code in (429, 503):
            raise flow_tracker.RetryAfter(flow_tracker.retry_after(response))
        ...

A ``RetryAfter`` is a retry of the step's own policy: it needs retries left
(``retries=``), whatever ``retry_on`` says (the step asked for it by name), and
its delay is bounded by the step's ``backoff_max`` (a server's date a year
ahead must not park a run for a year). The delay goes through the queue's own
delayed delivery, as every retry does. Without a delay (``RetryAfter()``, or
``retry_after`` of a response without a usable header) the step's backoff
decides, as for any other exception.
"""

from __future__ import annotations

import contextvars
import logging
import math
import re
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

from flow_tracker.errors import FlowTrackerError, UsageError

_log = logging.getLogger("flow_tracker.workflows")

# The backoff_max of the workflow step running in this context (None outside a step).
STEP_BACKOFF_MAX: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "flow_tracker_step_backoff_max", default=None
)
_DELTA_SECONDS = re.compile(r"[0-9]+")  # RFC 9110: delay-seconds = 1*DIGIT


def _seconds(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{what} is a number of seconds, not {value!r}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise UsageError(f"{what} is a finite number of seconds >= 0, not {value!r}")
    return seconds


class RetryAfter(FlowTrackerError):
    """Raised by a workflow step: end this attempt and run the next one after ``seconds``.

    Args:
        seconds: the delay before the next attempt (a finite number >= 0),
            bounded by the step's ``backoff_max``; None: the step's own backoff.
        reason: what the attempt's error says (default: "retry after N s").

    Raises:
        UsageError: ``seconds`` is not a finite number >= 0 (NaN, negative, a string).
    """

    def __init__(self, seconds: float | None = None, reason: str | None = None) -> None:
        self.seconds = None if seconds is None else _seconds(seconds, "RetryAfter")
        if reason is None:
            reason = (
                "retry asked for (the step's backoff decides when)"
                if self.seconds is None
                else f"retry after {self.seconds:g} s"
            )
        self.reason = reason
        super().__init__(reason)


def retry_after(response: Any, default: float | None = None) -> float | None:
    """The seconds a response's ``Retry-After`` header asks to wait.

    Reads delta-seconds (``"120"``) or an HTTP date (``"Wed, 21 Oct 2026 07:28:00
    GMT"``: the seconds from now until then, 0 if it has passed). Inside a
    workflow step the answer is at most the step's ``backoff_max``.

    Args:
        response: an httpx or requests response, or anything with ``.headers``
            (a mapping; httpx's and requests' are case-insensitive).
        default: what to return when the header is missing or unreadable
            (negative, a word, a malformed date); None by default, which
            ``RetryAfter`` reads as "the step's own backoff".

    Raises:
        UsageError: ``response`` has no ``headers``, or ``default`` is not a
            finite number >= 0 or None.
    """
    if default is not None:
        default = _seconds(default, "retry_after's default")
    headers = getattr(response, "headers", None)
    if headers is None or not hasattr(headers, "get"):
        raise UsageError(
            f"retry_after() takes an httpx or requests response (with .headers), "
            f"not {type(response).__name__}"
        )
    raw = headers.get("Retry-After")
    if raw is None:
        raw = headers.get("retry-after")  # a plain dict is case-sensitive
    seconds = _parse(raw)
    if seconds is None:
        if raw is not None:
            _log.info("Retry-After %r is neither seconds nor an HTTP date: ignored", str(raw)[:80])
        return default
    bound = STEP_BACKOFF_MAX.get()
    return seconds if bound is None else min(seconds, bound)


def _parse(raw: object) -> float | None:
    if isinstance(raw, bytes):
        raw = raw.decode("latin-1")
    if not isinstance(raw, str):
        return None
    text = raw.strip()
    if _DELTA_SECONDS.fullmatch(text):
        # Past ten digits (three centuries) it is no delay anyone means.
        return float(text) if len(text) <= 10 else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # "-0000" in an HTTP date: UTC all the same
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
