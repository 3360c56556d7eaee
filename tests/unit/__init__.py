"""Tests that need no database service and no worker: ``make test-unit`` (seconds)."""
