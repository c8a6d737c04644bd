"""TensorBoard logs, read back with TensorBoard's own loaders: a run per branch, nothing dropped."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from tensorboard.backend.event_processing import data_ingester, plugin_event_multiplexer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from weightslab.events.domain import Evaluated, StepsTrained
from weightslab.experiment.tensorboard import MARKERS_PER_TAG
from weightslab.history.branches import branch_of_entries
from weightslab.history.log import walk


def _runs(logdir: Path) -> list[str]:
    return sorted(p.name for p in logdir.iterdir() if p.is_dir() and any(p.glob("events.out.tfevents.*")))


def _server_multiplexer(logdir: Path) -> plugin_event_multiplexer.EventMultiplexer:
    """What `tensorboard --logdir` loads (its Python loader, with its default sample counts)."""
    mux = plugin_event_multiplexer.EventMultiplexer(
        size_guidance=data_ingester.DEFAULT_SIZE_GUIDANCE,
        tensor_size_guidance=data_ingester.DEFAULT_TENSOR_SIZE_GUIDANCE)
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    return mux


def _markers(acc: EventAccumulator) -> list[str]:
    tags = sorted(t for t in acc.Tags()["tensors"] if t.startswith("operations/"))
    return [e.tensor_proto.string_val[0].decode() for t in tags for e in acc.Tensors(t)]


def test_curves_widths_histograms_and_operation_markers_are_logged(make_exp, tmp_path):
    exp = make_exp("tb", tensorboard_dir=str(tmp_path / "tb"))  # fresh: no curves of earlier runs
    exp.train_n_steps(3)
    exp.eval_full()
    exp.model.add_neurons(layer_index=0, neuron_count=2)
    exp.train_loader.dataset.denylist_samples({7})
    exp.dump()
    exp.load(checkpoint_id=0)
    exp.close()
    assert _runs(exp.tensorboard_dir) == ["c0", "c1-from-c0"]
    acc = EventAccumulator(str(exp.tensorboard_dir / "c0"), size_guidance={"tensors": 0, "histograms": 0,
                                                                           "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("train/loss", "train/accuracy", "eval/loss", "eval/accuracy", "neurons/layer_0"):
        assert tag in tags["scalars"], tag
    train_loss = acc.Scalars("train/loss")
    assert train_loss[0].step == exp.model_age == 3 * 64
    widths = acc.Scalars("neurons/layer_0")
    assert [round(s.value) for s in widths][-1] == 4
    # add, deny and dump happen at the same model age: one point per width and step
    assert len({(s.step, s.value) for s in widths}) == len(widths) == 2
    assert any(t.startswith("trigger_rate/layer_0/") for t in tags["histograms"])
    text = "\n".join(_markers(acc))
    for expected in ("add 2 neurons to layer 0", "deny 1 train samples", "dump checkpoint 0"):
        assert expected in text, expected
    loaded = EventAccumulator(str(exp.tensorboard_dir / "c1-from-c0"))
    loaded.Reload()
    assert [m.split(": ", 1)[1] for m in _markers(loaded)] == ["load checkpoint 0"]


def test_every_branch_is_a_run_and_tensorboards_default_loaders_drop_nothing(make_exp, tmp_path):
    exp = make_exp("branches", tensorboard_dir=str(tmp_path / "tb"))
    exp.train_n_steps(2)
    exp.eval_full()
    exp.dump()  # checkpoint 0
    for sample in range(MARKERS_PER_TAG + 3):  # more markers than TensorBoard keeps per tag
        exp.train_loader.dataset.denylist_samples({sample})
    exp.train_n_steps(2)
    exp.eval_full()
    exp.dump()  # checkpoint 1, from 0
    exp.load(checkpoint_id=0)  # the age goes back: another branch
    exp.model.add_neurons(layer_index=1, neuron_count=1)
    exp.train_n_steps(3)
    exp.eval_full()
    exp.load(checkpoint_id=0)  # again, before any dump: a second branch of the same name
    exp.train_n_steps(1)
    exp.close()

    log = walk(exp.store, "branches")
    branches = branch_of_entries(log)
    assert _runs(exp.tensorboard_dir) == sorted(set(branches)) == ["c0", "c1-from-c0", "c2-from-c0",
                                                                   "c2-from-c0~2"]
    expected_points = {split: Counter(b for e, b in zip(log, branches) if isinstance(e.event, kind))
                       for split, kind in (("train", StepsTrained), ("eval", Evaluated))}
    expected_markers = {b: sorted(e.seq for e, x in zip(log, branches) if x == b
                                  and not isinstance(e.event, StepsTrained | Evaluated)) for b in set(branches)}
    mux = _server_multiplexer(exp.tensorboard_dir)
    for run in _runs(exp.tensorboard_dir):
        acc = EventAccumulator(str(exp.tensorboard_dir / run))  # the default size guidance
        acc.Reload()
        for split in ("train", "eval"):
            points = acc.Scalars(f"{split}/loss") if f"{split}/loss" in acc.Tags()["scalars"] else []
            assert len(points) == expected_points[split][run], (run, split)
            steps = [p.step for p in points]
            assert steps == sorted(steps), (run, split, steps)  # the age never goes back within a run
            served = mux.Tensors(run, f"{split}/loss") if points else []
            assert len(served) == len(points), (run, split)
        markers = [int(m.split(":")[0].removeprefix("seq ")) for m in _markers(acc)]
        assert sorted(markers) == expected_markers[run], run
        served_text = [t for t in mux.GetAccumulator(run).Tags()["tensors"] if t.startswith("operations/")]
        assert sum(len(mux.Tensors(run, t)) for t in served_text) == len(markers), run
    c0 = EventAccumulator(str(exp.tensorboard_dir / "c1-from-c0"))
    c0.Reload()
    assert len([t for t in c0.Tags()["tensors"] if t.startswith("operations/")]) == 2  # 13 denies + dump: 2 tags


def test_a_reopened_experiment_continues_its_branchs_run(make_exp, tmp_path, store_target):
    logdir = tmp_path / "tb"
    exp = make_exp("resumed", tensorboard_dir=str(logdir))
    exp.train_n_steps(2)
    exp.dump()
    exp.train_n_steps(1)
    exp.close()
    exp.store.close()
    again = make_exp("resumed", tensorboard_dir=str(logdir))
    again.train_n_steps(1)
    again.close()
    assert _runs(logdir) == ["c0", "c1-from-c0"]
    acc = EventAccumulator(str(logdir / "c1-from-c0"))
    acc.Reload()
    steps = [p.step for p in acc.Scalars("train/loss")]
    assert steps == [3 * 64, 4 * 64]
    assert any("resume" in m for m in _markers(acc))


def test_a_log_that_cannot_be_written_is_reported_once_and_the_experiment_goes_on(make_exp, tmp_path):
    """TensorBoard is written on a background thread: a failure there (here the log directory is a file)
    becomes one warning (by the next close at the latest), never an error in an operation."""
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the logs should go")
    with pytest.warns(RuntimeWarning, match="no longer written") as caught:
        exp = make_exp("tb-blocked", tensorboard_dir=str(blocked))
        exp.train_n_steps(2)
        exp.model.add_neurons(layer_index=0, neuron_count=1)
        cid = exp.dump()
        exp.load(checkpoint_id=cid)
        exp.close()
    assert len([w for w in caught if "no longer written" in str(w.message)]) == 1
    assert [e.kind for e in exp.events().itertuples()][-4:] == ["train", "add_neurons", "dump", "load"]
    assert blocked.read_text() == "a file where the logs should go"


def test_markers_reach_their_runs_in_order_when_written_behind_the_experiment(make_exp, tmp_path):
    """Many edits, dumps and loads in a row: each run gets exactly its markers, numbered in order."""
    exp = make_exp("tb-order", tensorboard_dir=str(tmp_path / "tb"))
    exp.train_n_steps(1)
    for i in range(12):
        exp.model.layers[0].set_per_neuron_learning_rate({0}, lr=0.5 + i / 100)
    cid = exp.dump()
    for _ in range(3):
        exp.load(checkpoint_id=cid)
    exp.close()
    log = walk(exp.store, "tb-order")
    expected = Counter(branch for branch, e in zip(branch_of_entries(log), log)
                       if not isinstance(e.event, StepsTrained | Evaluated))
    for run in _runs(exp.tensorboard_dir):
        acc = EventAccumulator(str(exp.tensorboard_dir / run), size_guidance={"tensors": 0})
        acc.Reload()
        seqs = [int(m.split(":", 1)[0].removeprefix("seq ")) for m in _markers(acc)]
        assert seqs == sorted(seqs) and len(seqs) == expected[run], run
