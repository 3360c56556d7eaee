"""Ids: time-ordered UUIDv7, unique even when user code seeds ``random`` or forks."""

from __future__ import annotations

import os
import random
import time
import uuid

from flow_tracker.ids import new_id, new_id_int, to_hex

RANDOM_BITS = (1 << 74) - 1


def _random_part(value: int) -> int:
    return ((value >> 64) & 0xFFF) << 62 | (value & ((1 << 62) - 1))


def test_ids_are_uuid7_and_ordered_by_time() -> None:
    first = new_id()
    time.sleep(0.002)
    second = new_id()
    assert first.version == 7 and first.variant == uuid.RFC_4122
    assert first < second
    assert to_hex(first.int) == first.hex


def test_seeding_the_global_random_module_does_not_repeat_ids() -> None:
    random.seed(7)
    a = new_id_int()
    random.seed(7)
    b = new_id_int()
    assert _random_part(a) != _random_part(b)


def test_forked_child_draws_other_ids_than_its_parent() -> None:
    new_id_int()  # make sure the generator exists before the fork
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.write(write_end, str(_random_part(new_id_int())).encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    child = int(os.read(read_end, 100))
    os.close(read_end)
    assert child != _random_part(new_id_int())


def test_a_million_ids_do_not_collide() -> None:
    ids = {new_id_int() for _ in range(1_000_000)}
    assert len(ids) == 1_000_000
