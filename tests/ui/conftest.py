"""Fixtures of the UI tests: stores made by the demo, a server, and a real browser.

The browser is the machine's Chromium (``/usr/bin/chromium``, Debian's package, which
``.ci/run`` installs) driven by the Python Playwright client; nothing is downloaded
when the tests run. Where Chromium or Playwright is missing the browser tests skip
with the reason, except in CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from ui_helpers import finish_demo, start_demo

PG_URL = os.environ.get("WEIGHTSLAB_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

CHROMIUM = os.environ.get("WEIGHTSLAB_TEST_CHROMIUM", "/usr/bin/chromium")
# Headless, and no connection of its own (the network is closed: without these, Chromium's background
# requests are refused and clutter the console).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions"]


def _browser_problem() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Playwright client is not installed (pip install -e '.[dev]')"
    if not (shutil.which(CHROMIUM) or Path(CHROMIUM).exists()):
        return f"Chromium is not at {CHROMIUM} (apt-get install chromium; .ci/run does it)"
    return None


def require_browser() -> None:
    problem = _browser_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests: {problem}")
        pytest.skip(f"skipping browser test: {problem}")


@dataclass
class DemoStores:
    """Stores written by ``python -m weightslab.demo``: ``sqlite`` (experiment ``demo``: three checkpoints, two
    branches from checkpoint 0, and a small experiment ``other-run`` beside it) and ``postgres`` (experiment
    ``demo-pg``, in a schema of its own; None with the reason in ``postgres_problem`` where no server answers)."""

    sqlite: str
    postgres: str | None
    postgres_problem: str | None


@pytest.fixture(scope="session")
def demo_stores(tmp_path_factory) -> Iterator[DemoStores]:
    """Both demo stores, written at the same time: the demo takes ~15 s, mostly on one core."""
    from weightslab.events.domain import StepsTrained
    from weightslab.history.store import Store

    root = tmp_path_factory.mktemp("demo")
    sqlite = str(root / "store")
    schema, problem = _pg_schema()
    runs = [start_demo(sqlite, "demo", root)]
    if schema is not None:
        runs.append(start_demo(schema[1], "demo-pg", root))
    try:
        for run in runs:
            finish_demo(run)
        with Store.open(sqlite) as s:
            other = s.create_experiment("other-run", config={"config": {"learning_rate": 0.5, "batch_size": 8}})
            event = StepsTrained(steps=1, age_before=0, age_after=8, loss=2.0, accuracy=0.1)
            s.append_event(other.experiment_id, event.kind, event.to_payload(), expected_last_seq=0)
        yield DemoStores(sqlite, schema[1] if schema else None, problem)
    finally:
        if schema is not None:
            _drop_pg_schema(schema[0])


@pytest.fixture(scope="session")
def demo_store(demo_stores) -> str:
    return demo_stores.sqlite


def _pg_schema() -> tuple[tuple[str, str] | None, str | None]:
    """A fresh PostgreSQL schema (name, URL) for the demo, or None and why (as tests/conftest.py: the
    server of $WEIGHTSLAB_TEST_PG)."""
    try:
        import psycopg
        from sqlalchemy.engine import make_url

        url = make_url(PG_URL)
        name = f"wl_ui_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(host=url.host, port=url.port or 5432, user=url.username, dbname=url.database,
                             connect_timeout=3, autocommit=True) as c:
            c.execute(f'CREATE SCHEMA "{name}"')
    except Exception as e:  # noqa: BLE001 - any failure means "no server here"
        return None, f"PostgreSQL at {PG_URL} is not reachable ({e.__class__.__name__}: {e})"
    return (name, f"{PG_URL}?options={quote(f'-csearch_path={name}')}"), None


def _drop_pg_schema(name: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(PG_URL)
    with psycopg.connect(host=url.host, port=url.port or 5432, user=url.username, dbname=url.database,
                         autocommit=True) as c:
        c.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture(scope="session")
def chromium() -> Iterator[object]:
    """The headless Chromium browser (one for the session)."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(chromium, tmp_path) -> Iterator[object]:
    """A fresh browser page that records console errors and uncaught exceptions (``page.problems``) and
    refuses any dialog (an ``alert`` means a script from the store ran)."""
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    problems: list[str] = []
    pg.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))

    def dialog(d) -> None:
        problems.append(f"dialog: {d.message}")
        d.dismiss()

    pg.on("dialog", dialog)
    pg.problems = problems
    pg.shots = tmp_path
    try:
        yield pg
    finally:
        context.close()
