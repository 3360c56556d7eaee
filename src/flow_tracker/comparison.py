"""What changed since it last worked: a run beside the last good run of the same job.

:func:`compare` reads two runs (through :mod:`flow_tracker.store.comparison`) and
decides here, in Python, what differs:

* **flows**, matched by their path of names from the top (``import / charge``);
  a flow repeated under the same parent (a loop) is matched by order: the
  second ``batch`` with the baseline's second ``batch``. Each is ``added``,
  ``removed``, ``failed`` (failed now, not in the baseline), ``status`` (ended
  otherwise), ``slower``, ``faster`` or ``same``. Durations within
  :data:`NOISE_FLOOR_MS` of each other, or less than :data:`SLOWER_RATIO` apart,
  are the ``same``: 3 µs against 4 µs is noise, not a slowdown;
* **metadata** keys added, removed or changed, with both values;
* the **first log line** whose level or message differs, with its neighbours.
  Numbers, UUIDs and hex ids in a message do not count (a count or a time in a
  message differs on every run);
* attempts, duration, time waited in the queue, and each run's error;
* for a **workflow run**, every step beside the baseline's: status, attempts,
  duration and the keys of its result, with the steps that newly failed, were
  newly retried or slowed down named in the summary.

A retried job keeps every attempt's flows and logs: the latest attempt of each
run is what is compared. Payload values (metadata values, error messages) reach
people only through :func:`payload_display`, redacted as everywhere.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import re
import uuid
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Any

from flow_tracker import config, runtime
from flow_tracker.errors import NotFoundError, UsageError
from flow_tracker.ids import parse_id
from flow_tracker.records import ErrorInfo, ProcessRecord, queue_wait_ms
from flow_tracker.redaction import REDACTED, Redactor
from flow_tracker.status import Status
from flow_tracker.store import comparison as stored
from flow_tracker.store.engine import Store

SLOWER_RATIO = 1.5
"""A duration this many times its baseline's (or less than its inverse) is slower (faster)."""
NOISE_FLOOR_MS = 5.0
"""Durations closer than this (in ms) are the same, whatever their ratio."""
MAX_FLOWS = 20_000
"""Flows of each run compared at most (a page and an API answer stay bounded)."""
MAX_LOG_LINES = 100_000
"""Log lines of each run looked through for the first difference at most."""
NEIGHBOURS = 2
"""Log lines shown before and after the first one that differs."""
MAX_TEXT = 2_000
"""Log and error messages are cut to this many characters in a comparison."""
SUMMARY_NAME = 40
"""Names in the one-line summary are cut to this many characters."""
READ_FLUSH_TIMEOUT_S = 2.0
TIMES = "\N{MULTIPLICATION SIGN}"

_FAILED = frozenset({Status.FAILED.value, Status.LOST.value})
# What a log message holds that differs on every run: ids and numbers.
_VARIABLE = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"|\b0x[0-9a-f]+"
    r"|\b(?=[0-9a-f]*[0-9])[0-9a-f]{8,}\b"
    r"|[0-9]+",
    re.IGNORECASE,
)


class Change(str, Enum):
    """How a flow or a step of a run differs from the baseline's."""

    ADDED = "added"
    """Only in this run."""
    REMOVED = "removed"
    """Only in the baseline (not reached by a failed or running run, or gone)."""
    FAILED = "failed"
    """Failed (or lost) in this run, not in the baseline."""
    STATUS = "status"
    """Ended otherwise than in the baseline, without newly failing."""
    SLOWER = "slower"
    FASTER = "faster"
    SAME = "same"

    def __str__(self) -> str:
        return self.value


Display = Callable[..., Any]


def payload_display() -> Display:
    """How a comparison shows a payload value: ``display(value, key=None) -> shown value``.

    The one function every metadata value and error message of a comparison
    passes through on its way to people (the dashboard, the API, the CLI):
    redacted as the dashboard redacts, under the keys configured now
    (``redact_keys``) as well as those in force when the value was stored. A
    reader without the right to see payloads gets ``[hidden]`` from here once
    the dashboard has principals.
    """
    redactor = Redactor(config.current().redact_keys)

    def display(value: Any, key: str | None = None) -> Any:
        if key is not None and redactor.is_sensitive(key):
            return REDACTED
        return redactor.scrub(value)

    return display


def ratio_of(value: float | None, baseline: float | None) -> float | None:
    """``value / baseline``; None when either is unknown or the baseline is zero."""
    if value is None or baseline is None or baseline <= 0:
        return None
    return value / baseline


def timing(value: float | None, baseline: float | None) -> Change:
    """``slower``, ``faster`` or ``same``: two durations (ms) beyond the noise, or not."""
    if value is None or baseline is None or abs(value - baseline) < NOISE_FLOOR_MS:
        return Change.SAME
    if value >= baseline * SLOWER_RATIO:
        return Change.SLOWER
    if baseline >= value * SLOWER_RATIO:
        return Change.FASTER
    return Change.SAME


def _classify(
    status: str | None,
    baseline_status: str | None,
    duration_ms: float | None,
    baseline_duration_ms: float | None,
) -> Change:
    if baseline_status is None:
        return Change.ADDED
    if status is None:
        return Change.REMOVED
    if status in _FAILED and baseline_status not in _FAILED:
        return Change.FAILED
    if status != baseline_status:
        return Change.STATUS
    return timing(duration_ms, baseline_duration_ms)


def format_ratio(ratio: float | None) -> str:
    """``4.1`` or ``0.25`` followed by a multiplication sign; an empty string when unknown."""
    if ratio is None:
        return ""
    return f"{ratio:.1f}{TIMES}" if ratio >= 1 else f"{ratio:.2f}{TIMES}"


def _short(name: str, limit: int = SUMMARY_NAME) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _error_dict(error: ErrorInfo | None, display: Display) -> dict[str, Any] | None:
    if error is None:
        return None
    return {"type": error.type, "message": display(error.message[:MAX_TEXT])}


@dataclasses.dataclass(slots=True, eq=False)
class FlowChange:
    """One flow of either run, matched with its counterpart by its path of names."""

    name: str
    occurrence: int
    """1 for the first flow of this name under its parent, 2 for the second (a loop)..."""
    depth: int
    """0 for a top-level flow."""
    change: Change
    status: str | None
    """This run's flow's status; None when only the baseline has the flow."""
    baseline_status: str | None
    duration_ms: float | None
    baseline_duration_ms: float | None
    error: ErrorInfo | None = None
    """This run's flow's error."""
    index: int = 0
    """Its place in :attr:`Comparison.flows`."""
    parent: FlowChange | None = dataclasses.field(default=None, repr=False)
    """The flow it was started in (None for a top-level flow)."""

    @property
    def label(self) -> str:
        """The name, with ``#2`` for the second flow of that name under one parent."""
        return self.name if self.occurrence == 1 else f"{self.name} #{self.occurrence}"

    @property
    def path(self) -> tuple[str, ...]:
        """The names from the top-level flow down to this one."""
        names: list[str] = []
        node: FlowChange | None = self
        while node is not None:
            names.append(node.name)
            node = node.parent
        return tuple(reversed(names))

    def path_label(self, most: int = 4) -> str:
        """The labels of the last ``most`` flows of its path: ``… / batch #2 / commit``."""
        labels: list[str] = []
        node: FlowChange | None = self
        while node is not None and len(labels) < most:
            labels.append(node.label)
            node = node.parent
        return ("… / " if node is not None else "") + " / ".join(reversed(labels))

    @property
    def ratio(self) -> float | None:
        """The duration in this run over the baseline's."""
        return ratio_of(self.duration_ms, self.baseline_duration_ms)

    def to_dict(self, display: Display | None = None) -> dict[str, Any]:
        """As JSON-ready values (the error message through ``display``).

        ``parent`` is the index of the flow it was started in, in the same list:
        a path of names is the chain of parents (written out, a deep chain of
        flows would repeat its names once for every flow below them).
        """
        error = self.error
        return {
            "index": self.index,
            "parent": None if self.parent is None else self.parent.index,
            "name": self.name,
            "occurrence": self.occurrence,
            "depth": self.depth,
            "change": self.change.value,
            "status": self.status,
            "baseline_status": self.baseline_status,
            "duration_ms": self.duration_ms,
            "baseline_duration_ms": self.baseline_duration_ms,
            "ratio": ratio_of(self.duration_ms, self.baseline_duration_ms),
            "error": None if error is None else _error_dict(error, display or payload_display()),
        }


@dataclasses.dataclass(frozen=True, slots=True)
class MetadataChange:
    """A metadata key of the run that the baseline has not, lacks, or has with another value."""

    key: str
    change: str
    """``added``, ``removed`` or ``changed``."""
    value: Any
    """This run's value (None when removed)."""
    baseline_value: Any

    def to_dict(self, display: Display | None = None) -> dict[str, Any]:
        """As JSON-ready values, both values through ``display``."""
        show = display or payload_display()
        return {
            "key": self.key,
            "change": self.change,
            "value": None if self.change == "removed" else show(self.value, self.key),
            "baseline_value": None
            if self.change == "added"
            else show(self.baseline_value, self.key),
        }


@dataclasses.dataclass(frozen=True, slots=True)
class LogLine:
    """A log line as a comparison shows it."""

    index: int
    """Its place among the lines of the run's latest attempt, from 0."""
    level: str
    message: str
    flow: str | None
    """The path of the flow it was written in (``download / fetch``), None for the process."""
    position: int = dataclasses.field(default=0, repr=False)
    """Its position in the process (the order flows and logs were written in)."""

    def to_dict(self) -> dict[str, Any]:
        """As JSON-ready values."""
        return {
            "index": self.index,
            "level": self.level,
            "message": self.message,
            "flow": self.flow,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class LogDifference:
    """The first log line whose level or message differs, with its neighbours on each side."""

    index: int
    """The line's place (from 0); a side without that line has run out of lines."""
    lines: list[LogLine]
    """This run's lines around it."""
    baseline_lines: list[LogLine]

    def to_dict(self) -> dict[str, Any]:
        """As JSON-ready values."""
        return {
            "index": self.index,
            "lines": [line.to_dict() for line in self.lines],
            "baseline_lines": [line.to_dict() for line in self.baseline_lines],
        }


@dataclasses.dataclass(frozen=True, slots=True)
class StepChange:
    """One step of a workflow run beside the same step of the baseline run."""

    name: str
    change: Change
    status: str | None
    baseline_status: str | None
    attempts: int | None
    baseline_attempts: int | None
    duration_ms: float | None
    baseline_duration_ms: float | None
    result_keys: tuple[str, ...] | None
    """The keys of the step's result when it is an object; None otherwise."""
    baseline_result_keys: tuple[str, ...] | None
    error: str | None = None

    @property
    def ratio(self) -> float | None:
        """The duration in this run over the baseline's."""
        return ratio_of(self.duration_ms, self.baseline_duration_ms)

    @property
    def newly_failed(self) -> bool:
        """Failed (or lost) now, not in the baseline."""
        return self.change == Change.FAILED

    @property
    def newly_retried(self) -> bool:
        """Took more than one attempt now, one in the baseline."""
        return (self.attempts or 0) > 1 and (self.baseline_attempts or 0) <= 1

    def to_dict(self, display: Display | None = None) -> dict[str, Any]:
        """As JSON-ready values (the error through ``display``)."""
        now, before = set(self.result_keys or ()), set(self.baseline_result_keys or ())
        return {
            "name": self.name,
            "change": self.change.value,
            "status": self.status,
            "baseline_status": self.baseline_status,
            "attempts": self.attempts,
            "baseline_attempts": self.baseline_attempts,
            "duration_ms": self.duration_ms,
            "baseline_duration_ms": self.baseline_duration_ms,
            "ratio": self.ratio,
            "newly_failed": self.newly_failed,
            "newly_retried": self.newly_retried,
            "result_keys": None if self.result_keys is None else list(self.result_keys),
            "baseline_result_keys": None
            if self.baseline_result_keys is None
            else list(self.baseline_result_keys),
            "result_keys_added": sorted(now - before),
            "result_keys_removed": sorted(before - now),
            "error": None if self.error is None else (display or payload_display())(self.error),
        }


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A run beside its baseline: what :func:`compare` returns.

    ``baseline`` is None when there is no earlier good run; :attr:`summary` then
    says so, and the lists are empty.
    """

    run: ProcessRecord
    baseline: ProcessRecord | None
    baseline_chosen: bool
    """True when the caller named the baseline, False when it was looked for."""
    flows: list[FlowChange]
    """Every flow of either run, in tree order (a flow only the baseline has sits
    where it was there)."""
    metadata: list[MetadataChange]
    log_difference: LogDifference | None
    steps: list[StepChange] | None
    """For a workflow run against another: each step; else None."""
    notes: list[str]
    """What to know to read the comparison right (another name, another attempt...)."""
    queue_wait_ms: float | None = None
    baseline_queue_wait_ms: float | None = None
    logs_compared: int = 0
    """Log lines compared on each side before the first difference (or the end)."""

    @property
    def found(self) -> bool:
        """Whether there is a baseline to compare with."""
        return self.baseline is not None

    @property
    def duration_change(self) -> Change:
        """The run's own duration against the baseline's (``slower``, ``faster``, ``same``)."""
        if self.baseline is None:
            return Change.SAME
        return timing(self.run.duration_ms, self.baseline.duration_ms)

    def counts(self) -> dict[str, int]:
        """How many flows are of each kind of change (every kind, zeros included)."""
        counted = collections.Counter(f.change.value for f in self.flows)
        return {kind.value: counted.get(kind.value, 0) for kind in Change}

    @property
    def summary(self) -> str:
        """What differs, in one line.

        Such as: 2 flows slower (charge 4.1 times), 1 new flow (notify), metadata key
        `provider` changed; or that there is no earlier good run to compare with.
        """
        if self.baseline is None:
            return f"no earlier good run of {_short(self.run.name)} to compare with"
        parts: list[str] = []
        if self.run.status != self.baseline.status:
            cause = f" ({_short(self.run.error.type)})" if self.run.error else ""
            parts.append(f"{self.run.status.value}{cause}")
        parts += _step_parts(self.steps or [])
        parts += _flow_parts(self.flows)
        parts += _metadata_parts(self.metadata)
        took = self.duration_change
        if took != Change.SAME:
            ratio = format_ratio(ratio_of(self.run.duration_ms, self.baseline.duration_ms))
            parts.append(f"the run took {ratio} as long" if ratio else f"the run was {took.value}")
        if self.run.attempt != self.baseline.attempt:
            parts.append(f"{self.run.attempt} attempts (baseline {self.baseline.attempt})")
        if self.log_difference is not None:
            parts.append(f"logs differ from line {self.log_difference.index + 1}")
        return ", ".join(parts) if parts else "no difference found"

    def differing_flows(self) -> list[FlowChange]:
        """The flows that differ and every flow above one of them, in tree order.

        Each keeps its place in the tree: its parent is in the list too.
        """
        chosen: set[int] = set()
        for flow in self.flows:
            if flow.change == Change.SAME:
                continue
            node: FlowChange | None = flow
            # Up to the first flow already chosen: its own parents are chosen with it.
            while node is not None and node.index not in chosen:
                chosen.add(node.index)
                node = node.parent
        return [self.flows[i] for i in sorted(chosen)]

    def to_dict(self, display: Display | None = None, *, all_flows: bool = False) -> dict[str, Any]:
        """As JSON-ready values.

        Args:
            display: how payload values are shown (default :func:`payload_display`).
            all_flows: list every flow of both runs under ``flows``; by default only
                :meth:`differing_flows` (``flow_counts`` counts them all either way).
        """
        show = display or payload_display()
        baseline = self.baseline
        return {
            "summary": self.summary,
            "found": self.found,
            "run": _facts(self.run, self.queue_wait_ms, show),
            "baseline": None
            if baseline is None
            else _facts(baseline, self.baseline_queue_wait_ms, show),
            "baseline_chosen": self.baseline_chosen,
            "notes": list(self.notes),
            "duration": {
                "ms": self.run.duration_ms,
                "baseline_ms": None if baseline is None else baseline.duration_ms,
                "ratio": None
                if baseline is None
                else ratio_of(self.run.duration_ms, baseline.duration_ms),
                "change": self.duration_change.value,
            },
            "flow_counts": self.counts(),
            "flows_listed": "all" if all_flows else "differing",
            "flows": [
                f.to_dict(show) for f in (self.flows if all_flows else self.differing_flows())
            ],
            "metadata": [m.to_dict(show) for m in self.metadata],
            "first_log_difference": None
            if self.log_difference is None
            else self.log_difference.to_dict(),
            "logs_compared": self.logs_compared,
            "steps": None if self.steps is None else [s.to_dict(show) for s in self.steps],
        }


def _facts(run: ProcessRecord, waited: float | None, display: Display) -> dict[str, Any]:
    return {
        "id": str(run.id),
        "name": run.name,
        "category": run.category,
        "status": run.status.value,
        "created_at": run.created_at.isoformat(),
        "started_at": None if run.started_at is None else run.started_at.isoformat(),
        "finished_at": None if run.finished_at is None else run.finished_at.isoformat(),
        "duration_ms": run.duration_ms,
        "attempt": run.attempt,
        "queue_wait_ms": waited,
        "error": _error_dict(run.error, display),
    }


def _names(items: list[Any], label: Callable[[Any], str], most: int = 3) -> str:
    """The first ``most`` items by ``label`` (which cuts the names it shows)."""
    shown = ", ".join(label(item) for item in items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _flow_parts(changes: list[FlowChange]) -> list[str]:
    by_kind: dict[Change, list[FlowChange]] = collections.defaultdict(list)
    for change in changes:
        by_kind[change.change].append(change)
    parts = []
    if failed := by_kind[Change.FAILED]:
        parts.append(f"{_plural(len(failed), 'flow')} failed ({_names(failed, _where)})")
    for kind, reverse in ((Change.SLOWER, True), (Change.FASTER, False)):
        found = by_kind[kind]
        if found:
            found.sort(
                key=lambda f: f.ratio if f.ratio is not None else float("inf"), reverse=reverse
            )
            top = found[0]
            parts.append(
                f"{_plural(len(found), 'flow')} {kind.value} "
                f"({_where(top)} {format_ratio(top.ratio) or 'from 0 ms'})"
            )
    # A new or missing flow's subtree is new or missing with it: only its top is named.
    if added := _tops(by_kind[Change.ADDED]):
        word = "new flow" if len(added) == 1 else "new flows"
        parts.append(f"{len(added)} {word} ({_names(added, _new_label)})")
    if removed := _tops(by_kind[Change.REMOVED]):
        parts.append(f"{_plural(len(removed), 'flow')} missing ({_names(removed, _label)})")
    if other := by_kind[Change.STATUS]:
        first = other[0]
        parts.append(
            f"{_plural(len(other), 'flow')} ended otherwise "
            f"({_where(first)}: {first.baseline_status} → {first.status})"
        )
    return parts


def _tops(changes: list[FlowChange]) -> list[FlowChange]:
    """The flows whose parent did not change the same way (a new subtree's top)."""
    return [c for c in changes if c.parent is None or c.parent.change != c.change]


def _label(change: FlowChange) -> str:
    return _short(change.label)


def _where(change: FlowChange) -> str:
    """A flow and the one it runs in, each name cut: ``batch #2 / store``."""
    if change.parent is None:
        return _short(change.label)
    return f"{_short(change.parent.label)} / {_short(change.label)}"


def _new_label(change: FlowChange) -> str:
    return f"{_label(change)}, failed" if change.status in _FAILED else _label(change)


def _metadata_parts(changes: list[MetadataChange]) -> list[str]:
    parts = []
    for kind in ("changed", "added", "removed"):
        keys = [c.key for c in changes if c.change == kind]
        if keys:
            word = "metadata key" if len(keys) == 1 else "metadata keys"
            parts.append(f"{word} {_names(keys, lambda k: f'`{_short(k)}`')} {kind}")
    return parts


def _step_parts(steps: list[StepChange]) -> list[str]:
    parts = []
    if failed := [s for s in steps if s.newly_failed]:
        parts.append(f"newly failed: {_names(failed, lambda s: _short(s.name))}")
    if retried := [s for s in steps if s.newly_retried]:
        parts.append(
            "newly retried: "
            + _names(retried, lambda s: f"{_short(s.name)} ({s.attempts} attempts)")
        )
    if slower := [s for s in steps if s.change == Change.SLOWER]:
        slower.sort(key=lambda s: s.ratio if s.ratio is not None else float("inf"), reverse=True)
        parts.append(
            "slowed down: "
            + _names(slower, lambda s: f"{_short(s.name)} {format_ratio(s.ratio)}".strip())
        )
    if added := [s for s in steps if s.change == Change.ADDED]:
        parts.append(f"new steps: {_names(added, lambda s: _short(s.name))}")
    return parts


# -- matching two flow trees -----------------------------------------------------------

_ROOT = 0
_NONE: list[int] = []


class _Paths:
    """Paths of names as numbers, shared by both runs: the same path, the same number.

    A path is (its parent's number, name, occurrence), so a flow's number is
    found in one look-up whatever its depth, and matching two trees compares
    numbers. Number 0 is the root (above the top-level flows).
    """

    def __init__(self) -> None:
        self.numbers: dict[tuple[int, str, int], int] = {}
        self.parts: list[tuple[int, str, int]] = [(-1, "", 0)]

    def label(self, number: int, most: int = 4) -> str:
        """``download / fetch #2``: the last ``most`` names of a path."""
        labels: list[str] = []
        while number != _ROOT and len(labels) < most:
            number, name, n = self.parts[number]
            labels.append(name if n == 1 else f"{name} #{n}")
        return ("… / " if number != _ROOT else "") + " / ".join(reversed(labels))


@dataclasses.dataclass
class _Tree:
    """One run's flows by path number, and each path's children in order."""

    rows: dict[int, Any]
    children: dict[int, list[int]]
    numbers: dict[Any, int]
    """A flow's id -> its path number."""


def _tree(rows: list[Any], paths: _Paths) -> _Tree:
    """Number every flow by its path, in one pass over ``rows``.

    ``rows``: ``(id, parent_id, name, ...)`` in the order the flows started, so a
    flow's parent (started before it) is numbered before it. A flow whose parent
    is not numbered by then (not among ``rows``: another attempt's, or past the
    limit) counts as a top-level one.
    """
    by_number: dict[int, Any] = {}
    children: dict[int, list[int]] = {}
    numbers: dict[Any, int] = {}
    seen: dict[tuple[int, str], int] = {}
    known, parts = paths.numbers, paths.parts
    for row in rows:
        parent = numbers.get(row[1], _ROOT)
        name = row[2]
        sibling = (parent, name)
        n = seen[sibling] = seen.get(sibling, 0) + 1
        part = (parent, name, n)
        key = known.get(part)
        if key is None:  # a path neither run had so far: the next number
            key = known[part] = len(parts)
            parts.append(part)
        by_number[key] = row
        numbers[row[0]] = key
        below = children.get(parent)
        if below is None:
            children[parent] = [key]
        else:
            below.append(key)
    return _Tree(by_number, children, numbers)


def _merged(run: list[int], baseline: list[int]) -> list[int]:
    """The children of one node of both trees, in order.

    This run's in their order, each of the baseline's own placed after the one
    it followed there.
    """
    if run == baseline or not baseline:
        return run
    if not run:
        return baseline
    present = set(run)
    after: dict[int | None, list[int]] = {}
    anchor: int | None = None
    for key in baseline:
        if key in present:
            anchor = key
        else:
            after.setdefault(anchor, []).append(key)
    if not after:
        return run
    order = list(after.get(None, ()))
    for key in run:
        order.append(key)
        order.extend(after.get(key, ()))
    return order


def match_flows(run_rows: list[Any], baseline_rows: list[Any]) -> list[FlowChange]:
    """Every flow of both runs, matched by path, in the merged tree's order.

    ``run_rows`` and ``baseline_rows``: ``(id, parent_id, name, status,
    duration_ms, error_class, error_message)`` in the order the flows started.
    """
    paths = _Paths()
    return _match(_tree(run_rows, paths), _tree(baseline_rows, paths), paths)


def _match(now: _Tree, before: _Tree, paths: _Paths) -> list[FlowChange]:
    # Run for every flow of both runs (10,000 for two runs of 5,000): the kind of
    # change is decided inline, as _classify and timing decide it.
    out: list[FlowChange] = []
    parts = paths.parts
    mine_rows, their_rows = now.rows, before.rows
    mine_children, their_children = now.children, before.children
    failed, floor, factor = _FAILED, NOISE_FLOOR_MS, SLOWER_RATIO
    same, slower, faster = Change.SAME, Change.SLOWER, Change.FASTER
    top = _merged(mine_children.get(_ROOT, _NONE), their_children.get(_ROOT, _NONE))
    stack: list[tuple[int, FlowChange | None]] = [(key, None) for key in reversed(top)]
    while stack:
        key, parent = stack.pop()
        mine, theirs = mine_rows.get(key), their_rows.get(key)
        status = baseline_status = duration = baseline_duration = error = None
        if mine is not None:
            _id, _parent, _name, status, duration, error_class, error_message = mine
            if error_class or error_message:
                error = ErrorInfo(error_class or "Error", error_message or "")
        if theirs is not None:
            baseline_status, baseline_duration = theirs[3], theirs[4]
        if theirs is None:
            kind = Change.ADDED
        elif mine is None:
            kind = Change.REMOVED
        elif status == baseline_status:
            if (
                duration is None
                or baseline_duration is None
                or abs(duration - baseline_duration) < floor
            ):
                kind = same
            elif duration >= baseline_duration * factor:
                kind = slower
            elif baseline_duration >= duration * factor:
                kind = faster
            else:
                kind = same
        elif status in failed and baseline_status not in failed:
            kind = Change.FAILED
        else:
            kind = Change.STATUS
        _up, name, occurrence = parts[key]
        change = FlowChange(
            name,
            occurrence,
            0 if parent is None else parent.depth + 1,
            kind,
            status,
            baseline_status,
            duration,
            baseline_duration,
            error,
            len(out),
            parent,
        )
        out.append(change)
        below = _merged(mine_children.get(key, _NONE), their_children.get(key, _NONE))
        if below:
            stack.extend(zip(reversed(below), itertools.repeat(change)))
    return out


# -- metadata, logs, steps ----------------------------------------------------------------


def compare_metadata(run: dict[str, Any], baseline: dict[str, Any]) -> list[MetadataChange]:
    """Top-level keys changed, added, then removed, each by key.

    Sorted, not in the order written: PostgreSQL's JSONB keeps no key order.
    """
    changed = [
        MetadataChange(k, "changed", run[k], baseline[k])
        for k in sorted(run.keys() & baseline.keys())
        # true and 1 are equal in Python, not in the JSON stored.
        if run[k] != baseline[k] or type(run[k]) is not type(baseline[k])
    ]
    added = [MetadataChange(k, "added", run[k], None) for k in sorted(run.keys() - baseline.keys())]
    removed = [
        MetadataChange(k, "removed", None, baseline[k])
        for k in sorted(baseline.keys() - run.keys())
    ]
    return changed + added + removed


def log_shape(message: str) -> str:
    """A message with its numbers, UUIDs and hex ids masked: what is compared of it."""
    return _VARIABLE.sub("#", message)


def first_log_difference(
    lines: Iterable[Any],
    baseline_lines: Iterable[Any],
    *,
    limit: int = MAX_LOG_LINES,
) -> tuple[LogDifference | None, int]:
    """The first line (by order) whose level or message differs, and how many were compared.

    ``lines``: ``(position, level, message)`` rows, read lazily: nothing past the
    difference and its neighbours is read. The lines returned name no flow yet
    (see :func:`_with_flows`).
    """
    pairs = itertools.zip_longest(lines, baseline_lines)
    recent: collections.deque[tuple[Any, Any]] = collections.deque(maxlen=NEIGHBOURS)
    shape = log_shape
    compared = 0
    for index, (a, b) in enumerate(itertools.islice(pairs, limit)):
        if (
            a is not None
            and b is not None
            and a[1] == b[1]
            and (a[2] == b[2] or shape(a[2]) == shape(b[2]))
        ):
            recent.append((a, b))
            compared += 1
            continue
        ahead = list(itertools.islice(pairs, NEIGHBOURS))
        side_a = [pair[0] for pair in recent] + ([a] if a is not None else [])
        side_b = [pair[1] for pair in recent] + ([b] if b is not None else [])
        side_a += [x for x, _ in ahead if x is not None] if a is not None else []
        side_b += [y for _, y in ahead if y is not None] if b is not None else []
        start = index - len(recent)
        return (
            LogDifference(
                index,
                [_line(start + i, row) for i, row in enumerate(side_a)],
                [_line(start + i, row) for i, row in enumerate(side_b)],
            ),
            index,
        )
    return None, compared


def _line(index: int, row: Any) -> LogLine:
    return LogLine(index, str(row[1]), str(row[2])[:MAX_TEXT], None, int(row[0]))


def _with_flows(
    lines: list[LogLine], flows: dict[int, Any], label: Callable[[Any], str | None]
) -> list[LogLine]:
    """``lines`` naming the flow each was written in (``flows``: position -> flow id)."""
    return [
        dataclasses.replace(line, flow=label(flows[line.position]))
        if line.position in flows
        else line
        for line in lines
    ]


def _result_keys(result: Any) -> tuple[str, ...] | None:
    return tuple(str(k) for k in result) if isinstance(result, dict) else None


def compare_steps(run: Any, baseline: Any) -> list[StepChange]:
    """Each step of two runs (:class:`~flow_tracker.WorkflowStatus`), this run's order first."""
    changes = []
    names = list(run.steps) + [n for n in baseline.steps if n not in run.steps]
    for name in names:
        mine, theirs = run.steps.get(name), baseline.steps.get(name)
        status = None if mine is None else mine.status
        baseline_status = None if theirs is None else theirs.status
        duration = None if mine is None else mine.duration_ms
        baseline_duration = None if theirs is None else theirs.duration_ms
        changes.append(
            StepChange(
                name=name,
                change=_classify(status, baseline_status, duration, baseline_duration),
                status=status,
                baseline_status=baseline_status,
                attempts=None if mine is None else mine.attempts,
                baseline_attempts=None if theirs is None else theirs.attempts,
                duration_ms=duration,
                baseline_duration_ms=baseline_duration,
                result_keys=None if mine is None else _result_keys(mine.result),
                baseline_result_keys=None if theirs is None else _result_keys(theirs.result),
                error=None if mine is None or mine.error is None else mine.error[:MAX_TEXT],
            )
        )
    return changes


# -- reading and comparing ---------------------------------------------------------------


def _as_id(value: uuid.UUID | str, what: str) -> uuid.UUID:
    found = parse_id(value)
    if found is None:
        raise UsageError(f"{str(value)[:60]!r} is not a {what} (a UUID)")
    return found


def _queue_wait(store: Store, run: ProcessRecord) -> float | None:
    """How long the job waited in its queue before its first attempt started (ms).

    The run was read without its history: its first start is asked for alone.
    """
    if run.queued_at is None:
        return None
    return queue_wait_ms(run, stored.first_start(store, run.id))


def _notes(run: ProcessRecord, baseline: ProcessRecord, chosen: bool) -> list[str]:
    notes = []
    if baseline.name != run.name:
        notes.append(f"the baseline is a run of another name: {_short(baseline.name, 200)}")
    if chosen and baseline.status != Status.COMPLETED:
        notes.append(f"the baseline did not complete: it is {baseline.status.value}")
    if (baseline.started_at or baseline.created_at) > (run.started_at or run.created_at):
        notes.append("the baseline started after this run")
    if not run.status.is_finished:
        notes.append(
            f"this run is still {run.status.value}: flows it has not reached yet show as missing"
        )
    if run.attempt > 1 or baseline.attempt > 1:
        notes.append(
            f"each run's latest attempt is compared (attempt {run.attempt} "
            f"against attempt {baseline.attempt})"
        )
    return notes


def compare_runs(
    store: Store,
    process_id: uuid.UUID | str,
    baseline_id: uuid.UUID | str | None = None,
) -> Comparison:
    """:func:`compare` on a given database (the dashboard's own, a test's)."""
    pid = _as_id(process_id, "process id")
    bid = None if baseline_id is None else _as_id(baseline_id, "baseline process id")
    if bid == pid:
        raise UsageError(
            "a run compared with itself shows no difference: give another run as the baseline"
        )
    run = stored.read_run(store, pid)
    if run is None:
        raise NotFoundError(f"no process with id {pid}")
    if bid is None:
        baseline = stored.last_completed_before(store, run)
    else:
        baseline = stored.read_run(store, bid)
        if baseline is None:
            raise NotFoundError(f"no process with id {bid} to compare with")
    chosen = bid is not None
    if baseline is None:
        return Comparison(run, None, chosen, [], [], None, None, [])
    notes = _notes(run, baseline, chosen)
    run_flows = stored.attempt_flows(store, run, MAX_FLOWS)
    baseline_flows = stored.attempt_flows(store, baseline, MAX_FLOWS)
    if MAX_FLOWS in (len(run_flows), len(baseline_flows)):
        notes.append(f"only the first {MAX_FLOWS:,} flows of each run are compared")
    paths = _Paths()
    now, before = _tree(run_flows, paths), _tree(baseline_flows, paths)
    flows = _match(now, before, paths)

    difference, compared = first_log_difference(
        stored.attempt_logs(store, run), stored.attempt_logs(store, baseline)
    )
    if difference is not None:
        difference = _name_flows(store, difference, (run, now), (baseline, before), paths)
    if difference is None and compared >= MAX_LOG_LINES:
        notes.append(f"no log line differs among the first {MAX_LOG_LINES:,}")
    steps = _steps(store, run, baseline, notes)
    return Comparison(
        run=run,
        baseline=baseline,
        baseline_chosen=chosen,
        flows=flows,
        metadata=compare_metadata(run.metadata, baseline.metadata),
        log_difference=difference,
        steps=steps,
        notes=notes,
        queue_wait_ms=_queue_wait(store, run),
        baseline_queue_wait_ms=_queue_wait(store, baseline),
        logs_compared=compared,
    )


def _name_flows(
    store: Store,
    difference: LogDifference,
    run: tuple[ProcessRecord, _Tree],
    baseline: tuple[ProcessRecord, _Tree],
    paths: _Paths,
) -> LogDifference:
    """The difference with each line shown naming the flow it was written in."""

    def named(lines: list[LogLine], side: tuple[ProcessRecord, _Tree]) -> list[LogLine]:
        record, tree = side
        flows = stored.log_flows(store, record, [line.position for line in lines])

        def label(flow_id: Any) -> str | None:
            number = tree.numbers.get(flow_id)
            return None if number is None else paths.label(number)

        return _with_flows(lines, flows, label)

    return LogDifference(
        difference.index,
        named(difference.lines, run),
        named(difference.baseline_lines, baseline),
    )


def _steps(
    store: Store, run: ProcessRecord, baseline: ProcessRecord, notes: list[str]
) -> list[StepChange] | None:
    if not stored.is_workflow_run(run):
        return None
    from flow_tracker.workflows import manage

    if not stored.is_workflow_run(baseline):
        notes.append("the baseline is not a workflow run: steps are not compared")
        return None
    try:
        mine = manage.get_workflow(run.id, store=store)
        theirs = manage.get_workflow(baseline.id, store=store)
    except NotFoundError:  # a run's row deleted by a clean-up under way
        notes.append("a workflow run's steps are gone: steps are not compared")
        return None
    return compare_steps(mine, theirs)


def compare(process_id: uuid.UUID | str, baseline_id: uuid.UUID | str | None = None) -> Comparison:
    """What changed since it last worked: a run beside the last good run of the same job.

    Args:
        process_id: the run to look at (its process id).
        baseline_id: the run to compare it with; default: the last ``completed``
            run of the same name that started before it (for a workflow run, of
            the same workflow). Any run may be named, of another name too: the
            comparison's ``notes`` then say so.

    Returns:
        A :class:`Comparison`; with no earlier good run its ``baseline`` is None
        and its ``summary`` says so (that is an answer, not an error).

    Raises:
        UsageError: an id that is not a UUID, or the run given as its own baseline.
        NotFoundError: no process has ``process_id`` (or ``baseline_id``).
    """
    runtime.flush(READ_FLUSH_TIMEOUT_S)
    return compare_runs(runtime.store(), process_id, baseline_id)
