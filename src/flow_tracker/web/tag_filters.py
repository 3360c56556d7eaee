"""The run list's tag filters, ``tag=key:value``: one reading for the page and the API."""

from __future__ import annotations

from flow_tracker.errors import UsageError
from flow_tracker.web.params import ParamError, clean
from flow_tracker.workflows.starting import parse_tag_filter

MAX_TAG_FILTERS = 5


def tag_filters(raw: list[str]) -> dict[str, str] | None:
    """The ``tag=key:value`` filters of a run list; None for none.

    A value is compared as it is, a bound parameter: no character of it is SQL.

    Raises:
        ParamError: too many, or one no tag can match (it names the problem).
    """
    wanted = [clean(text).strip() for text in raw if text.strip()]
    if len(wanted) > MAX_TAG_FILTERS:
        raise ParamError(f"at most {MAX_TAG_FILTERS} tag filters")
    try:
        found = dict(parse_tag_filter(text, ":") for text in wanted)
    except UsageError as exc:
        raise ParamError(str(exc)) from None
    return found or None
