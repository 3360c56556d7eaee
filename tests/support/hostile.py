"""Hostile and odd values a job may hand the tracker, named for the test ids.

Each is something real code produces: a NUL from a C string, a lone surrogate
from ``os.listdir`` of a name that is not UTF-8, ten thousand characters from a
generated name, script tags from a user's form, directives of the diagram
language a name is drawn in. :mod:`tests.test_hostile_corpus` replays them
through the library and the dashboard on both databases.
"""

from __future__ import annotations

from typing import Any

TEXTS: dict[str, str] = {
    "nul": "before\x00after",
    "lone-surrogate": "x\ud800y",
    "surrogate-escape": b"report-\xff.csv".decode("utf-8", "surrogateescape"),
    "len-256": "n" * 256,
    "len-10000": "L" * 10_000,
    "script": "<script>alert(1)</script><img src=x onerror=alert(2)>",
    "mermaid-init": "%%{init: {'theme': 'dark'}}%% x",
    "backtick": "`leading backtick",
    "rtl-override": "\u202eevil.exe",
    "emoji-zwj": "family \U0001f468\u200d\U0001f469\u200d\U0001f467",
    "ansi-control": "\x1b[31mred\x07bell",
    "json-escape": '"\\u0000" and \\ud800',
    "secret": "password=hunter2 postgresql://app:pw@db/app Bearer abcdefghijklmnop",
}
"""Texts: names, ids, messages, reasons."""


def deep(depth: int) -> Any:
    """A list nested ``depth`` levels deep."""
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


class Opaque:
    """An object JSON cannot hold, with a ``repr`` that tries to inject markup."""

    def __repr__(self) -> str:
        return "<Opaque onload=alert(1)>"


def data_values() -> dict[str, Any]:
    """Values for ``data``, metadata and workflow context: JSON and what is not JSON."""
    return {
        "deep-100000": deep(100_000),
        "deep-500": deep(500),
        "object": Opaque(),
        "set-and-bytes": {"s": {1, 2}, "b": b"\xff\x00"},
        "nan-inf": [float("nan"), float("inf")],
        "int-5000-digits": 10**4_999,
        "keys-100000": {f"k{i}": i for i in range(100_000)},
        "huge-string": "H" * 2_000_000,
        "non-string-keys": {1: "one", (2, 3): "tuple", None: "none"},
    }
