"""Benchmark tables into files and into the docs, never typed by hand.

Each benchmark writes its tables to ``benchmarks/results/NAME.md``; with
``--readme`` it also replaces the section between ``<!-- benchmark:NAME -->``
and ``<!-- /benchmark:NAME -->`` of the page that has it (``docs/benchmarks.md``
for most, ``docs/operations.md`` for the scale run), so the figures there always
come from one run, with its date.
"""

from __future__ import annotations

import os
import platform
import re
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# The pages a benchmark's section may be on.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def machine_line() -> str:
    """Today's date and what the machine is, for a table's caption."""
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    return f"{day}, {os.cpu_count()} cores, Python {platform.python_version()}"


def publish(name: str, lines: list[str], *, readme: bool) -> None:
    """Write ``lines`` to the results file and, with ``readme``, into its docs page."""
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text)
    print(f"\n  tables written to {RESULTS / f'{name}.md'}")
    if not readme:
        return
    start, end = f"<!-- benchmark:{name} -->", f"<!-- /benchmark:{name} -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    for page in PAGES:
        current = page.read_text()
        if pattern.search(current):
            page.write_text(pattern.sub(lambda _: f"{start}\n{text}{end}", current, count=1))
            print(f"  and into {page.relative_to(ROOT)} ({start})")
            return
    raise SystemExit(f"no page of the docs has a {start} ... {end} section to replace")
