"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine


def as_utc(value: datetime | str) -> datetime:
    """A stored moment as timezone-aware UTC: the one place that makes a datetime aware.

    Columns typed :class:`UTCDateTime` come back aware already; this is for the
    values that bypass the type (aggregates such as ``min()``, raw driver SQL,
    SQLite text).
    """
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python.

    PostgreSQL stores ``timestamptz``. SQLite has no date type: values are kept as
    naive UTC text in SQLAlchemy's own format (which sorts as time does), and this
    type puts the UTC zone back on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Make ``value`` aware (naive UTC on SQLite)."""
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        if dialect.name == "sqlite":
            return value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        """Return ``value`` as an aware UTC datetime."""
        if value is None:
            return None
        return as_utc(value)  # raw SQL on SQLite returns the stored text


def int_list_type() -> TypeEngine[Any]:
    """A list of integers: a native ``bigint[]`` on PostgreSQL (unnested in SQL), JSON elsewhere."""
    return JSON().with_variant(ARRAY(BigInteger), "postgresql")


def json_type() -> TypeEngine[Any]:
    """JSONB on PostgreSQL (indexable with GIN), JSON text elsewhere; Python None is SQL NULL."""
    return JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
