"""``flow-tracker compare ID [BASELINE_ID]``: what changed since the run last worked."""

from __future__ import annotations

import json
import unicodedata
from typing import Any

import click

import flow_tracker
from flow_tracker.cli.commands import main
from flow_tracker.cli.options import (
    database_option,
    echo_json,
    friendly_errors,
    terminal_style,
    use_database,
)
from flow_tracker.cli.render import Style, clock, duration
from flow_tracker.comparison import Change, Comparison, format_ratio
from flow_tracker.errors import NotFoundError, UsageError
from flow_tracker.ids import parse_id

COLOURS = {
    Change.ADDED.value: "green",
    Change.REMOVED.value: "bright_black",
    Change.FAILED.value: "red",
    Change.STATUS.value: "magenta",
    Change.SLOWER.value: "yellow",
    Change.FASTER.value: "cyan",
}
MARKS = {
    Change.ADDED.value: "+",
    Change.REMOVED.value: "-",
    Change.FAILED.value: "✘",
    Change.STATUS.value: "~",
    Change.SLOWER.value: "▲",
    Change.FASTER.value: "▼",
    Change.SAME.value: "=",
}
WORDS = {Change.ADDED.value: "new", Change.REMOVED.value: "missing"}
WIDTH = 120


def safe(text: Any, width: int = WIDTH) -> str:
    """Text fit for a terminal: one line, control characters escaped, cut to ``width``.

    Names and messages are anyone's text: an escape sequence in a flow's name
    must not drive the reader's terminal, and a lone surrogate must not make
    printing fail.
    """
    value = str(text)
    out = []
    for char in value:
        if unicodedata.category(char) in ("Cc", "Cs"):
            out.append(char.encode("unicode_escape", "backslashreplace").decode("ascii"))
        else:
            out.append(char)
    flat = "".join(out)
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _resolve(ident: str, what: str) -> str:
    """A process id from a process id or a queue's job id."""
    if parse_id(ident) is not None:
        return ident
    if "\x00" in ident or not ident.strip() or len(ident) > 255:
        raise UsageError(f"{safe(ident, 60)!r} is not a {what} or job id")
    try:
        ident.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{safe(ident, 60)!r} is not a {what} or job id") from None
    found = flow_tracker.get_status(ident)
    if found is None:
        raise NotFoundError(f"no process with id or job id {safe(ident, 60)!r}")
    return str(found.process_id)


@main.command("compare")
@database_option
@click.argument("process_id")
@click.argument("baseline_id", required=False)
@click.option(
    "--all", "show_all", is_flag=True, help="List every flow, the same ones too (--json too)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as a JSON object.")
@friendly_errors
def compare_command(
    database_url: str | None,
    process_id: str,
    baseline_id: str | None,
    show_all: bool,
    as_json: bool,
) -> None:
    """What changed since it last worked: a run (id or job id) beside its baseline.

    The baseline is BASELINE_ID, or else the last completed run of the same name
    that started before it.
    """
    use_database(database_url)
    run = _resolve(process_id, "process id")
    baseline = None if baseline_id is None else _resolve(baseline_id, "baseline process id")
    found = flow_tracker.compare(run, baseline)
    if as_json:
        echo_json(found.to_dict(all_flows=show_all))
        return
    click.echo("\n".join(report(found, terminal_style(), show_all=show_all)))


def _ms(value: float | None) -> str:
    return duration(value) if value is not None else "—"


def report(found: Comparison, style: Style, *, show_all: bool = False) -> list[str]:
    """The comparison as lines of text (coloured through ``style``)."""
    data = found.to_dict(all_flows=show_all)
    run, baseline = data["run"], data["baseline"]
    head = f"{style(safe(run['name']), bold=True)}  {_status(run['status'], style)}  {run['id']}"
    if baseline is None:
        return [head, "", style(safe(data["summary"], 400), fg="yellow")]
    which = "the baseline you chose" if data["baseline_chosen"] else "the last good run"
    started = found.baseline.started_at if found.baseline else None
    lines = [
        head,
        f"  against {which}: {baseline['id']}  {_status(baseline['status'], style)}  "
        f"started {clock(started)} UTC",
        "",
        style(safe(data["summary"], 1000), bold=True),
    ]
    lines += [style(f"  note: {safe(note, 300)}", dim=True) for note in data["notes"]]
    lines += ["", f"  {'':<16}{'baseline':<28}this run"]
    took = data["duration"]
    change = took["change"]
    tail = f"  {format_ratio(took['ratio'])} {change}" if change != Change.SAME.value else ""
    lines.append(
        f"  {'duration':<16}{_ms(baseline['duration_ms']):<28}{_ms(run['duration_ms'])}"
        + style(tail, fg=COLOURS.get(change))
    )
    lines.append(f"  {'attempts':<16}{baseline['attempt']!s:<28}{run['attempt']}")
    if run["queue_wait_ms"] is not None or baseline["queue_wait_ms"] is not None:
        lines.append(
            f"  {'waited in queue':<16}{_ms(baseline['queue_wait_ms']):<28}"
            f"{_ms(run['queue_wait_ms'])}"
        )
    lines.append(f"  {'error':<16}{_error(baseline['error'], 26):<28}{_error(run['error'], 80)}")
    if data["steps"] is not None:
        lines += ["", style("steps", bold=True)]
        lines += [_step_line(step, style) for step in data["steps"]]
    if data["metadata"]:
        lines += ["", style("metadata", bold=True)]
        lines += [_metadata_line(item, style) for item in data["metadata"]]
    lines += ["", *_flow_lines(found, data, style, show_all)]
    lines += ["", *_log_lines(data["first_log_difference"], data["logs_compared"], style)]
    return lines


def _status(status: str, style: Style) -> str:
    colour = {"completed": "green", "failed": "red", "lost": "magenta"}.get(status, "cyan")
    return style(status, fg=colour)


def _error(error: dict[str, Any] | None, width: int) -> str:
    if error is None:
        return "—"
    return safe(f"{error['type']}: {error['message']}", width)


def _value(value: Any) -> str:
    return safe(json.dumps(value, ensure_ascii=False, default=str), 60)


def _metadata_line(item: dict[str, Any], style: Style) -> str:
    kind = item["change"]
    mark = {"added": "+", "removed": "-", "changed": "~"}[kind]
    colour = {"added": "green", "removed": "bright_black", "changed": "yellow"}[kind]
    if kind == "added":
        values = _value(item["value"])
    elif kind == "removed":
        values = f"{_value(item['baseline_value'])} (gone)"
    else:
        values = f"{_value(item['baseline_value'])} → {_value(item['value'])}"
    return f"  {style(mark, fg=colour, bold=True)} {safe(item['key'], 40):<24} {values}"


def _step_line(step: dict[str, Any], style: Style) -> str:
    change = step["change"]
    flags = []
    if step["newly_failed"]:
        flags.append("newly failed")
    elif change not in (Change.SAME.value, Change.FAILED.value):
        flags.append(WORDS.get(change, change))
    if step["newly_retried"]:
        flags.append("newly retried")
    ratio = format_ratio(step["ratio"]) if change in ("slower", "faster") else ""
    keys = "".join(f" +{safe(k, 30)}" for k in step["result_keys_added"][:5])
    keys += "".join(f" -{safe(k, 30)}" for k in step["result_keys_removed"][:5])
    text = (
        f"  {style(MARKS.get(change, '='), fg=COLOURS.get(change), bold=True)} "
        f"{safe(step['name'], 40):<24} {step['baseline_status'] or '—'} → {step['status'] or '—'}"
        f"   attempts {step['baseline_attempts'] or '—'} → {step['attempts'] or '—'}"
        f"   {_ms(step['baseline_duration_ms'])} → {_ms(step['duration_ms'])} {ratio}"
    )
    if keys:
        text += f"   result keys{keys}"
    if flags:
        text += "  " + style(", ".join(flags), fg=COLOURS.get(change, "yellow"))
    return text


def _flow_lines(found: Comparison, data: dict[str, Any], style: Style, show_all: bool) -> list[str]:
    counts = data["flow_counts"]
    same = counts[Change.SAME.value]
    listed = [f for f in data["flows"] if show_all or f["change"] != Change.SAME.value]
    # Without --all, the flows above a changed one are listed in the JSON, not here:
    # each line names the end of its path.
    title = "flows" if show_all or not same else f"flows ({same:,} the same: --all lists them)"
    lines = [style(title, bold=True)]
    if not found.flows:
        lines.append("  neither run recorded a flow")
    for flow in listed:
        change = flow["change"]
        own = found.flows[flow["index"]]
        # Indented as a tree (at most 12 levels deep), or named by the end of its path.
        name = (
            "  " * min(flow["depth"], 12) + safe(own.label, 60)
            if show_all
            else safe(own.path_label(), 80)
        )
        ratio = format_ratio(flow["ratio"]) if change in ("slower", "faster") else ""
        word = WORDS.get(change, change) if change != Change.SAME.value else ""
        text = (
            f"  {style(MARKS[change], fg=COLOURS.get(change), bold=True)} {name:<40} "
            f"{_ms(flow['baseline_duration_ms']):>10} → {_ms(flow['duration_ms']):<10} "
            f"{ratio} {style(word, fg=COLOURS.get(change))}"
        ).rstrip()
        if flow["error"]:
            text += "  " + style(_error(flow["error"], 80), fg="red")
        lines.append(text)
    return lines


def _log_lines(difference: dict[str, Any] | None, compared: int, style: Style) -> list[str]:
    if difference is None:
        return [style(f"logs: the same {compared:,} lines", dim=True)]
    at = difference["index"]
    lines = [
        style(f"first different log line: line {at + 1}", bold=True)
        + style("  (numbers and ids in messages do not count)", dim=True)
    ]
    for title, side in (
        ("baseline", difference["baseline_lines"]),
        ("this run", difference["lines"]),
    ):
        lines.append(f"  {title}:")
        for entry in side:
            pointer = ">" if entry["index"] == at else " "
            where = f"  (in {safe(entry['flow'], 60)})" if entry["flow"] else ""
            text = (
                f"  {pointer} {entry['index'] + 1:>5}  {entry['level']:<8} "
                f"{safe(entry['message'])}{where}"
            )
            lines.append(style(text, bold=True) if pointer == ">" else text)
        if not side or side[-1]["index"] < at:
            lines.append(f"  > {at + 1:>5}  (no more lines)")
    return lines
