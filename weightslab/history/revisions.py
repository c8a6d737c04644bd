"""The schema revisions this code knows, read from the packaged Alembic scripts' text (no Alembic, no
SQLAlchemy): what opening a store that is up to date needs, and the read-only tools' direct reader."""

from __future__ import annotations

import functools
import re
from importlib import resources
from pathlib import Path

__all__ = ["head_revision", "migrations_dir"]


def migrations_dir() -> Path:
    """The directory holding ``env.py`` and ``versions/``."""
    return Path(str(resources.files("weightslab.migrations")))


# Alembic is imported only to migrate (and by `weightslab db`): opening a store that is up to date reads the
# revisions from the scripts' text and the stamp from the database, which costs milliseconds instead of the
# ~0.2 s of importing Alembic and compiling every script.
_REVISION = re.compile(r"^revision\s*(?::[^=\n]*)?=\s*['\"]([^'\"]+)['\"]", re.MULTILINE)
_DOWN_REVISION = re.compile(r"^down_revision\s*(?::[^=\n]*)?=\s*(?:None|['\"]([^'\"]+)['\"])", re.MULTILINE)


@functools.cache
def head_revision() -> str:
    """The newest revision this code knows: the one no other revision names as its ``down_revision``.

    Read from the scripts' text; a layout this reading does not recognise (a merge, several heads) is
    left to Alembic. ``tests/history/test_schema.py`` checks that both agree.
    """
    revisions, parents = set(), set()
    for script in (migrations_dir() / "versions").glob("*.py"):
        source = script.read_text(encoding="utf-8")
        revision, down = _REVISION.search(source), _DOWN_REVISION.search(source)
        if revision is None or down is None:
            continue  # __init__.py
        revisions.add(revision.group(1))
        if down.group(1):
            parents.add(down.group(1))
    heads = revisions - parents
    if len(heads) == 1 and parents <= revisions:
        return heads.pop()
    from weightslab.history.migrate import alembic_head

    return alembic_head()
