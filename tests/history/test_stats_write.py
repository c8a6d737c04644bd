"""The statistics write on both backends: the table holds exactly the ledger's values (nulls included),
a write is all or nothing, and on PostgreSQL the binary COPY writes what a plain INSERT of the same
values writes and ``sample_stats`` keeps room on its pages for in-place (HOT) updates (revision 0006)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch
from sqlalchemy import insert, text
from torch import optim

from weightslab.errors import StoreError
from weightslab.history.schema import SampleStat
from weightslab.history.stats import PG_ROWS_PER_PIECE, SAMPLE_COLUMNS, upsert_sample_stats


@pytest.fixture(params=["on_conflict", "hash_join"])
def merge(request, monkeypatch) -> str:
    """PostgreSQL merges a write of fewer than PG_HASH_MERGE_ROWS rows with ON CONFLICT, a larger one with a
    hash join: each test runs both at a small size."""
    from weightslab.history import stats

    monkeypatch.setattr(stats, "PG_HASH_MERGE_ROWS", 10**9 if request.param == "on_conflict" else 1)
    return request.param


_SELECT = f"SELECT {', '.join(SAMPLE_COLUMNS)} FROM sample_stats WHERE experiment_id = :e AND split = :s ORDER BY sample_id"


def _table(store: Any, experiment_id: int, split: str) -> list[tuple]:
    """The split's rows as Python tuples (NULL is None, booleans as bool), in sample id order."""
    with store.reading() as conn:
        rows = conn.execute(text(_SELECT), {"e": experiment_id, "s": split}).all()
    deny = SAMPLE_COLUMNS.index("deny_listed")
    return [tuple(bool(v) if j == deny else v for j, v in enumerate(r)) for r in rows]


def _expected(columns: dict[str, np.ndarray]) -> list[tuple]:
    """What a row of ``columns`` must read back as: NaN is NULL, integers are ints, losses the float64 of the
    value given (float32 losses widen exactly)."""
    out = []
    for i in np.argsort(np.asarray(columns["sample_id"]), kind="stable").tolist():
        row = []
        for c in SAMPLE_COLUMNS:
            v = np.asarray(columns[c])[i]
            if c == "deny_listed":
                row.append(bool(v))
            elif isinstance(v, np.floating) and np.isnan(v):
                row.append(None)
            elif c == "prediction_loss":
                row.append(float(v))
            else:
                row.append(int(v))
        out.append(tuple(row))
    return out


def _tricky(n: int, seed: int) -> dict[str, np.ndarray]:
    """Rows with every pattern of nulls and the values a binary encoding could get wrong: negative and huge
    integers, -0.0, infinities, subnormals, float32 losses."""
    rng = np.random.default_rng(seed)
    loss = rng.random(n).astype(np.float32) * 10
    loss[1::11] = -0.0
    loss[2::13] = np.inf
    loss[3::17] = np.float32(1e-40)  # subnormal
    age = rng.integers(-(2**52), 2**52, n).astype(np.float64)
    pred = rng.integers(-(2**31), 2**31 - 1, n).astype(np.float64)
    label = rng.integers(0, 1000, n).astype(np.float64)
    for j, col in enumerate((age, loss, pred, label)):  # nulls in different rows per column: many patterns
        col[j::(5 + j)] = np.nan
    return dict(sample_id=rng.permutation(n) + 2**40, prediction_age=age, prediction_loss=loss,
                exposure_amount=rng.integers(0, 2**31 - 1, n, dtype=np.int32), deny_listed=rng.random(n) < 0.3,
                prediction=pred, label=label)


def test_upsert_reads_back_exactly_with_every_pattern_of_nulls(store, merge):
    """Across piece boundaries of the COPY stream (PostgreSQL) and of multi-row statements (SQLite)."""
    n = PG_ROWS_PER_PIECE + 1000
    e = store.create_experiment("x").experiment_id
    first, second = _tricky(n, 0), _tricky(n, 1)
    second["sample_id"] = first["sample_id"]  # the same samples, new values: every row updated
    with store.transaction() as conn:
        assert upsert_sample_stats(conn, e, "train", first) == n
    assert _table(store, e, "train") == _expected(first)
    with store.transaction() as conn:
        upsert_sample_stats(conn, e, "train", second)
    assert _table(store, e, "train") == _expected(second)


def test_upsert_writes_what_a_plain_insert_of_the_same_values_writes(store, merge):
    """The oracle: SQLAlchemy's row-by-row INSERT of Python values (None for NaN) into another experiment."""
    cols = _tricky(3000, 2)
    a, b = (store.create_experiment(name).experiment_id for name in ("bulk", "plain"))
    with store.transaction() as conn:
        upsert_sample_stats(conn, a, "eval", cols)
        rows = [dict(zip(SAMPLE_COLUMNS, r, strict=True), experiment_id=b, split="eval") for r in _expected(cols)]
        conn.execute(insert(SampleStat), rows)
    assert _table(store, a, "eval") == _table(store, b, "eval")


@contextmanager
def updates_refused(store: Any, sample_id: int) -> Iterator[None]:
    """A trigger that makes the database refuse to update the row of ``sample_id``, while the block runs."""
    sqlite = store.engine.dialect.name == "sqlite"
    with store.engine.begin() as conn:
        if sqlite:
            conn.execute(text(f"CREATE TRIGGER wl_refuse BEFORE UPDATE ON sample_stats WHEN NEW.sample_id = {sample_id} "
                              "BEGIN SELECT RAISE(ABORT, 'injected: the disk refused the row'); END"))
        else:
            conn.execute(text("CREATE FUNCTION wl_refuse() RETURNS trigger AS $$ BEGIN "
                              "RAISE EXCEPTION 'injected: the disk refused the row'; END $$ LANGUAGE plpgsql"))
            conn.execute(text(f"CREATE TRIGGER wl_refuse BEFORE UPDATE ON sample_stats FOR EACH ROW "
                              f"WHEN (NEW.sample_id = {sample_id}) EXECUTE FUNCTION wl_refuse()"))
    try:
        yield
    finally:
        with store.engine.begin() as conn:
            conn.execute(text("DROP TRIGGER wl_refuse" if sqlite else "DROP TRIGGER wl_refuse ON sample_stats"))
            if not sqlite:
                conn.execute(text("DROP FUNCTION wl_refuse()"))


def test_a_write_refused_midway_leaves_every_previous_row_and_the_next_write_works(store, merge):
    """Two splits in one transaction; the database refuses a row of the second split half-way through it."""
    n = 2000
    e = store.create_experiment("x").experiment_id
    old = {"train": _tricky(n, 3), "eval": _tricky(n, 4)}
    new = {s: {**_tricky(n, 5), "sample_id": old[s]["sample_id"]} for s in old}
    store.write_sample_rows(e, list(old.items()))
    middle = int(np.sort(old["eval"]["sample_id"])[n // 2])
    with updates_refused(store, middle), pytest.raises(StoreError, match="injected: the disk refused the row"):
        store.write_sample_rows(e, list(new.items()))
    for split in old:
        assert _table(store, e, split) == _expected(old[split]), split
    store.write_sample_rows(e, list(new.items()))
    for split in new:
        assert _table(store, e, split) == _expected(new[split]), split


@pytest.mark.postgres
def test_an_integer_out_of_its_columns_range_is_refused_not_wrapped(pg_url, merge):
    """Integer columns are staged as bigint: 2^40 in the ``integer`` column exposure_amount is an error (as it
    was with text COPY), and the transaction writes nothing."""
    from weightslab.history.store import Store

    with Store.open(pg_url) as store:
        e = store.create_experiment("x").experiment_id
        cols = _tricky(100, 6)
        store.write_sample_rows(e, [("train", cols)])
        bad = {**cols, "exposure_amount": np.full(100, 2**40, np.int64)}
        with pytest.raises(StoreError, match="out of range"):
            store.write_sample_rows(e, [("train", bad)])
        assert _table(store, e, "train") == _expected(cols)


@pytest.mark.postgres
def test_sample_stats_keeps_room_on_its_pages_from_revision_0006_and_loses_it_on_downgrade(pg_url):
    from alembic import command

    from weightslab.history import migrate
    from weightslab.history.store import Store

    query = text("SELECT reloptions FROM pg_class WHERE oid = 'sample_stats'::regclass")
    with Store.open(pg_url) as store:
        with store.engine.connect() as conn:
            assert conn.execute(query).scalar() == ["fillfactor=40"]
        with store.engine.begin() as conn:
            command.downgrade(migrate.alembic_config(conn), "0005")
            assert conn.execute(query).scalar() is None
        with store.engine.begin() as conn:
            command.upgrade(migrate.alembic_config(conn), "head")
            assert conn.execute(query).scalar() == ["fillfactor=40"]


@pytest.fixture(scope="module")
def digits():
    from weightslab.demo import digits_datasets

    return digits_datasets()


def test_table_equals_both_ledgers_from_creation_and_after_training(store_target, digits, tmp_path):
    """SPEC §6: every sample of both splits has a row from creation (its statistics null until seen); after
    training and an evaluation the table holds exactly what the ledgers hold."""
    from weightslab import Experiment
    from weightslab.demo import MNISTModel
    from weightslab.history.store import Store

    torch.manual_seed(0)
    train_ds, eval_ds = digits
    exp = Experiment(model=MNISTModel(), optimizer_class=optim.Adam, train_dataset=train_ds, eval_dataset=eval_ds,
                     device="cpu", learning_rate=1e-2, batch_size=64, name="x", store=store_target,
                     tensorboard_dir=str(tmp_path / "tb"))
    try:
        def check(expect_nulls: bool) -> None:
            exp.flush()
            with Store.open(store_target, read_only=True) as store:
                eid = store.get_experiment("x").experiment_id
                for name, loader in (("train", exp.train_loader), ("eval", exp.eval_loader)):
                    stats = loader.dataset.stats
                    held = stats.rows(np.arange(stats.size))
                    assert _table(store, eid, name) == _expected(held), name
                    assert np.isnan(held["prediction_loss"]).any() == expect_nulls, name

        check(expect_nulls=True)
        exp.train_n_steps(5)
        exp.eval_n_steps(3)
        check(expect_nulls=True)  # most samples still unseen
        exp.eval_full()
        exp.train_n_steps(-(-len(train_ds) // 64))  # a full epoch: every training sample seen
        check(expect_nulls=False)
    finally:
        exp.close()
        exp.store.close()


@pytest.mark.postgres
def test_the_hash_join_merge_restores_the_planner_settings_of_the_transaction(pg_url, monkeypatch):
    """The statements after a large write in the same transaction (the event, snapshots) plan as before."""
    from weightslab.history import stats
    from weightslab.history.store import Store

    monkeypatch.setattr(stats, "PG_HASH_MERGE_ROWS", 1)
    names = ("enable_nestloop", "enable_mergejoin", "work_mem")
    with Store.open(pg_url) as store:
        e = store.create_experiment("x").experiment_id
        with store.transaction() as conn:
            conn.execute(text("SET LOCAL work_mem = '5MB'"))
            before = [conn.execute(text(f"SHOW {k}")).scalar() for k in names]
            upsert_sample_stats(conn, e, "train", _tricky(500, 7))
            upsert_sample_stats(conn, e, "train", _tricky(500, 8))
            assert [conn.execute(text(f"SHOW {k}")).scalar() for k in names] == before == ["on", "on", "5MB"]
