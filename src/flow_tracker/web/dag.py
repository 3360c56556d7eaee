"""A workflow run drawn as SVG on the server: no script, no CDN, the page's CSP unchanged.

Steps are laid out in columns by dependency level (a step sits one column
right of its deepest parent), in declaration order within a column; edges are
curves from a parent's right side to a child's left side. Siblings that share
the same parents and children, more than :data:`COLLAPSE_OVER` of them (a
fan-out), are drawn as one node with their count per status, which a link
expands (``?expand=<group>``); a failed or lost step is always drawn alone.
Every label is escaped here, and every class name is a known status: the SVG
is inserted into the page as markup.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape
from typing import Any

from flow_tracker.status import StepState
from flow_tracker.workflows.manage import known_step_status
from flow_tracker.workflows.status import StepStatus, WorkflowStatus

# Steps drawn apart, and whose edges are drawn blocked.
_BROKEN = (StepState.FAILED.value, StepState.LOST.value)

COLLAPSE_OVER = 20
NODE_W = 168
NODE_H = 40
GAP_X = 64
GAP_Y = 14
PAD = 12
LABEL_CHARS = 22


@dataclass
class Node:
    """One drawn node: a step, or a collapsed group of sibling steps."""

    key: str
    label: str
    level: int
    steps: list[StepStatus]
    group: int | None = None
    """The group's number when this node stands for several steps."""
    x: float = 0.0
    y: float = 0.0
    parents: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """The node's status: the step's, or the worst of the group's."""
        order = (
            StepState.FAILED,
            StepState.LOST,
            StepState.RUNNING,
            StepState.RETRYING,
            StepState.QUEUED,
            StepState.PENDING,
            StepState.CANCELLED,
        )
        statuses = {s.status for s in self.steps}
        for status in order:
            if status.value in statuses:
                return status.value
        return self.steps[0].status if len(statuses) == 1 else StepState.COMPLETED.value


@dataclass(frozen=True)
class Drawing:
    """The SVG and what the page says about it."""

    svg: str
    width: int
    height: int
    groups: dict[int, list[str]]
    """Collapsed groups by number: the steps each stands for."""


@dataclass(frozen=True)
class _Structure:
    """What the drawing needs of a run's DAG alone, which never changes during the run."""

    dag: dict[str, Any]
    """Kept so the ``id()`` it is cached under is not reused while cached."""
    steps: int
    level: dict[str, int]
    order: dict[str, int]
    """Each step's place in declaration order."""
    families: list[list[str]]
    """Steps with the same parents and children, in declaration order."""


# Structures of recently drawn runs, by the id of their (shared, cached) DAG snapshot:
# a 2,000-step run's levels and families took ~7 ms to work out on every view.
_STRUCTURES: OrderedDict[int, _Structure] = OrderedDict()
_STRUCTURES_KEPT = 64
_structures_lock = threading.Lock()


def _structure(run: WorkflowStatus) -> _Structure:
    key = id(run.dag)
    with _structures_lock:
        found = _STRUCTURES.get(key)
        if found is not None and found.dag is run.dag and found.steps == len(run.steps):
            _STRUCTURES.move_to_end(key)
            return found
    level: dict[str, int] = {}
    children: dict[str, list[str]] = {name: [] for name in run.steps}
    for name, step in run.steps.items():  # declaration order is a topological order
        level[name] = 1 + max((level.get(p, 0) for p in step.depends_on), default=-1)
        for parent in step.depends_on:
            children.setdefault(parent, []).append(name)
    families: dict[tuple[tuple[str, ...], tuple[str, ...]], list[str]] = {}
    for name, step in run.steps.items():
        shape = (tuple(sorted(step.depends_on)), tuple(sorted(children.get(name, ()))))
        families.setdefault(shape, []).append(name)
    order = {name: i for i, name in enumerate(run.steps)}
    found = _Structure(run.dag, len(run.steps), level, order, list(families.values()))
    with _structures_lock:
        _STRUCTURES[key] = found
        while len(_STRUCTURES) > _STRUCTURES_KEPT:
            _STRUCTURES.popitem(last=False)
    return found


def _short(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def layout(run: WorkflowStatus, expand: set[int] | None = None) -> list[Node]:
    """The nodes with their places (groups collapsed unless their number is in ``expand``)."""
    expand = expand or set()
    structure = _structure(run)
    level = structure.level
    steps = run.steps
    siblings: list[list[str]] = []
    for family in structure.families:
        alone = [n for n in family if steps[n].status in _BROKEN]
        if alone:
            # A failure is always drawn on its own.
            siblings.extend([n] for n in alone)
            family = [n for n in family if steps[n].status not in _BROKEN]
        if family:
            siblings.append(family)
    node_of: dict[str, str] = {}
    nodes: dict[str, Node] = {}
    group_number = 0
    for names in siblings:
        if len(names) > COLLAPSE_OVER:
            group_number += 1
            if group_number not in expand:
                key = f"group-{group_number}"
                first = run.steps[names[0]]
                nodes[key] = Node(
                    key,
                    f"{len(names)} steps: {names[0]} …",
                    level[names[0]],
                    [run.steps[n] for n in names],
                    group=group_number,
                    parents=list(first.depends_on),
                )
                for name in names:
                    node_of[name] = key
                continue
        for name in names:
            step = run.steps[name]
            nodes[name] = Node(name, name, level[name], [step], parents=list(step.depends_on))
            node_of[name] = name
    # Parents by node key (a collapsed group's parents are its members' parents).
    for node in nodes.values():
        node.parents = sorted({node_of[p] for p in node.parents if p in node_of})
    columns: dict[int, list[Node]] = {}
    order = structure.order
    for node in sorted(nodes.values(), key=lambda n: order[n.steps[0].name]):
        columns.setdefault(node.level, []).append(node)
    for column, members in columns.items():
        for row, node in enumerate(members):
            node.x = PAD + column * (NODE_W + GAP_X)
            node.y = PAD + row * (NODE_H + GAP_Y)
    return list(nodes.values())


def _counts(node: Node) -> str:
    tally: dict[str, int] = {}
    for step in node.steps:
        tally[step.status] = tally.get(step.status, 0) + 1
    return " · ".join(f"{count} {status}" for status, count in sorted(tally.items()))


def draw(
    run: WorkflowStatus,
    link: Callable[[StepStatus], str | None],
    expand_link: Callable[[int], str],
    expand: set[int] | None = None,
) -> Drawing:
    """The run as SVG: nodes coloured by status, edges by dependency.

    Args:
        run: the run to draw.
        link: the page of a step (its process), or None when it has none yet.
        expand_link: the URL that expands collapsed group ``n``.
        expand: the groups to draw expanded.
    """
    nodes = layout(run, expand)
    by_key = {node.key: node for node in nodes}
    width = int(max((n.x for n in nodes), default=0) + NODE_W + PAD)
    height = int(max((n.y for n in nodes), default=0) + NODE_H + PAD)
    parts = [
        f'<svg class="dag" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" '
        f'aria-label="{escape(run.name)}: {len(run.steps)} steps">'
    ]
    for node in nodes:
        for parent_key in node.parents:
            parent = by_key[parent_key]
            x1, y1 = parent.x + NODE_W, parent.y + NODE_H / 2
            x2, y2 = node.x, node.y + NODE_H / 2
            bend = (x2 - x1) / 2
            blocked = " edge-blocked" if parent.status in _BROKEN else ""
            parts.append(
                f'<path class="edge{blocked}" d="M{x1:.0f},{y1:.0f} C{x1 + bend:.0f},{y1:.0f} '
                f'{x2 - bend:.0f},{y2:.0f} {x2:.0f},{y2:.0f}"/>'
            )
    groups: dict[int, list[str]] = {}
    for node in nodes:
        status = node.status
        # A class name from a known status only: the row's status is any text (SQL can
        # write one), and this attribute is markup the page does not escape again.
        classes = [f"node node-{known_step_status(status)}"]
        if node.group is None and run.failed_step == node.key:
            classes.append("node-root-cause")
        if node.group is None and node.steps[0].blocked_by:
            classes.append("node-blocked")
        if node.group is not None:
            classes.append("node-group")
            groups[node.group] = [s.name for s in node.steps]
        title = node.key if node.group is None else _counts(node)
        sub = status if node.group is None else _counts(node)
        if node.group is None and node.steps[0].attempts > 1:
            sub += f" · {node.steps[0].attempts} attempts"
        body = (
            f'<g class="{" ".join(classes)}" transform="translate({node.x:.0f},{node.y:.0f})">'
            f"<title>{escape(title)}</title>"
            f'<rect width="{NODE_W}" height="{NODE_H}" rx="6"/>'
            f'<text x="10" y="17" class="node-name">{escape(_short(node.label))}</text>'
            f'<text x="10" y="32" class="node-status">{escape(_short(sub))}</text></g>'
        )
        target = expand_link(node.group) if node.group is not None else link(node.steps[0])
        if target:
            body = f'<a href="{escape(target)}">{body}</a>'
        parts.append(body)
    parts.append("</svg>")
    return Drawing("".join(parts), width, height, groups)
