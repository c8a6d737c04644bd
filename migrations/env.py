"""Alembic environment for a WeightsLab store.

Used two ways: by WeightsLab itself (``weightslab.history.migrate``), which passes
an open connection in ``config.attributes["connection"]``; and by the ``alembic``
command from a checkout (``[tool.alembic]`` in pyproject.toml), where the store
comes from ``$WEIGHTSLAB_STORE`` (a directory or a SQLAlchemy URL; default ./store).
"""

from alembic import context

from weightslab.history.schema import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from weightslab.history.locate import resolve_store, make_engine

    location = resolve_store(None)
    engine = make_engine(location)
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("WeightsLab migrations run online only: point $WEIGHTSLAB_STORE at the store.")
run_migrations_online()
