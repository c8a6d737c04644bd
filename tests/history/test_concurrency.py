"""Several processes writing to one store at once."""

from __future__ import annotations

import multiprocessing as mp

from weightslab.errors import ConcurrencyError
from weightslab.history.store import Store

CTX = mp.get_context("spawn")


def _race(target: str, exp_id: int, barrier, results) -> None:
    with Store.open(target) as s:
        expected = s.last_seq(exp_id)
        barrier.wait()
        try:
            s.append_event(exp_id, "train", {"who": mp.current_process().name}, expected_last_seq=expected)
            results.put("ok")
        except ConcurrencyError:
            results.put("conflict")


def _writer(target: str, name: str, n: int, results) -> None:
    """Append n events to its own experiment, retrying on conflict like a real client."""
    with Store.open(target) as s:
        exp = s.find_experiment(name) or s.create_experiment(name)
        done = 0
        while done < n:
            try:
                s.append_event(exp.experiment_id, "train", {"i": done},
                               expected_last_seq=s.last_seq(exp.experiment_id))
                done += 1
            except ConcurrencyError:
                continue
        results.put(done)


def test_two_writers_claiming_the_same_seq_one_conflicts_cleanly(store_target):
    with Store.open(store_target) as s:
        exp_id = s.create_experiment("shared").experiment_id
    barrier, results = CTX.Barrier(2), CTX.Queue()
    procs = [CTX.Process(target=_race, args=(store_target, exp_id, barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    outcomes = sorted(results.get(timeout=5) for _ in procs)
    assert outcomes == ["conflict", "ok"]
    with Store.open(store_target) as s:
        assert [e.seq for e in s.events(exp_id)] == [1]
        assert s.verify_chain(exp_id).ok


def test_four_processes_write_different_experiments_without_lock_errors(store_target):
    Store.open(store_target).close()
    results = CTX.Queue()
    procs = [CTX.Process(target=_writer, args=(store_target, f"exp{i}", 25, results)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert sorted(results.get(timeout=5) for _ in procs) == [25] * 4
    with Store.open(store_target) as s:
        for e in s.list_experiments():
            assert [ev.seq for ev in s.events(e.experiment_id)] == list(range(1, 26))
            assert s.verify_chain(e.experiment_id).ok


def test_an_open_read_neither_blocks_a_writer_nor_sees_its_uncommitted_rows(tmp_path):
    """On SQLite, Store.reading() takes no write lock (a deferred BEGIN in WAL mode)."""
    import threading

    target = str(tmp_path / "s")
    with Store.open(target) as reader, Store.open(target) as writer:
        exp = writer.create_experiment("r").experiment_id
        with reader.reading() as conn:
            assert reader.last_seq(exp) == 0
            conn.exec_driver_sql("SELECT COUNT(*) FROM events").all()  # the read transaction is open now
            done = threading.Event()

            def write() -> None:
                writer.append_event(exp, "train", {"i": 1}, expected_last_seq=0)
                done.set()

            thread = threading.Thread(target=write)
            thread.start()
            assert done.wait(10), "the writer waited for an open read"
            thread.join()
            # the open read keeps its snapshot; a new one sees the event
            assert conn.exec_driver_sql("SELECT COUNT(*) FROM events").scalar() == 0
        assert reader.last_seq(exp) == 1
