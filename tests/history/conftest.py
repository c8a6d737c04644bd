"""Fixtures of the history tool tests: the CLI tests' recorded store, on each backend."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cli.store_builder import Built, build_store


@pytest.fixture
def built(store_target) -> Iterator[Built]:
    """The history of ``store_builder`` in a fresh store (SQLite and PostgreSQL)."""
    b = build_store(store_target)
    try:
        yield b
    finally:
        b.store.close()
