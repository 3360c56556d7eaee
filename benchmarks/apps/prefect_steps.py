"""Prefect 3's cost per task, run in its own environment by ``benchmarks.workflows``.

``python prefect_steps.py N`` runs a flow that calls a trivial task (writing one
line with the run logger) N times in sequence, and prints the milliseconds per
task, after a warm-up flow. Prefect keeps its state in its own SQLite database,
under a temporary ``PREFECT_HOME``.
"""

from __future__ import annotations

import sys
import time

from prefect import flow, get_run_logger, task  # type: ignore[import-not-found]


@task
def step(i: int) -> int:
    get_run_logger().info("step %s", i)
    return i + 1


@flow
def chain(n: int) -> int:
    value = 0
    for _ in range(n):
        value = step(value)
    return value


def main() -> None:
    n = int(sys.argv[1])
    chain(5)  # warm-up: the ephemeral API server, imports, the database
    started = time.perf_counter()
    assert chain(n) == n
    print(f"{(time.perf_counter() - started) * 1000.0 / n:.3f}")


if __name__ == "__main__":
    main()
