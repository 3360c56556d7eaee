"""Workflows against the queues' own chaining and against Prefect, in one run.

``python -m benchmarks workflows [--quick] [--readme]`` measures, with tracking to
PostgreSQL (and SQLite where said):

* **hand-off**: the median time from a step's end to its child's start in a
  chain of 20 trivial steps, a flow-tracker workflow beside the queue's native
  chaining of the same tasks in the same worker (Celery ``chain``, RQ
  ``depends_on``, Dramatiq ``pipeline``, Huey ``then``; arq has none, so its
  line has the workflow alone); every task notes its start and end in Redis, so
  both are timed the same way. Goal: ≤ 1.5x native.
* **fan-in**: 500 parallel leaves then a join, against a Celery ``chord``: from
  the last leaf's end to the join's start, and how often the join ran. Goal:
  ≤ 2x the chord, the join run once.
* **in-process pool**: milliseconds per step of a 200-step chain on the
  ``threads`` queue (SQLite and PostgreSQL), each step writing one log line,
  beside a Prefect 3 ``@task`` (one line through its run logger) called
  200 times in a ``@flow`` (run in its own environment, ``.bench-prefect/``,
  made on first use). Goal: ≥ 5x faster per step.
* **scale**: a chain of 20 and of 200 steps, a fan-out of 200 and of 2,000
  leaves with a join, on the pool with PostgreSQL: the cost per step must not
  grow with the size of the run.

Every run writes ``benchmarks/results/workflows.md``; ``--readme`` also
replaces docs/benchmarks.md's ``<!-- benchmark:workflows -->`` section.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from redis import Redis

import flow_tracker
from benchmarks.apps import wf_marks
from benchmarks.apps.wf_shapes import CHAIN, LEAVES, fan_in_workflow, logging_chain
from benchmarks.readme import machine_line, publish

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG_SERVER = os.environ.get("FLOW_TRACKER_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
PREFECT_VENV = REPO / ".bench-prefect"
WAIT_S = 600.0


def fresh_pg_database(name: str = "flow_tracker_bench_workflows") -> str:
    """URL of a new, empty PostgreSQL database for this run."""
    with psycopg.connect(PG_SERVER, autocommit=True, connect_timeout=3) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    return f"{PG_SERVER.rsplit('/', 1)[0]}/{name}"


@contextmanager
def worker(command: list[str], database_url: str) -> Iterator[None]:
    """A real worker process for the block (tracking to ``database_url``)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "FLOW_TRACKER_DATABASE_URL": database_url,
        "FT_BENCH_REDIS": wf_marks.REDIS_URL,
    }
    log = Path(tempfile.mkdtemp(prefix="ft-wf-bench-")) / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        time.sleep(3.0)  # let it connect and declare its queues
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited: {log.read_text()[-2000:]}")
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_marks(key: str, wanted: int) -> dict[str, float]:
    deadline = time.monotonic() + WAIT_S
    while True:
        marks = wf_marks.marks(key)
        if len(marks) >= wanted:
            return marks
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {key}: {len(marks)} of {wanted} marks after {WAIT_S:g} s")
        time.sleep(0.01)


def _handoffs(marks: dict[str, float], length: int) -> list[float]:
    return [(marks[f"{i + 1}s"] - marks[f"{i}e"]) * 1000.0 for i in range(length - 1)]


def handoff(
    send_native: Callable[[str], None] | None, workflow: flow_tracker.Workflow, runs: int
) -> tuple[float | None, float]:
    """Median hand-off (ms) of native chains (None: the queue has none) and the workflow's."""
    native: list[float] = []
    ours: list[float] = []
    for _ in range(runs):
        if send_native is not None:
            key = uuid.uuid4().hex
            send_native(key)
            native.append(statistics.median(_handoffs(_wait_marks(key, 2 * CHAIN), CHAIN)))
        key = uuid.uuid4().hex
        status = workflow.run(context={"key": key}).wait(WAIT_S)
        assert status.status == "completed", status
        ours.append(statistics.median(_handoffs(_wait_marks(key, 2 * CHAIN), CHAIN)))
    return (statistics.median(native) if native else None), statistics.median(ours)


def _celery_chain(key: str) -> None:
    from celery import chain

    from benchmarks.apps import wf_celery

    chain(wf_celery.step.si(key, i) for i in range(CHAIN)).apply_async()


def _rq_chain(key: str) -> None:
    from rq import Queue

    from benchmarks.apps import wf_rq

    queue = Queue(wf_rq.QUEUE, connection=Redis.from_url(wf_marks.REDIS_URL))
    previous = None
    for i in range(CHAIN):
        previous = queue.enqueue(wf_rq.step, key, i, depends_on=previous)


def _dramatiq_chain(key: str) -> None:
    import dramatiq

    from benchmarks.apps import wf_dramatiq

    dramatiq.pipeline(
        wf_dramatiq.step.message_with_options(args=(key, i), pipe_ignore=True) for i in range(CHAIN)
    ).run()  # type: ignore[no-untyped-call]


def _huey_chain(key: str) -> None:
    from benchmarks.apps import wf_huey

    pipe = wf_huey.step.s(key, 0)
    for i in range(1, CHAIN):
        pipe = pipe.then(wf_huey.piped, key, i)
    wf_huey.huey.enqueue(pipe)


def _join_delay(marks: dict[str, float], leaves: int) -> float:
    last_leaf = max(marks[f"{i}e"] for i in range(1, leaves + 1))
    return (marks[f"{leaves + 1}s"] - last_leaf) * 1000.0


def fan_in(runs: int) -> tuple[float, float, int, int]:
    """Join delay (ms) of a Celery chord and of the workflow; how often each join ran."""
    from celery import chord

    from benchmarks.apps import wf_celery

    chords: list[float] = []
    ours: list[float] = []
    chord_joins = our_joins = 0
    for _ in range(runs):
        key = uuid.uuid4().hex
        chord([wf_celery.step.si(key, i + 1) for i in range(LEAVES)])(wf_celery.join.s(key))
        chords.append(_join_delay(_wait_marks(key, 2 * LEAVES + 1), LEAVES))
        time.sleep(0.5)
        chord_joins = max(chord_joins, wf_marks.joins(key))
        key = uuid.uuid4().hex
        status = wf_celery.FAN_IN_WF.run(context={"key": key}).wait(WAIT_S)
        assert status.status == "completed", status
        ours.append(_join_delay(_wait_marks(key, 2 * LEAVES + 1), LEAVES))
        our_joins = max(our_joins, wf_marks.joins(key))
    return statistics.median(chords), statistics.median(ours), chord_joins, our_joins


def in_process_ms(database_url: str, length: int, name: str) -> float:
    """Milliseconds per step of a chain on the thread pool (after a warm-up run)."""
    flow_tracker.configure(database_url=database_url, log_to_stdlib=False)
    wf = logging_chain(length, name)
    assert wf.run(context={"key": "warm"}).wait(WAIT_S).status == "completed"
    started = time.perf_counter()
    status = wf.run(context={"key": uuid.uuid4().hex}).wait(WAIT_S)
    elapsed = time.perf_counter() - started
    assert status.status == "completed", status
    return elapsed * 1000.0 / length


def fan_out_ms(database_url: str, leaves: int, name: str) -> tuple[float, int]:
    """Milliseconds per step of a root, ``leaves`` leaves and a join on the pool."""
    flow_tracker.configure(database_url=database_url, log_to_stdlib=False)
    wf = fan_in_workflow("threads", "threads", leaves, name=name)
    key = uuid.uuid4().hex
    started = time.perf_counter()
    status = wf.run(context={"key": key}).wait(WAIT_S)
    elapsed = time.perf_counter() - started
    assert status.status == "completed", status
    return elapsed * 1000.0 / (leaves + 2), wf_marks.joins(key)


def prefect_ms(steps: int) -> float | None:
    """Prefect 3's milliseconds per task in its own environment; None if it cannot be set up."""
    python = PREFECT_VENV / "bin" / "python"
    if not python.exists():
        print("  setting up Prefect 3 in .bench-prefect/ (once) ...")
        made = subprocess.run([sys.executable, "-m", "venv", str(PREFECT_VENV)], check=False)
        pip = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "prefect>=3,<4"],
            check=False,
            capture_output=True,
        )
        if made.returncode or pip.returncode:
            print(f"  Prefect could not be installed: {pip.stderr.decode()[-500:]}")
            return None
    with tempfile.TemporaryDirectory() as home:
        env = {
            **os.environ,
            "PREFECT_HOME": home,
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        done = subprocess.run(
            [str(python), str(REPO / "benchmarks" / "apps" / "prefect_steps.py"), str(steps)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode or not lines:
        print(f"  Prefect run failed: {done.stderr[-500:]}")
        return None
    return float(lines[-1])


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base > 0 else "—"


def main(argv: list[str]) -> int:
    """Run the workflow benchmark; exit 1 when a goal is missed."""
    quick = "--quick" in argv
    runs = 2 if quick else 5
    database_url = fresh_pg_database()
    Redis.from_url(wf_marks.REDIS_URL).flushdb()
    misses: list[str] = []
    print(f"\nworkflow benchmark ({'quick' if quick else 'full'}), tracking to PostgreSQL\n")

    # -- hand-off against each queue's own chaining ------------------------------------------
    handoff_rows = [
        "| queue | native chain hand-off ms | workflow hand-off ms | ratio (goal ≤ 1.5x) |",
        "|---|---:|---:|---:|",
    ]
    flow_tracker.configure(database_url=database_url, log_to_stdlib=False)
    from benchmarks.apps import wf_arq, wf_celery, wf_dramatiq, wf_huey, wf_rq

    setups: list[tuple[str, list[str], Callable[[str], None] | None, flow_tracker.Workflow]] = [
        (
            "Celery prefork (2), `chain`",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "benchmarks.apps.wf_celery",
                "worker",
                "-P",
                "prefork",
                "-c",
                "2",
                "-Q",
                wf_celery.QUEUE,
                "-l",
                "error",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            _celery_chain,
            wf_celery.CHAIN_WF,
        ),
        (
            "RQ SimpleWorker, `depends_on`",
            [
                str(BIN / "rq"),
                "worker",
                "--with-scheduler",
                "-c",
                "benchmarks.apps.rq_settings",
                "--url",
                wf_marks.REDIS_URL,
                "-w",
                "rq.worker.SimpleWorker",
                "--logging_level",
                "ERROR",
                wf_rq.QUEUE,
            ],
            _rq_chain,
            wf_rq.CHAIN_WF,
        ),
        (
            "Dramatiq (1 proc x 2 threads), `pipeline`",
            [
                str(BIN / "dramatiq"),
                "benchmarks.apps.wf_dramatiq",
                "-p",
                "1",
                "-t",
                "2",
                "-Q",
                wf_dramatiq.QUEUE,
            ],
            _dramatiq_chain,
            wf_dramatiq.CHAIN_WF,
        ),
        (
            "Huey (2 threads), `then`",
            [
                str(BIN / "huey_consumer"),
                "benchmarks.apps.wf_huey.huey",
                "-w",
                "2",
                "-k",
                "thread",
            ],
            _huey_chain,
            wf_huey.CHAIN_WF,
        ),
        (
            "arq (2 jobs at once, polls every 10 ms), no chaining of its own",
            [str(BIN / "arq"), "benchmarks.apps.wf_arq.WorkerSettings"],
            None,
            wf_arq.CHAIN_WF,
        ),
    ]
    fan_in_result: tuple[float, float, int, int] | None = None
    for label, command, send_native, workflow in setups:
        with worker(command, database_url):
            native, ours = handoff(send_native, workflow, runs)
            if label.startswith("Celery"):
                fan_in_result = fan_in(1 if quick else 3)
        if native is None:
            print(f"  {label:45} native       —      workflow {ours:7.2f} ms")
            handoff_rows.append(f"| {label} | — | {ours:.2f} | — |")
            continue
        ratio = ours / native
        print(f"  {label:45} native {native:7.2f} ms   workflow {ours:7.2f} ms   {ratio:5.2f}x")
        handoff_rows.append(f"| {label} | {native:.2f} | {ours:.2f} | {_ratio(ours, native)} |")
        if ours > 1.5 * native:
            misses.append(f"hand-off on {label}: {ours / native:.2f}x native (goal ≤ 1.5x)")

    assert fan_in_result is not None
    chord_ms, our_ms, chord_joins, our_joins = fan_in_result
    print(
        f"  fan-in of {LEAVES}: chord {chord_ms:.1f} ms (body ran {chord_joins}x), "
        f"workflow {our_ms:.1f} ms (join ran {our_joins}x)"
    )
    fan_rows = [
        f"| {LEAVES} leaves then a join, Celery | last leaf's end → join's start ms | join ran |",
        "|---|---:|---:|",
        f"| `chord` | {chord_ms:.1f} | {chord_joins}x |",
        f"| workflow | {our_ms:.1f} ({_ratio(our_ms, chord_ms)}; goal ≤ 2x) | {our_joins}x |",
    ]
    if our_ms > 2 * chord_ms:
        misses.append(f"fan-in: {our_ms / chord_ms:.2f}x the chord (goal ≤ 2x)")
    if our_joins != 1:
        misses.append(f"fan-in: the join ran {our_joins} times")

    # -- the in-process pool against Prefect -------------------------------------------------
    steps = 200
    with tempfile.TemporaryDirectory() as folder:
        sqlite_ms = in_process_ms(f"sqlite:///{folder}/wf.db", steps, "bench_pool_sqlite")
    pg_ms = in_process_ms(database_url, steps, "bench_pool_pg")
    prefect = prefect_ms(steps)
    print(f"  pool, {steps}-step chain: SQLite {sqlite_ms:.2f} ms/step, PostgreSQL {pg_ms:.2f}")
    print(f"  Prefect 3, {steps} tasks in a flow: {prefect if prefect else 'not measured'} ms/task")
    pool_rows = [
        f"| {steps} steps in sequence | ms per step | Prefect 3 ÷ this (goal ≥ 5x) |",
        "|---|---:|---:|",
        f"| flow-tracker pool, SQLite | {sqlite_ms:.2f} | "
        f"{_ratio(prefect, sqlite_ms) if prefect else '—'} |",
        f"| flow-tracker pool, PostgreSQL | {pg_ms:.2f} | "
        f"{_ratio(prefect, pg_ms) if prefect else '—'} |",
        f"| Prefect 3 `@task` in a `@flow` (its own SQLite) | "
        f"{f'{prefect:.2f}' if prefect else 'not measured'} | 1.00x |",
    ]
    if prefect and prefect < 5 * pg_ms:
        misses.append(f"pool on PostgreSQL: {prefect / pg_ms:.1f}x Prefect (goal ≥ 5x)")
    if prefect and prefect < 5 * sqlite_ms:
        misses.append(f"pool on SQLite: {prefect / sqlite_ms:.1f}x Prefect (goal ≥ 5x)")

    # -- scale -------------------------------------------------------------------------------
    short = in_process_ms(database_url, 20, "bench_scale_chain_20")
    long = in_process_ms(database_url, 200, "bench_scale_chain_200")
    small, small_joins = fan_out_ms(database_url, 200, "bench_scale_fan_200")
    large, large_joins = fan_out_ms(database_url, 2000, "bench_scale_fan_2000")
    print(
        f"  scale: chain 20 {short:.2f} / 200 {long:.2f} ms/step; "
        f"fan-out 200 {small:.2f} / 2,000 {large:.2f}"
    )
    scale_rows = [
        "| pool on PostgreSQL | small run, ms per step | large run, ms per step | large ÷ small |",
        "|---|---:|---:|---:|",
        f"| chain: 20 / 200 steps | {short:.2f} | {long:.2f} | {_ratio(long, short)} |",
        f"| fan-out: root, 200 / 2,000 leaves, join | {small:.2f} | {large:.2f} | "
        f"{_ratio(large, small)} |",
    ]
    if small_joins != 1 or large_joins != 1:
        misses.append(f"scale: the join ran {small_joins} / {large_joins} times")
    flow_tracker.reset()

    lines = [
        f"Measured {machine_line()} (`python -m benchmarks workflows"
        f"{' --quick' if quick else ''}`), tracking to PostgreSQL.",
        "",
        *handoff_rows,
        "",
        *fan_rows,
        "",
        *pool_rows,
        "",
        *scale_rows,
    ]
    publish("workflows", lines, readme="--readme" in argv)
    for miss in misses:
        print(f"  MISSED: {miss}")
    return 1 if misses else 0
