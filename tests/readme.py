"""The README's examples as data: its fenced code blocks and its command lines.

``tests/test_readme.py`` runs them; this module only reads the file, so that a
newcomer can see what counts as an example: every fenced ``python`` block, named
by the heading above it and its place under that heading (``"Celery #2"``), and
every line of a ``sh`` block that starts with ``flow-tracker``.
"""

from __future__ import annotations

import shlex
import types
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
COMMAND = "flow-tracker"


@dataclass(frozen=True)
class Block:
    """A fenced code block of the README."""

    name: str  # "<heading> #<n>": the n-th block of that language under the heading
    lang: str
    line: int  # the README line of the block's first line of code (1-based)
    code: str

    def compiled(self) -> types.CodeType:
        """The block compiled so that a traceback names its README line."""
        return compile("\n" * (self.line - 1) + self.code, str(README), "exec")


def blocks(lang: str) -> list[Block]:
    """Every fenced block of ``lang`` in the README, in order."""
    found: list[Block] = []
    seen: Counter[str] = Counter()
    heading = ""
    fence: tuple[str, int, int, list[str]] | None = None  # lang, indent, first line, lines
    for number, raw in enumerate(README.read_text().splitlines(), start=1):
        stripped = raw.lstrip()
        if fence is None:
            if raw.startswith("#"):
                heading = raw.lstrip("#").strip()
            elif stripped.startswith("```"):
                fence = (stripped[3:].strip(), len(raw) - len(stripped), number + 1, [])
            continue
        block_lang, indent, first, lines = fence
        if stripped.startswith("```"):
            if block_lang == lang:
                seen[heading] += 1
                code = "\n".join(lines) + "\n"
                found.append(Block(f"{heading} #{seen[heading]}", lang, first, code))
            fence = None
        else:
            lines.append(raw[indent:] if raw[:indent].strip() == "" else raw)
    return found


def command_lines() -> list[tuple[int, str]]:
    """Every ``flow-tracker ...`` line of the README's ``sh`` blocks, with its line number.

    Optional parts (``[--read-only]``) lose their brackets, so a line names every
    option it shows; see :func:`arguments` to split it.
    """
    lines: list[tuple[int, str]] = []
    for block in blocks("sh"):
        for offset, line in enumerate(block.code.splitlines()):
            if line.startswith(COMMAND + " "):
                text = line[len(COMMAND) + 1 :].replace("[", "").replace("]", "")
                lines.append((block.line + offset, text))
    return lines


def arguments(text: str) -> list[str]:
    """A command line's arguments, its trailing ``# comment`` dropped."""
    return shlex.split(text, comments=True)


def reference_commands() -> list[str]:
    """The sub-commands the README's command-line reference lists."""
    names: list[str] = []
    for block in blocks(""):
        for line in block.code.splitlines():
            if line.startswith(COMMAND + " "):
                names.append(line.split()[1])
    return names
