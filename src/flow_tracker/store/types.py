"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

SQLITE_DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


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
        if isinstance(value, str):  # raw SQL on SQLite returns the stored text
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)  # type: ignore[no-any-return]
        return value.astimezone(timezone.utc)  # type: ignore[no-any-return]


def int_list_type() -> TypeEngine[Any]:
    """A list of integers: a native ``bigint[]`` on PostgreSQL (unnested in SQL), JSON elsewhere."""
    return JSON().with_variant(ARRAY(BigInteger), "postgresql")


def json_type() -> TypeEngine[Any]:
    """JSONB on PostgreSQL (indexable with GIN), JSON text elsewhere; Python None is SQL NULL."""
    return JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
