"""Fixtures of the reliability tests: a fork server and a module-wide store per backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from reliability_client import ForkServer

ROOT_CONFTEST = Path(__file__).parents[1] / "conftest.py"


def _root_conftest(request: pytest.FixtureRequest) -> Any:
    """tests/conftest.py (its PostgreSQL helpers: skip locally, fail in CI)."""
    plugin = request.config.pluginmanager.get_plugin(str(ROOT_CONFTEST))
    assert plugin is not None, f"{ROOT_CONFTEST} is not loaded"
    return plugin


@pytest.fixture(scope="module")
def forkserver(tmp_path_factory) -> Iterator[ForkServer]:
    """A process that forks experiment workers on demand (see ``reliability_harness.py``)."""
    server = ForkServer(tmp_path_factory.mktemp("forkserver"))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def module_store_target(request, tmp_path_factory) -> Iterator[str]:
    """Like ``store_target``, but shared by a module's tests (a fresh directory / PostgreSQL schema)."""
    if request.param == "sqlite":
        yield str(tmp_path_factory.mktemp("store") / "store")
        return
    root = _root_conftest(request)
    root.require_postgres()
    schema = root.PgSchema()
    try:
        yield schema.url
    finally:
        schema.drop()
