"""The ``flow-tracker`` command and what only it uses: text rendering and the demo.

The console script is ``flow_tracker.cli:main``; the commands live in
:mod:`flow_tracker.cli.commands`.
"""

from __future__ import annotations

from flow_tracker.cli import audit as _audit  # noqa: F401  (adds `audit`)
from flow_tracker.cli import compare as _compare  # noqa: F401  (adds `compare`)
from flow_tracker.cli import tokens as _tokens  # noqa: F401  (adds `tokens`)
from flow_tracker.cli import workflow_start as _start  # noqa: F401  (adds `workflows start`)
from flow_tracker.cli import workflows as _workflows  # noqa: F401  (adds `workflows`)
from flow_tracker.cli.commands import main

__all__ = ["main"]
