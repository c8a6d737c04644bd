"""The event log: gap-free seq, hash chain, idempotency, optimistic concurrency."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError as SAIntegrityError

from weightslab.errors import ConcurrencyError, EventPayloadError
from weightslab.history import eventlog


def _append(store, exp_id, n, start=0):
    rows = []
    for i in range(n):
        rows.append(store.append_event(exp_id, "train", {"i": start + i, "steps": 3},
                                       expected_last_seq=start + i))
    return rows


def test_seq_runs_one_two_three_per_experiment(store):
    a = store.create_experiment("a").experiment_id
    b = store.create_experiment("b").experiment_id
    _append(store, a, 3)
    _append(store, b, 2)
    assert [e.seq for e in store.events(a)] == [1, 2, 3]
    assert [e.seq for e in store.events(b)] == [1, 2]
    assert store.last_seq(a) == 3


def test_each_event_hash_covers_previous_hash(store):
    a = store.create_experiment("a").experiment_id
    rows = _append(store, a, 3)
    assert rows[0].prev_hash is None
    assert rows[1].prev_hash == rows[0].hash and rows[2].prev_hash == rows[1].hash
    assert len({r.hash for r in rows}) == 3
    report = store.verify_chain(a)
    assert report.ok and report.events == 3


def test_stale_writer_gets_concurrency_error_and_writes_nothing(store):
    a = store.create_experiment("a").experiment_id
    _append(store, a, 2)
    with pytest.raises(ConcurrencyError, match="another process appended"):
        store.append_event(a, "prune", {"layer_index": 0}, expected_last_seq=1)
    assert store.last_seq(a) == 2


def test_database_refuses_duplicate_seq_written_directly(store):
    a = store.create_experiment("a").experiment_id
    _append(store, a, 1)
    with pytest.raises(SAIntegrityError), store.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO events (experiment_id, seq, prev_seq, kind, payload, created_at, actor, "
            "code_version, hash) VALUES (:e, 1, NULL, 'x', '{}', CURRENT_TIMESTAMP, 'a', 'v', 'h')"
        ), {"e": a})
    assert store.last_seq(a) == 1


def test_database_refuses_gap_in_seq_written_directly(store):
    a = store.create_experiment("a").experiment_id
    _append(store, a, 1)
    with pytest.raises(SAIntegrityError), store.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO events (experiment_id, seq, prev_seq, kind, payload, created_at, actor, "
            "code_version, hash) VALUES (:e, 3, 2, 'x', '{}', CURRENT_TIMESTAMP, 'a', 'v', 'h')"
        ), {"e": a})
    assert store.last_seq(a) == 1


def test_retried_append_with_same_idempotency_key_is_not_duplicated(store):
    a = store.create_experiment("a").experiment_id
    first = store.append_event(a, "dump", {"id": 0}, expected_last_seq=0, idempotency_key="k-1")
    again = store.append_event(a, "dump", {"id": 0}, expected_last_seq=0, idempotency_key="k-1")
    assert again.seq == first.seq == 1 and again.hash == first.hash
    assert store.last_seq(a) == 1


def test_non_json_payload_is_refused_before_any_write(store):
    a = store.create_experiment("a").experiment_id
    with pytest.raises(EventPayloadError, match=r"payload\.obj is a object"):
        store.append_event(a, "train", {"obj": object()}, expected_last_seq=0)
    with pytest.raises(EventPayloadError, match="finite"):
        store.append_event(a, "train", {"x": float("nan")}, expected_last_seq=0)
    assert store.last_seq(a) == 0


def test_verify_names_first_edited_event(store):
    a = store.create_experiment("a").experiment_id
    _append(store, a, 4)
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE events SET kind = 'prune' WHERE experiment_id = :e AND seq = 3"), {"e": a})
    report = store.verify_chain(a)
    assert not report.ok and report.first_bad_seq == 3 and "edited" in report.reason


def test_verify_names_first_edited_payload(store):
    a = store.create_experiment("a").experiment_id
    _append(store, a, 3)
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE events SET payload = :p WHERE experiment_id = :e AND seq = 2"),
                     {"e": a, "p": '{"i": 99, "steps": 3}'})
    assert store.verify_chain(a).first_bad_seq == 2


def test_verify_detects_deleted_last_and_middle_events(store):
    a = store.create_experiment("a").experiment_id
    _append(store, a, 4)
    # delete the way an attacker with raw DB access could: around the gap-free guard
    if store.location.backend == "sqlite":
        import sqlite3

        raw = sqlite3.connect(store.location.url.database)
        raw.execute("DELETE FROM events WHERE experiment_id = ? AND seq = 2", (a,))
        raw.commit()
        raw.close()
    else:
        with store.engine.begin() as conn:
            conn.execute(text("ALTER TABLE events DROP CONSTRAINT fk_events_prev_seq_events"))
            conn.execute(text("DELETE FROM events WHERE experiment_id = :e AND seq = 2"), {"e": a})
    report = store.verify_chain(a)
    assert not report.ok and report.first_bad_seq == 2 and "missing" in report.reason


def test_chain_hash_is_stable_across_reads(store):
    a = store.create_experiment("a").experiment_id
    store.append_event(a, "deny", {"ids": [5, 1, 3], "x": 0.1, "note": "é"}, expected_last_seq=0)
    with store.reading() as conn:
        rows = eventlog.read_events(conn, a)
    assert rows[0].payload == {"ids": [5, 1, 3], "x": 0.1, "note": "é"}
    assert store.verify_chain(a).ok


def test_a_seq_taken_at_insert_time_is_a_concurrency_error_and_the_transaction_stays_usable(store, monkeypatch):
    """Two writers that read the same last seq race to insert it: the loser gets ConcurrencyError,
    writes nothing, and the caller's transaction can go on (SQLite undoes the failed statement,
    PostgreSQL needs a savepoint)."""
    from sqlalchemy import literal, select

    a = store.create_experiment("a").experiment_id
    _append(store, a, 2)
    with store.transaction() as conn:
        real = eventlog._LAST
        # what the loser of the race saw: seq 1 as the last one (the winner has just written seq 2)
        monkeypatch.setattr(eventlog, "_LAST", select(literal(1).label("seq"), literal(None).label("hash")))
        with pytest.raises(ConcurrencyError, match="at the same time"):
            eventlog.append_event(conn, a, "prune", {"layer_index": 0}, expected_last_seq=1)
        monkeypatch.setattr(eventlog, "_LAST", real)
        eventlog.append_event(conn, a, "eval", {"ok": True}, expected_last_seq=2)
    assert [e.kind for e in store.events(a)] == ["train", "train", "eval"]
    assert store.verify_chain(a).ok
