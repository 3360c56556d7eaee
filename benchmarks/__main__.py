"""Run benchmarks by name; none named runs them all.

``python -m benchmarks [core] [queues] [jobcost] [dashboard] [workflows] [workflow_pages]
[compare] [scale] [alternatives] [starting] [--quick] [--readme]``

``--quick`` makes a short run; ``--readme`` also writes the run's tables into
docs/benchmarks.md. Each benchmark's module says what it measures and the
options of its own (``python -m benchmarks dashboard --scale``, ``jobcost --schemas``).
"""

from __future__ import annotations

import signal
import sys

from benchmarks import (
    alternatives,
    compare,
    core,
    dashboard,
    job_cost,
    queues,
    scale,
    starting,
    workflow_pages,
    workflows,
)


def main() -> int:
    """Run the benchmarks named on the command line (default: all)."""
    args = sys.argv[1:]
    if "-h" in args or "--help" in args:
        print(__doc__)
        return 0
    # A benchmark stopped by SIGTERM still runs its ``finally`` blocks: the queue
    # workers it started in sessions of their own are stopped, not left to take
    # the next run's jobs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    names = [a for a in args if not a.startswith("-")] or [
        "core",
        "queues",
        "jobcost",
        "dashboard",
        "workflows",
        "workflow_pages",
        "compare",
        "scale",
        "alternatives",
        "starting",
    ]
    status = 0
    for name in names:
        if name == "core":
            status |= core.main(args)
        elif name == "queues":
            status |= queues.main(args)
        elif name == "jobcost":
            status |= job_cost.main(args)
        elif name == "dashboard":
            status |= dashboard.main(args)
        elif name == "workflows":
            status |= workflows.main(args)
        elif name == "workflow_pages":
            status |= workflow_pages.main(args)
        elif name == "compare":
            status |= compare.main(args)
        elif name == "scale":
            status |= scale.main(args)
        elif name == "alternatives":
            status |= alternatives.main(args)
        elif name == "starting":
            status |= starting.main(args)
        else:
            print(
                f"unknown benchmark {name!r}; known: core, queues, jobcost, dashboard, "
                "workflows, workflow_pages, compare, scale, alternatives, starting",
                file=sys.stderr,
            )
            return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
