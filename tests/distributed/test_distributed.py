"""Experiments over torch.distributed: real gloo process groups on 127.0.0.1 (free ports), on the CPU.

Each scenario runs in ``ranks.py``, launched as 2 or 3 local processes the way ``torchrun`` would; the
2-rank run is compared with one process training on the same global batches. Every launch is bounded by
a timeout; the ranks use one thread each.

Floating point: a 2-rank run is *not* bit-identical to one process (each rank reduces over its half of
the batch, then DDP averages the two halves), but its events, SQL counts, sample order, denies and
architecture are identical, and every state tensor stays within ``STATE_TOLERANCE`` (measured: 2.3e-7
after ~50 Adam steps at lr 1e-2; see docs/distributed.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from weightslab.cli import main as cli
from weightslab.experiment.distributed import launch
from weightslab.experiment.loaders import share_of
from weightslab.history.store import Store

HERE = Path(__file__).resolve().parent
STATE_TOLERANCE = 1e-5
LOSS_TOLERANCE = 1e-4
TIMEOUT_S = 240


def _launch(scenario: str, world: int, store: str, name: str, out: Path, *extra: str) -> int:
    env = {"PYTHONPATH": str(HERE), "OMP_NUM_THREADS": "1"}
    return launch([str(HERE / "ranks.py"), scenario, store, name, str(out), *extra], world, timeout_s=TIMEOUT_S,
                  env=env)


def _results(out: Path, world: int) -> list[dict[str, Any]]:
    return [json.loads(Path(f"{out}.{r}.json").read_text()) for r in range(world)]


def _sql(store: str, query: str) -> Any:
    with Store.open(store, create=False, read_only=True) as s:
        return s.query(query)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[dict[str, Any]]]:
    """The tutorial's every operation on 2 ranks (batch 32 each), closed and reopened."""
    d = tmp_path_factory.mktemp("two_ranks")
    store = str(d / "store")
    assert _launch("tutorial", 2, store, "ddp", d / "out", "--reopen") == 0
    return store, _results(d / "out", 2)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """The same script in this process, without a process group, on the same global batch (64)."""
    import argparse

    sys.path.insert(0, str(HERE))
    try:
        import ranks
    finally:
        sys.path.remove(str(HERE))
    store = str(tmp_path_factory.mktemp("one_process") / "store")
    args = argparse.Namespace(store=store, name="single", batch=64, reopen=True)
    return store, ranks.tutorial(ranks.experiment(store, "single", 64), args)


def test_a_global_batch_is_shared_evenly_and_contiguously() -> None:
    assert [share_of(64, r, 2) for r in range(2)] == [slice(0, 32), slice(32, 64)]
    assert [share_of(7, r, 3) for r in range(3)] == [slice(0, 3), slice(3, 5), slice(5, 7)]
    assert [share_of(1, r, 2) for r in range(2)] == [slice(0, 1), slice(1, 1)]  # a short last batch


def test_an_event_recorded_on_another_world_size_is_refused_by_replay_and_its_backend_noted() -> None:
    import torch

    from weightslab.experiment import environment

    here = environment.current(torch.device("cpu"))
    assert (here["world_size"], here["backend"]) == (1, None)  # no process group in this process
    found = environment.compare({**here, "world_size": 2, "backend": "gloo"}, here)
    assert found.refused == ["world_size 2 (here 1)"] and found.noted == ["backend gloo (here None)"]


def test_two_ranks_record_the_events_one_process_records(two_ranks, one_process) -> None:
    (_, (rank0, rank1)), (_, single) = two_ranks, one_process
    assert rank0["events"] == single["events"]
    assert rank0["last_seq"] == rank1["last_seq"] == single["last_seq"] == len(single["events"])
    assert rank0["resumed"] == rank1["resumed"] == single["resumed"]
    assert {"prune", "add_neurons", "reinit_neurons", "deny", "allow", "dump", "load", "resume"} <= set(single["events"])


def test_two_ranks_hold_the_same_state(two_ranks) -> None:
    _, (rank0, rank1) = two_ranks
    assert rank0["state"] == rank1["state"]


def test_two_rank_state_is_one_process_state_within_rounding(two_ranks, one_process) -> None:
    (_, (rank0, _)), (_, single) = two_ranks, one_process
    assert rank0["state"].keys() == single["state"].keys()
    worst = max(float(np.max(np.abs(np.subtract(rank0["state"][k], single["state"][k])), initial=0.0))
                for k in single["state"])
    assert worst <= STATE_TOLERANCE


def test_sql_shows_every_sample_seen_as_one_process_sees_it(two_ranks, one_process) -> None:
    (store2, _), (store1, _) = two_ranks, one_process
    query = ("SELECT split, sample_id, exposure_amount, deny_listed, label, prediction_age, prediction_loss "
             "FROM sample_stats ORDER BY split, sample_id")
    two, one = _sql(store2, query), _sql(store1, query)
    exact = ["split", "sample_id", "exposure_amount", "deny_listed", "label", "prediction_age"]
    assert two[exact].equals(one[exact])
    assert len(two) == 720 and two["exposure_amount"].sum() > 720  # every sample, more than one pass
    assert np.allclose(two["prediction_loss"], one["prediction_loss"], atol=LOSS_TOLERANCE, equal_nan=True)
    neurons = "SELECT layer_index, neuron_index, split, seen_samples FROM neuron_stats ORDER BY 1, 2, 3"
    assert _sql(store2, neurons).equals(_sql(store1, neurons))


def test_audit_of_a_two_rank_store_is_clean(two_ranks, capsys) -> None:
    store, _ = two_ranks
    assert cli(["audit", "ddp", "--store", store]) == 0
    assert "OK" in capsys.readouterr().out


def test_replay_in_one_process_refuses_naming_the_world_size_and_the_command(two_ranks, capsys) -> None:
    store, _ = two_ranks
    assert cli(["replay", "ddp", "--store", store]) == 2
    err = capsys.readouterr().err
    assert "recorded on 2 processes (torch.distributed, gloo)" in err
    assert f"weightslab replay ddp --store {store} --nproc 2" in err


def test_replay_refuses_a_number_of_processes_below_one(two_ranks, capsys) -> None:
    store, _ = two_ranks
    assert cli(["replay", "ddp", "--store", store, "--nproc", "0"]) == 2
    assert "--nproc must be at least 1" in capsys.readouterr().err


def test_replay_on_two_processes_verifies_every_recorded_fingerprint(two_ranks) -> None:
    store, _ = two_ranks
    env = {**os.environ, "PYTHONPATH": str(HERE), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "weightslab.cli", "replay", "ddp", "--store", store, "--nproc", "2",
                           "--from-start", "--json"], env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["ok"] and result["base_seq"] == 1 and result["not_restored"] == []
    assert len(result["replayed"]) == len(_sql(store, "SELECT seq FROM events"))


@pytest.mark.postgres
def test_three_ranks_on_postgres_refuse_different_calls_on_every_rank_and_go_on(pg_url, tmp_path) -> None:
    assert _launch("three", 3, pg_url, "three", tmp_path / "out") == 0
    results = _results(tmp_path / "out", 3)
    for rank, r in enumerate(results):
        assert r["prune"].startswith("the ranks disagree at seq 3: rank 0 recorded prune")
        assert 'rank 1 recorded prune {"layer_index": 1, "neuron_indices": [1]}' in r["prune"]
        assert "ranks differing from rank 0: [1, 2]" in r["prune"]
        assert "rank 0 called exp.train_n_steps(1), rank 1 recorded add_neurons" in r["call"], rank
        assert r["widths"] == [2, 4, 10, 10]  # both refused edits were rolled back
        assert r["after"] == r["before"] + 1  # only the train that every rank made was recorded
    assert results[0]["events"] == results[0]["after"]
    assert results[0]["state"] == results[1]["state"] == results[2]["state"]
    assert results[0]["last_seq"] == results[1]["last_seq"] == results[2]["last_seq"]
    assert cli(["audit", "three", "--store", pg_url]) == 0


def test_a_write_refused_on_rank_0_raises_on_every_rank_and_changes_nothing_then_a_killed_rank_neither(
        tmp_path) -> None:
    """One run: rank 0's database refuses events for a while (a real trigger), then rank 1 is killed
    (SIGKILL) in the middle of a training call; the store audits clean and reopens on 2 ranks."""
    store = str(tmp_path / "store")
    assert _launch("kill", 2, store, "killed", tmp_path / "out") != 0
    zero, one = (json.loads(Path(f"{tmp_path / 'out'}.{r}.refused.json").read_text()) for r in range(2))
    assert "injected: the disk refused the event" in zero["prune"]
    assert one["prune"].startswith("StoreError: rank 0 could not write the event (")
    assert "injected: the disk refused the event" in one["prune"]
    assert "injected: the disk refused the event" in zero["train"] and "rank 0 could not write" in one["train"]
    for r in (zero, one):
        assert r["after"] == r["before"] and r["widths_after"] == r["widths"]
    assert zero["state"] == one["state"]
    assert not Path(f"{tmp_path / 'out'}.0.json").exists()  # rank 0 failed too (its peer is gone)
    assert cli(["audit", "killed", "--store", store]) == 0
    # create, train, dump, train: neither the refused calls nor the killed one left anything
    assert len(_sql(store, "SELECT seq FROM events")) == 4
    assert _launch("resume", 2, store, "killed", tmp_path / "again") == 0
    resumed = _results(tmp_path / "again", 2)
    assert resumed[0] == resumed[1] == {"resumed": "resumed from checkpoint 0 (seq 3), replayed events 4..4",
                                        "last_seq": 6}
