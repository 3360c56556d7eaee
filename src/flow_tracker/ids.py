"""Time-ordered ids (UUIDv7, RFC 9562) made cheaply enough for the hot path.

Ids are produced as plain integers, because building a :class:`uuid.UUID` costs
about a microsecond; the background writer turns them into their database form.
The 48-bit millisecond timestamp in front keeps new rows at the right edge of
the primary-key index, which is what makes UUIDv7 better than uuid4 for inserts.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
import uuid
from datetime import datetime, timezone

_VERSION_AND_VARIANT = (0x7 << 76) | (0b10 << 62)
_RANDOM_MASK = ((1 << 76) - 1) & ~(0b11 << 62)


# A generator of our own, seeded from the OS: user code that seeds the global
# random module (tests, simulations) must never make our ids repeat. A forked
# child reseeds it, or parent and child would draw the same bits. A PRNG, not
# os.urandom: ids must be unique, not secret, and this is 4x cheaper.
_rng = random.Random()
os.register_at_fork(after_in_child=_rng.seed)
_random_bits = _rng.getrandbits
_time_ns = time.time_ns


def new_id_int() -> int:
    """Return a fresh UUIDv7 as a 128-bit integer."""
    # 76 random bits in place (rand_a above bit 64, rand_b below bit 62); the two
    # bits between them are cleared for the variant. Every job step makes two ids.
    rand = _random_bits(76) & _RANDOM_MASK
    return ((_time_ns() // 1_000_000) << 80) | _VERSION_AND_VARIANT | rand


def new_id() -> uuid.UUID:
    """Return a fresh UUIDv7."""
    return uuid.UUID(int=new_id_int())


def id_floor(moment: datetime) -> uuid.UUID:
    """The smallest UUIDv7 of ``moment``'s millisecond: ids made from then on are not smaller.

    A naive ``moment`` is taken as UTC.
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    ms = int(moment.timestamp() * 1000)
    return uuid.UUID(int=max(ms, 0) << 80)


def to_hex(value: int) -> str:
    """Return the 32-digit hex form of an id, as stored in SQLite and accepted by PostgreSQL."""
    return f"{value:032x}"


def to_text(value: int) -> str:
    """Return an id as text: ``str(uuid.UUID(int=value))`` at about half the cost."""
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def parse_id(value: object) -> uuid.UUID | None:
    """Return ``value`` as a UUID when it is one (a UUID or its text form), else None."""
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            return None
    return None


# Fixed forever: changing it would give every queued job a new process id.
JOB_NAMESPACE = uuid.UUID("6f1c5b8e-2f4a-5d0e-9c41-7a3f0e2b9d15")


def process_id_for(job_system: str, job_id: str) -> uuid.UUID:
    """The process id of a queued job: the same in every process that sees the job.

    Derived from the job's system and id (UUIDv5), so the enqueuing process, every
    retry and every worker agree on the row without carrying anything in the message.
    """
    name = f"{job_system}:{job_id}"
    try:
        return uuid.uuid5(JOB_NAMESPACE, name)
    except UnicodeEncodeError:
        # A job id with a lone surrogate (decoded with surrogateescape): its bytes
        # as Python keeps them, hashed as uuid5 hashes any name (the same id everywhere).
        digest = hashlib.sha1(JOB_NAMESPACE.bytes + name.encode("utf-8", "surrogatepass"))
        return uuid.UUID(bytes=digest.digest()[:16], version=5)
