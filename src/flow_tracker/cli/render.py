"""Text rendering of processes for the terminal: one-line rows and the flow tree."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from flow_tracker.records import FlowRecord, LogEntryRecord, ProcessRecord
from flow_tracker.status import Status

Style = Callable[..., str]

STATUS_MARKS = {
    Status.COMPLETED: ("✔", "green"),
    Status.FAILED: ("✘", "red"),
    Status.RUNNING: ("▶", "cyan"),
    Status.RETRYING: ("↻", "yellow"),
    Status.QUEUED: ("…", "blue"),
    Status.LOST: ("?", "magenta"),
    Status.CANCELLED: ("■", "yellow"),
    Status.SKIPPED: ("-", "white"),
}
LEVEL_COLOURS = {
    "debug": "bright_black",
    "info": "white",
    "warning": "yellow",
    "error": "red",
    "critical": "bright_red",
}


def plain(text: str, **_: Any) -> str:
    """A style that adds nothing (for pipes and files)."""
    return text


def duration(ms: float | None) -> str:
    """A duration for people: 850 µs, 12.3 ms, 4.20 s, 3 m 05 s, 2 h 01 m."""
    if ms is None:
        return "—"
    if ms < 1:
        return f"{ms * 1000:.0f} µs"
    if ms < 1000:
        return f"{ms:.1f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} m {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} m"


def clock(value: datetime | None) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in UTC, or a dash."""
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "—"


def mark(status: Status, style: Style) -> str:
    """The status symbol, coloured."""
    symbol, colour = STATUS_MARKS.get(status, ("·", "white"))
    return style(symbol, fg=colour, bold=True)


def _one_line(text: str, width: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def process_row(p: ProcessRecord, style: Style = plain) -> str:
    """One line for ``flow-tracker list``."""
    progress = ""
    if p.progress_total and p.status in (Status.RUNNING, Status.RETRYING):
        progress = f" {p.progress_current / p.progress_total:4.0%}"
    return (
        f"{mark(p.status, style)} {clock(p.created_at)}  {p.status.value:<9} "
        f"{p.category:<9} {duration(p.duration_ms):>10}{progress}  "
        f"{style(p.name, bold=True)}  {style(str(p.id), dim=True)}"
    )


def job_line(job: Any) -> str:
    """One line naming a job the health check counts (a :class:`ForgottenJob`)."""
    parts = [
        clock(job.since),
        job.name,
        " ".join(p for p in (job.job_system, job.job_id) if p),
        f"queue {job.queue}" if job.queue else "",
        f"on {job.host}" if job.host else "",
        str(job.process_id),
    ]
    return "  ".join(part for part in parts if part)


def _data_suffix(data: Any) -> str:
    if data is None or data == {}:
        return ""
    return "  " + _one_line(json.dumps(data, ensure_ascii=False, default=str), 200)


def _log_line(entry: LogEntryRecord, style: Style) -> str:
    level = style(f"{entry.level.upper():<8}", fg=LEVEL_COLOURS.get(entry.level, "white"))
    stamp = entry.created_at.strftime("%H:%M:%S.%f")[:-3]
    return f"{style(stamp, dim=True)} {level} {_one_line(entry.message)}{_data_suffix(entry.data)}"


def _children_in_order(
    flows: Iterable[FlowRecord], logs: Iterable[LogEntryRecord]
) -> list[FlowRecord | LogEntryRecord]:
    items: list[FlowRecord | LogEntryRecord] = [*flows, *logs]
    return sorted(items, key=lambda item: item.position)


def _error_lines(error: Any, style: Style, *, full: bool) -> list[str]:
    head = style(f"{error.type}: {_one_line(error.message)}", fg="red", bold=True)
    lines = [head]
    if full and error.traceback:
        lines += [style(t, fg="red") for t in error.traceback.rstrip().splitlines()]
    return lines


def _tree(
    items: list[FlowRecord | LogEntryRecord], prefix: str, style: Style, out: list[str]
) -> None:
    for index, item in enumerate(items):
        last = index == len(items) - 1
        branch = "└─ " if last else "├─ "
        inner = prefix + ("   " if last else "│  ")
        if isinstance(item, LogEntryRecord):
            out.append(f"{prefix}{branch}{_log_line(item, style)}")
            continue
        attempt = f"  attempt {item.attempt}" if item.attempt > 1 else ""
        meta = _data_suffix(item.metadata)
        out.append(
            f"{prefix}{branch}{mark(item.status, style)} {style(item.name, bold=True)}  "
            f"{style(duration(item.duration_ms), fg='cyan')}{attempt}{meta}"
        )
        if item.error:
            out.extend(f"{inner}   {line}" for line in _error_lines(item.error, style, full=False))
        _tree(_children_in_order(item.children, item.logs), inner, style, out)


def queue_wait_ms(p: ProcessRecord) -> float | None:
    """How long the job waited in its queue before its first attempt started, in ms."""
    return p.queue_wait_ms


def process_tree(p: ProcessRecord, style: Style = plain) -> str:
    """The process as a tree of flows with durations and their logs, for ``flow-tracker show``."""
    out = [
        f"{mark(p.status, style)} {style(p.name, bold=True)}  {p.status.value}  "
        f"{style(duration(p.duration_ms), fg='cyan')}",
        f"  id        {p.id}",
        f"  category  {p.category}",
        f"  started   {clock(p.started_at or p.created_at)} UTC   finished {clock(p.finished_at)}",
    ]
    if p.host or p.pid:
        out.append(f"  host      {p.host or '—'}  pid {p.pid or '—'}  attempt {p.attempt}")
    if p.job_id:
        out.append(f"  job       {p.job_system or ''} {p.job_id}  queue {p.queue or '—'}")
    waited = queue_wait_ms(p)
    if waited is not None:
        out.append(f"  waited    {duration(waited)} in the queue before its first start")
    if p.job_args is not None:
        args = json.dumps(p.job_args, ensure_ascii=False, default=str)
        out.append(f"  args      {_one_line(args, 200)}")
    if p.parent_process_id:
        out.append(f"  parent    {p.parent_process_id}")
    if p.progress_total:
        share = p.progress_current / p.progress_total
        filled = int(share * 20)
        bar = "█" * filled + "░" * (20 - filled)
        out.append(f"  progress  {bar} {p.progress_current:g}/{p.progress_total:g} ({share:.0%})")
    if p.metadata:
        out.append(f"  metadata  {_one_line(json.dumps(p.metadata, ensure_ascii=False), 200)}")
    if p.dropped_logs:
        out.append(style(f"  dropped   {p.dropped_logs} events (buffer full)", fg="yellow"))
    if p.error:
        out.append("")
        out.extend("  " + line for line in _error_lines(p.error, style, full=True))
    out.append("")
    _tree(_children_in_order(p.flows, p.logs), "  ", style, out)
    return "\n".join(out)
