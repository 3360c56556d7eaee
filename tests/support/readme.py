"""The documentation's examples as data: the fenced code blocks and command lines.

``tests/test_readme.py`` runs them; this module only reads the files (the
README and every page of ``docs/``), so that a newcomer can see what counts as
an example: every fenced ``python`` block, named by the heading above it and its
place under that heading (``"Celery #2"``), and every line of a ``sh`` block
that starts with ``flow-tracker``. Headings are unique across the pages, so a
name says where its example is.
"""

from __future__ import annotations

import shlex
import types
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
# The README first, then the manual's pages in a fixed order.
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = "flow-tracker"


@dataclass(frozen=True)
class Block:
    """A fenced code block of the README."""

    name: str  # "<heading> #<n>": the n-th block of that language under the heading
    lang: str
    line: int  # the page's line of the block's first line of code (1-based)
    code: str
    page: Path = README

    def compiled(self) -> types.CodeType:
        """The block compiled so that a traceback names its page and line."""
        return compile("\n" * (self.line - 1) + self.code, str(self.page), "exec")

    @property
    def where(self) -> str:
        """``docs/usage.md:120``: the page and line of the block's first line of code."""
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(lang: str) -> list[Block]:
    """Every fenced block of ``lang`` in the README and the docs, in order."""
    found: list[Block] = []
    seen: Counter[str] = Counter()
    for page in PAGES:
        found += _page_blocks(page, lang, seen)
    return found


def _page_blocks(page: Path, lang: str, seen: Counter[str]) -> list[Block]:
    found: list[Block] = []
    heading = ""
    fence: tuple[str, int, int, list[str]] | None = None  # lang, indent, first line, lines
    for number, raw in enumerate(page.read_text().splitlines(), start=1):
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
                found.append(Block(f"{heading} #{seen[heading]}", lang, first, code, page))
            fence = None
        else:
            lines.append(raw[indent:] if raw[:indent].strip() == "" else raw)
    return found


def command_lines() -> list[tuple[str, str]]:
    """Every ``flow-tracker ...`` line of the ``sh`` blocks, with its page and line.

    Optional parts (``[--read-only]``) lose their brackets, so a line names every
    option it shows; see :func:`arguments` to split it.
    """
    lines: list[tuple[str, str]] = []
    for block in blocks("sh"):
        for offset, line in enumerate(block.code.splitlines()):
            if line.startswith(COMMAND + " "):
                text = line[len(COMMAND) + 1 :].replace("[", "").replace("]", "")
                where = f"{block.page.relative_to(ROOT)}:{block.line + offset}"
                lines.append((where, text))
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
