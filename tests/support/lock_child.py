"""A process that takes flow-tracker locks, for test_lock_race.py.

    python -m tests.support.lock_child race DATABASE_URL OUT_FILE ROUNDS KEYS
    python -m tests.support.lock_child hold DATABASE_URL OUT_FILE TTL

``race``: takes random keys ROUNDS times (waiting for them) and writes each
holding interval (key, start, end; system-wide monotonic ns) as it held it.
``hold``: takes key "k", writes "held FENCE", then waits until OUT_FILE.go
exists, leaves the block and writes "released RESULT lost LOST".
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import flow_tracker
from flow_tracker import locks


def race(out: Path, rounds: int, keys: int) -> None:
    with out.open("w") as file:
        for _ in range(rounds):
            key = random.randrange(keys)
            with flow_tracker.exclusive("race", key=key, ttl=30, on_conflict="wait", timeout=60):
                start = time.monotonic_ns()
                time.sleep(random.uniform(0, 0.003))
                end = time.monotonic_ns()
            file.write(f"{key} {start} {end}\n")
            file.flush()


def hold(out: Path, ttl: float) -> None:
    go = out.with_suffix(".go")
    lease = locks.acquire("victim", "k", ttl)[0]
    assert lease is not None
    out.write_text(f"held {lease.fence}\n")
    while not go.exists():
        time.sleep(0.02)
    released = locks.release(lease)
    with out.open("a") as file:
        file.write(f"released {released} lost {lease.lost}\n")


def main() -> None:
    mode, url, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    flow_tracker.configure(database_url=url, log_to_stdlib=False, heartbeat_interval=0.2)
    if mode == "race":
        race(out, int(sys.argv[4]), int(sys.argv[5]))
    else:
        hold(out, float(sys.argv[4]))


if __name__ == "__main__":
    main()
