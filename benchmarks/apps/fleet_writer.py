"""One "worker host" of the fleet benchmark: threads recording steps as fast as they can.

``python -m benchmarks.apps.fleet_writer THREADS SECONDS RATE RESULT_FILE``, tracking
to ``FLOW_TRACKER_DATABASE_URL``. Each thread runs one tracked process and records
steps in it — a step enters a named flow, writes one log line with a small dict
and leaves the flow: two rows, as in the core benchmark — at RATE steps a second
(0: as fast as it can) until the time is up. Writes ``{"steps": …, "rows": …,
"flush_s": …, "writer": {…}}`` to RESULT_FILE once every row it made is stored (or
reported dropped); ``flush_s`` is how long that took after the time was up.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import flow_tracker
from flow_tracker import runtime

ROWS_PER_STEP = 2  # the flow and its log line


def _work(deadline: float, rate: float, done: list[int], index: int) -> None:
    steps = 0
    started = time.monotonic()
    with flow_tracker.track(f"fleet_host_thread_{index}", category="jobs") as job:
        while (now := time.monotonic()) < deadline:
            with job.flow("step") as flow:
                flow.log("stored a row", data={"n": steps})
            steps += 1
            if rate and steps % 50 == 0:
                ahead = steps / rate - (now - started)
                if ahead > 0:
                    time.sleep(ahead)
    done[index] = steps


def main() -> int:
    """Run the threads, wait for every row to be stored, report."""
    threads_n, seconds = int(sys.argv[1]), float(sys.argv[2])
    rate, result = float(sys.argv[3]), Path(sys.argv[4])
    flow_tracker.configure(log_to_stdlib=False)
    deadline = time.monotonic() + seconds
    done = [0] * threads_n
    threads = [
        threading.Thread(target=_work, args=(deadline, rate, done, i), daemon=True)
        for i in range(threads_n)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    flushing = time.monotonic()
    stored = flow_tracker.flush(timeout=600)
    flush_s = time.monotonic() - flushing
    steps = sum(done)
    result.write_text(
        json.dumps(
            {
                "steps": steps,
                "rows": steps * ROWS_PER_STEP + threads_n,  # and a process row per thread
                "flushed": stored,
                "flush_s": flush_s,
                "writer": runtime.writer().stats(),
            },
            default=str,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
