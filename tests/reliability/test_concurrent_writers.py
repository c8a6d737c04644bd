"""Several processes writing to one store at once: no lock errors, no lost or duplicated events.

Workers are real processes (forked by ``reliability_harness.py``) running
whole experiments: training, evaluation, edits, deny/allow, dumps, loads and
snapshots, with their background statistics writers, on a store none of them
created beforehand (so they also race to create its schema).
"""

from __future__ import annotations

import re
import time

import pytest
from reliability_checks import check_store

from weightslab.history.store import Store

WRITERS = 4
OPS = 30
EDITS = 60
SAME_STEPS = 10


def _finish_all(forkserver, tags: list[str], timeout: float = 300) -> dict[str, dict]:
    finished: dict[str, dict] = {}
    while len(finished) < len(tags):
        ev = forkserver.wait_for(lambda e: e["ev"] == "finished" and e["tag"] in tags, timeout=timeout)
        finished[ev["tag"]] = ev
    for tag in tags:
        assert forkserver.wait_exit(tag)["code"] == 0
    return finished


@pytest.mark.slow
@pytest.mark.parametrize("script", ["mixed", "edits"])
def test_processes_writing_different_experiments_to_one_store_never_see_a_lock_error(
        forkserver, store_target, tmp_path, request, script):
    """``mixed``: the whole API (training included); ``edits``: per-neuron lr changes, the cheapest event."""
    tags = [f"writer{i}" for i in range(WRITERS)]
    started = time.monotonic()
    for i, tag in enumerate(tags):
        forkserver.spawn(tag=tag, target=store_target, name=tag, tb=str(tmp_path / "tb"), phase="random",
                         seed=100 + i, ops=OPS if script == "mixed" else EDITS, script=script)
    finished = _finish_all(forkserver, tags)  # a worker's error (e.g. "database is locked") fails here
    wall = time.monotonic() - started
    busy = max(f["seconds"] for f in finished.values())  # from the first worker's open to the last one's end
    total = 0
    with Store.open(store_target) as store:
        assert sorted(e.name for e in store.list_experiments()) == tags
    for tag in tags:
        with Store.open(store_target) as store:
            exp = store.get_experiment(tag)
            events = store.events(exp.experiment_id)
        assert len(events) == finished[tag]["seq"]  # every event each worker saw committed, no more
        check_store(store_target, tag, (len(events), events[-1].hash), set())  # chain, seqs 1..n, blobs
        total += len(events)
    written = sum(f["events"] for f in finished.values())  # after each worker's open
    rate = written / busy
    request.node.user_properties.append(("events_per_second", rate))
    print(f"\n{WRITERS} writers ({script}): {total} events in {wall:.1f}s wall (open included); "
          f"{written} events while all wrote = {rate:.0f} events/s")


@pytest.mark.slow
def test_two_processes_appending_to_the_same_experiment_one_gets_a_clear_conflict(
        forkserver, store_target, tmp_path):
    forkserver.spawn(tag="creator", target=store_target, name="shared", tb=str(tmp_path / "tb"),
                     phase="random", seed=1, ops=5)
    _finish_all(forkserver, ["creator"])
    with Store.open(store_target) as store:
        exp_id = store.get_experiment("shared").experiment_id
        before = store.last_seq(exp_id)
    barrier = tmp_path / "go"
    tags = ["same-a", "same-b"]
    for tag in tags:
        forkserver.spawn(tag=tag, target=store_target, name="shared", tb=str(tmp_path / "tb"), mode="same",
                         steps=SAME_STEPS, barrier=str(barrier))
    outcomes: dict[str, dict] = {}
    while len(outcomes) < 2:  # both opened (or one lost the race while opening)
        ev = forkserver.wait_for(lambda e: e["ev"] in ("opened", "conflict") and e["tag"] in tags, timeout=120)
        outcomes[ev["tag"]] = ev
    barrier.touch()
    for tag, ev in list(outcomes.items()):
        if ev["ev"] == "opened":
            outcomes[tag] = forkserver.wait_for(
                lambda e, t=tag: e["ev"] in ("finished", "conflict") and e["tag"] == t, timeout=120)
    for tag in tags:
        assert forkserver.wait_exit(tag)["code"] == 0
    conflicts = [ev for ev in outcomes.values() if ev["ev"] == "conflict"]
    winners = [ev for ev in outcomes.values() if ev["ev"] == "finished"]
    assert len(conflicts) == 1 and len(winners) == 1, outcomes
    message = conflicts[0]["message"]
    # the pre-check ("has events up to seq ...") or the database's unique seq ("... at the same time")
    assert re.search(r"another (process|writer) appended", message) and re.search(r"(?i)reopen the experiment", message)
    assert winners[0]["events"] == SAME_STEPS
    with Store.open(store_target) as store:
        events = store.events(exp_id)
        assert store.verify_chain(exp_id).ok
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        new = events[before:]
        resumes = [e for e in new if e.kind == "resume"]
        trains = [e for e in new if e.kind == "train"]
        opened = 2 if conflicts[0]["at"] == "train" else 1
        assert len(resumes) == opened and len(trains) == SAME_STEPS and len(new) == opened + SAME_STEPS
        ages = [(e.payload["age_before"], e.payload["age_after"]) for e in trains]
        assert all(a[1] == b[0] for a, b in zip(ages, ages[1:])), "train events do not follow each other"
        assert len({e.hash for e in events}) == len(events)
    check_store(store_target, "shared", (winners[0]["seq"], events[winners[0]["seq"] - 1].hash), set())
