"""Schema versions: bring a new store to head, refuse a store at another version.

The Alembic scripts ship inside the package as ``weightslab.migrations`` (the
top-level ``migrations/`` folder of a checkout), so an installed wheel can
upgrade a store without the source tree. A SQLite store passes SQLite's
``quick_check`` before it is upgraded: migrating a damaged file would spread
the damage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect, text

from weightslab.errors import SchemaVersionError, StoreError, StoreUnavailableError
from weightslab.history.locate import MISSING_STORE_HINT
from weightslab.history.revisions import head_revision, migrations_dir

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["alembic_config", "alembic_head", "check_integrity", "current_revision", "ensure_schema", "head_revision",
           "migrations_dir", "upgrade"]

UPGRADE_HINT = "weightslab db upgrade --store {store}"
_PG_MIGRATION_LOCK = 0x57_4C_41_42  # "WLAB": serialises first-time migrations on one server


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic Config pointing at the packaged migrations (and a live connection)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def alembic_head() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the packaged migrations have no head revision"
    return head


def current_revision(connection: Connection) -> str | None:
    """The revision stamped in the database (Alembic's ``alembic_version`` table, read directly), or None
    for a database never migrated.

    Raises:
        SchemaVersionError: the table holds several revisions (branches WeightsLab never creates).
    """
    if not inspect(connection).has_table("alembic_version"):
        return None
    stamped = list(connection.execute(text("SELECT version_num FROM alembic_version")).scalars())
    if len(stamped) > 1:
        raise SchemaVersionError(f"the database is stamped with several schema revisions ({', '.join(stamped)}); "
                                 "WeightsLab's migrations are linear: this store was migrated by another tool")
    return stamped[0] if stamped else None


def check_integrity(engine: Engine, store_description: str) -> None:
    """Refuse a damaged SQLite database (``PRAGMA quick_check``); PostgreSQL checks its own pages.

    ``quick_check`` reads every page of the file once (seconds per GiB): it runs
    before an upgrade and for ``weightslab db current``, not on every open.

    Raises:
        StoreError: the check found a problem (the message names the first one).
    """
    if engine.dialect.name != "sqlite":
        return
    with engine.connect() as conn:
        problems = [" ".join(str(row[0]).split()) for row in conn.exec_driver_sql("PRAGMA quick_check")]
        conn.rollback()
    if problems != ["ok"]:
        raise StoreError(
            f"store {store_description} is damaged: SQLite's quick_check found {len(problems)} problem(s), "
            f"the first: {problems[0]}. Nothing was changed; restore the store from a backup (or salvage "
            "what is readable with `sqlite3 weightslab.db .recover`), then run `weightslab audit`."
        )


def upgrade(engine: Engine, store_description: str | None = None) -> tuple[str | None, str]:
    """Check the database's integrity, then upgrade it to head; returns (revision before, revision after).

    Raises:
        StoreError: a SQLite file that fails ``quick_check`` (nothing is migrated).
    """
    check_integrity(engine, store_description or engine.url.render_as_string(hide_password=True))
    from alembic import command

    with engine.begin() as conn:
        _lock(conn)
        before = current_revision(conn)
        command.upgrade(alembic_config(conn), "head")
        return before, current_revision(conn) or ""


def ensure_schema(engine: Engine, store_description: str, *, create: bool = True) -> None:
    """Create the schema in an empty database (if ``create``); refuse one at another revision.

    Raises:
        StoreUnavailableError: ``create`` is False and the database has no
            WeightsLab schema (nothing is written).
        SchemaVersionError: the database was migrated to an older revision (the
            message names the upgrade command) or to one this code does not know
            (written by a newer WeightsLab), or holds foreign tables but no
            WeightsLab schema.
    """
    head = head_revision()
    with engine.connect() as conn:
        current = current_revision(conn)
        conn.rollback()
    if current == head:
        return
    if current is None and not create:
        raise StoreUnavailableError(
            f"no WeightsLab store at {store_description}: the database has no WeightsLab schema; "
            f"{MISSING_STORE_HINT}"
        )
    if current is None:
        with engine.begin() as conn:
            _lock(conn)
            current = current_revision(conn)  # another process may have won the race
            if current is None:
                existing = set(inspect(conn).get_table_names()) & _our_tables()
                if existing:
                    raise SchemaVersionError(
                        f"store {store_description} has WeightsLab tables ({', '.join(sorted(existing))}) "
                        "but no schema version; it was not created by WeightsLab's migrations. "
                        "Use an empty database or a new store directory."
                    )
                from alembic import command

                command.upgrade(alembic_config(conn), "head")
                return
    if current == head:
        return
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    known = {rev.revision for rev in script.walk_revisions()}
    if current in known:
        raise SchemaVersionError(
            f"store {store_description} has schema revision {current}, older than this "
            f"WeightsLab's {head}. Back it up, then run: {UPGRADE_HINT.format(store=store_description)}"
        )
    raise SchemaVersionError(
        f"store {store_description} has schema revision {current}, which this WeightsLab "
        f"(head {head}) does not know: it was written by a newer version. Upgrade the "
        "package (pip install -U weightslab) rather than the store."
    )


def _our_tables() -> set[str]:
    from weightslab.history.schema import Base

    return set(Base.metadata.tables)


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
