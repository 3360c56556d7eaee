"""A step's retry rule, and the one place that decides whether and when it runs again.

::

    charge_policy = flow_tracker.RetryPolicy(retries=5, backoff=2.0, retry_on=(TimeoutError,))

    @orders.step(depends_on=["validate"], retry=charge_policy)
    def charge(context, validate): ...

``@wf.step(retries=..., backoff=..., ...)`` builds the same policy from its
keywords. The engine asks :meth:`RetryPolicy.decide` after every failed
attempt; the database stores the next attempt's time from its own clock (the
worker only says how many seconds to wait).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flow_tracker.errors import UsageError
from flow_tracker.retry_after import RetryAfter

# The knobs as they appear in a step's snapshot (stored with each run and definition).
LONGEST_WAIT = 365 * 24 * 3600.0
KNOBS = ("retries", "backoff", "backoff_factor", "backoff_max", "jitter", "retry_on")


@dataclass(frozen=True)
class RetryPolicy:
    """How a workflow step retries: how often, after how long, for which exceptions.

    The delay before retry ``n`` (1 for the first) is
    ``min(backoff_max, backoff * backoff_factor ** (n - 1))``, spread by
    ±``jitter`` (a fraction of it). A step that raises
    :class:`~flow_tracker.RetryAfter` asks for its own delay: it needs retries
    left but not ``retry_on``, and waits at most ``backoff_max``, without jitter.

    Args:
        retries: retries after the first attempt (an integer >= 0).
        backoff: seconds before the first retry (>= 0).
        backoff_factor: each further retry waits this many times longer (>= 1).
        backoff_max: no retry waits longer than this (>= 0), an asked one neither.
        jitter: the delay is spread by ± this fraction of it (0 to 1).
        retry_on: the exception classes worth a retry (a class or a tuple of
            them); any other fails the step at once.

    Raises:
        UsageError: a knob out of its range, not finite, or of the wrong type.
    """

    retries: int = 0
    backoff: float = 1.0
    backoff_factor: float = 2.0
    backoff_max: float = 300.0
    jitter: float = 0.1
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        checked = _checked("RetryPolicy", {knob: getattr(self, knob) for knob in KNOBS})
        for knob, value in checked.items():
            object.__setattr__(self, knob, value)  # frozen: normalised once, here

    @property
    def max_attempts(self) -> int:
        """Attempts in all: the first one and its retries."""
        return self.retries + 1

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first), by the backoff.

        ``min(backoff_max, backoff * backoff_factor ** (retry - 1))``, spread by
        ±``jitter`` (a fraction of it), never negative.
        """
        try:
            grown = self.backoff * self.backoff_factor ** max(0, retry - 1)
        except OverflowError:  # a factor of 10 at retry 400: past any cap
            grown = math.inf
        base = min(self.backoff_max, grown)
        spread = (rng or random).uniform(-self.jitter, self.jitter) if self.jitter else 0.0
        return max(0.0, base * (1.0 + spread))

    def decide(
        self, exc: BaseException, attempt: int, *, rng: random.Random | None = None
    ) -> float | None:
        """The seconds before the next attempt, after attempt ``attempt`` failed with ``exc``.

        None: no more attempts (the step fails). Attempts count from 1.
        ``KeyboardInterrupt`` and ``SystemExit`` stop the worker, not the step:
        never a retry.

        Args:
            exc: what the attempt raised.
            attempt: the number of the attempt that failed (an integer >= 1).
            rng: the random source of the jitter (default: the ``random`` module).

        Raises:
            UsageError: ``attempt`` is not an integer >= 1.
        """
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise UsageError(f"RetryPolicy.decide: attempt is an integer >= 1, not {attempt!r}")
        if attempt > self.retries or isinstance(exc, (KeyboardInterrupt, SystemExit)):
            return None
        if isinstance(exc, RetryAfter):
            # The step asked for a retry by name: retry_on does not apply, and a
            # server's delay is kept as said (no jitter), up to backoff_max.
            if exc.seconds is None:
                return self.delay(attempt, rng)
            return min(exc.seconds, self.backoff_max)
        if not isinstance(exc, self.retry_on):
            return None
        return self.delay(attempt, rng)

    def snapshot(self) -> dict[str, Any]:
        """The policy as stored in a step's snapshot (JSON; exception classes by name)."""
        return {
            "retries": self.retries,
            "backoff": self.backoff,
            "backoff_factor": self.backoff_factor,
            "backoff_max": self.backoff_max,
            "jitter": self.jitter,
            "retry_on": [class_name(cls) for cls in self.retry_on],
        }


def for_step(step: str, retry: object, knobs: dict[str, Any]) -> RetryPolicy:
    """The policy of a step declared with ``retry=`` or with the loose keywords, not both.

    Args:
        step: the step's name (for the errors).
        retry: the ``retry=`` given, or None.
        knobs: the keywords given (``retries=``, ``backoff=``...), None for those not given.

    Raises:
        UsageError: both a policy and keywords, something else than a policy, a bad knob.
    """
    given = {knob: value for knob, value in knobs.items() if value is not None}
    if retry is not None:
        if not isinstance(retry, RetryPolicy):
            raise UsageError(f"step {step!r}: retry takes a RetryPolicy(...), not {retry!r}")
        if given:
            raise UsageError(
                f"step {step!r}: pass retry=RetryPolicy(...) or the keywords "
                f"{', '.join(sorted(given))}, not both (put them in the policy)"
            )
        return retry
    return RetryPolicy(**_checked(f"step {step!r}", given))


def class_name(cls: type[BaseException]) -> str:
    """How an exception class is named in a snapshot: qualified, but for builtins."""
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _checked(where: str, knobs: dict[str, Any]) -> dict[str, Any]:
    """The knobs given, checked and normalised (floats, a tuple of classes); else UsageError."""
    out: dict[str, Any] = {}
    if "retries" in knobs:
        retries = knobs["retries"]
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise UsageError(f"{where}: retries must be an integer >= 0, not {retries!r}")
        out["retries"] = retries
    for knob, minimum in (("backoff", 0.0), ("backoff_factor", 1.0), ("backoff_max", 0.0)):
        if knob in knobs:
            out[knob] = _number(where, knob, knobs[knob], minimum)
    if "jitter" in knobs:
        jitter = _number(where, "jitter", knobs["jitter"], 0.0)
        if jitter > 1.0:
            raise UsageError(f"{where}: jitter is a fraction between 0 and 1, not {jitter!r}")
        out["jitter"] = jitter
    if "retry_on" in knobs:
        out["retry_on"] = _exception_classes(where, knobs["retry_on"])
    return out


def _number(where: str, knob: str, value: object, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= minimum:
        raise UsageError(f"{where}: {knob} must be a number >= {minimum:g}, not {value!r}")
    if not math.isfinite(value):
        raise UsageError(f"{where}: {knob} must be finite, not {value!r}")
    if knob != "backoff_factor" and value > LONGEST_WAIT:
        # A wait no database stores as a time (and no one means): refused here, not
        # as a database error when the step first fails.
        raise UsageError(f"{where}: {knob} is at most {LONGEST_WAIT:g} s (a year), not {value!r}")
    return float(value)


def _exception_classes(where: str, retry_on: object) -> tuple[type[BaseException], ...]:
    classes: Iterable[object] = retry_on if isinstance(retry_on, (tuple, list)) else (retry_on,)
    checked: list[type[BaseException]] = []
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise UsageError(f"{where}: retry_on takes exception classes, not {cls!r}")
        checked.append(cls)
    return tuple(checked)
