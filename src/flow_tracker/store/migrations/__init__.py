"""Alembic migrations shipped with flow-tracker."""
