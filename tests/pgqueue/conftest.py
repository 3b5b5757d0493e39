"""Fixtures of the queue's own suite."""

from __future__ import annotations

import pytest

from pgqueue import migrate as migrations


@pytest.fixture
def components() -> list[migrations.MigrationSet]:
    """The queue's suites need the queue's tables only (half the time of a fresh schema)."""
    return [migrations.PGQUEUE]
