"""`weightslab replay` as a user runs it: a subprocess over a recorded store."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import optim

from weightslab import Experiment
from weightslab.demo import MNISTModel


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "weightslab.cli", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def recorded(digits, tmp_path):
    """A small recorded experiment on a SQLite store (the CLI reads it from another process)."""
    torch.manual_seed(0)
    train_ds, eval_ds = digits
    exp = Experiment(model=MNISTModel(), optimizer_class=optim.Adam, train_dataset=train_ds, eval_dataset=eval_ds,
                     learning_rate=1e-2, batch_size=64, name="cli-replay", store=str(tmp_path / "store"),
                     recipe="weightslab.demo:recipe")
    exp.train_n_steps(4)
    exp.dump()
    exp.model.prune(layer_index=1, neuron_indices={2})
    exp.train_n_steps(3)
    exp.close()
    yield str(tmp_path / "store"), exp
    exp.store.close()


def test_replay_command_rebuilds_and_verifies(recorded):
    store, exp = recorded
    out = run_cli("replay", "cli-replay", "--store", store, "--from-start", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["ok"] and result["replayed"] == list(range(1, exp.last_seq + 1))


def test_replay_command_reports_divergence_with_exit_1(recorded):
    store, exp = recorded
    # an edited history: the first training event now claims 3 steps instead of 4
    import sqlite3

    db = sqlite3.connect(f"{store}/weightslab.db")
    payload = json.loads(db.execute("SELECT payload FROM events WHERE seq = 2").fetchone()[0])
    payload["steps"] = 3
    db.execute("UPDATE events SET payload = ? WHERE seq = 2", (json.dumps(payload),))
    db.commit()
    db.close()
    out = run_cli("replay", "cli-replay", "--store", store, "--from-start")
    assert out.returncode == 1
    assert "seq 2 (train)" in out.stdout and "model" in out.stdout


@pytest.mark.parametrize("args, message", [
    (["replay", "nope"], "no experiment named 'nope'"),
    (["replay", "cli-replay", "--recipe", "no_such_module:build"], "cannot import recipe"),
    (["replay", "cli-replay", "--recipe", "not a recipe"], "package.module:function"),
    (["replay", "cli-replay", "--to", "999"], "outside the event log"),
])
def test_replay_command_bad_input_is_a_clear_error(recorded, args, message):
    store, exp = recorded
    before = exp.events()
    out = run_cli(*args, "--store", store)
    assert out.returncode == 2 and message in out.stderr
    assert len(exp.events()) == len(before)
