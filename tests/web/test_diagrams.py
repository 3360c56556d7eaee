"""A run's drawings, Mermaid text and SVG, take nothing from a step's name or status as syntax.

A step's name is the code's, its status whatever the row holds (SQL can write any
text there): neither may add a Mermaid directive (``%%{init: ...}%%`` restyles the
whole diagram wherever it is rendered), break a label, or reach the SVG's markup raw.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import update
from starlette.testclient import TestClient

import flow_tracker
from flow_tracker import runtime
from flow_tracker.store.schema import workflow_steps
from flow_tracker.web import create_app
from flow_tracker.workflows.manage import known_step_status
from tests.web.conftest import ORIGIN

WAIT = 30.0
DIRECTIVE = '%%{init: {"theme": "dark", "themeVariables": {"primaryColor": "#f00"}}}%%'
BACKTICK = "`leading backtick"
STEP_STATUSES = (
    "pending",
    "queued",
    "running",
    "retrying",
    "completed",
    "failed",
    "lost",
    "cancelled",
    "skipped",
    "resolved",
)
# Fits the status column (16 characters): it closes the class attribute and adds a handler.
HOSTILE_STATUS = 'x" onload="f()"'
# Every line Mermaid is given: the header, one node per step, edges, classes.
MERMAID_LINE = re.compile(
    r'flowchart TD|    s\d+\["[^"`%\n]*"\]|    s\d+ --> s\d+'
    r"|    classDef [a-z]+ [-a-z0-9:#, ]+|    class s\d+ [a-z]+"
)


@pytest.fixture
def board(tracked: str) -> Iterator[TestClient]:
    app = create_app(tracked, keep_statistics=False)
    with TestClient(app, base_url=ORIGIN) as client:
        yield client
    app.state.dashboard.store.dispose()


def _run(name: str, steps: list[str]) -> Any:
    wf = flow_tracker.workflow(name)
    previous: list[str] = []
    for step in steps:
        wf.step(name=step, depends_on=previous)(lambda context, **parents: 1)
        previous = [step]
    return wf.run().wait(WAIT)


def _mermaid_texts(board: TestClient, run_id: Any) -> list[str]:
    """The run's Mermaid text from the library, the API and the run's page."""
    page = board.get(f"/workflows/{run_id}").text
    inline = re.search(r'<pre class="json" id="ft-mermaid">(.*?)</pre>', page, re.S)
    assert inline, "a small run's page shows its Mermaid text"
    shown = inline.group(1).replace("&amp;", "&").replace("&#34;", '"').replace("&#39;", "'")
    shown = shown.replace("&lt;", "<").replace("&gt;", ">")
    api = board.get(f"/api/workflows/{run_id}/diagram")
    assert api.status_code == 200
    return [flow_tracker.workflow_diagram(run_id), api.text, shown]


def test_a_step_name_adds_no_directive_and_no_markdown_string_to_the_mermaid_text(
    board: TestClient,
) -> None:
    run = _run("diagram_names", [DIRECTIVE, BACKTICK, "plain"])
    for text in _mermaid_texts(board, run.id):
        assert "%%" not in text and "`" not in text
        lines = text.splitlines()
        for line in lines:
            assert MERMAID_LINE.fullmatch(line), line
        nodes = [line for line in lines if line.startswith("    s") and '["' in line]
        assert len(nodes) == 3  # one line per step: no label ended early or split
        assert "&percnt;&percnt;{init:" in nodes[0] and "&grave;leading backtick" in nodes[1]


def test_a_status_written_by_sql_is_drawn_as_unknown_and_reaches_no_markup_raw(
    board: TestClient,
) -> None:
    run = _run("diagram_status", ["first", "second"])
    store = runtime.store()
    with store.engine.begin() as conn:
        conn.execute(
            update(workflow_steps)
            .where(workflow_steps.c.run_id == run.id, workflow_steps.c.name == "first")
            .values(status=HOSTILE_STATUS)
        )
    page = board.get(f"/workflows/{run.id}")
    assert page.status_code == 200
    svg = page.text.split('<svg class="dag"')[1].split("</svg>")[0]
    classes = re.findall(r'<g class="([^"]*)"', svg)
    assert classes and all(c.split()[1].startswith("node-") for c in classes)
    assert "node node-unknown" in classes[0] and "node node-completed" in classes[1]
    assert "onload" not in "".join(re.findall(r"<[^>]*>", svg))  # only in text, escaped
    assert 'onload="f()"' not in page.text
    for text in _mermaid_texts(board, run.id):
        for line in text.splitlines():
            assert MERMAID_LINE.fullmatch(line), line
        assert "classDef unknown " in text and "class s0 unknown" in text
        assert "x&quot; onload=&quot;f()&quot;" in text  # the label says what the row holds


def test_every_step_status_is_its_own_class_and_anything_else_is_unknown() -> None:
    for status in STEP_STATUSES:
        assert known_step_status(status) == status
    for other in ("", "Completed", "x y", HOSTILE_STATUS, "requeued", "unknown "):
        assert known_step_status(other) == "unknown"
