"""Replay: rebuild the exact state at any seq from the store, and notice divergence."""

from __future__ import annotations

import pytest
import torch

from weightslab.demo import MNISTModel
from weightslab.errors import ReplayError
from weightslab.experiment.replica import replay_to, replica
from weightslab.experiment.state import tensor_hash


def every_operation(exp) -> dict[int, dict[str, torch.Tensor]]:
    """A session with every operation kind; returns {seq: state tensors (copies)} at several points."""
    states = {}

    def keep():
        tensors, _ = exp.capture()
        states[exp.last_seq] = {k: v.detach().clone() for k, v in tensors.items()}

    exp.train_n_steps(5)
    exp.eval_n_steps(2)
    keep()
    exp.model.add_neurons(layer_index=0, neuron_count=3)
    exp.model.prune(layer_index=1, neuron_indices={0})
    exp.model.reinit_neurons(layer_index=0, neuron_indices={1, 3})
    exp.model.reinit_neurons(layer_index=2, neuron_indices={4}, perturbation_ratio=0.3)
    exp.model.layers[1].set_per_neuron_learning_rate({0, 1}, lr=0.25)
    exp.model.layers[2].set_per_incoming_neuron_learning_rate({2}, lr=0.0)
    exp.train_n_steps(4)
    keep()
    exp.model.freeze_layers_up_to_idx(0)
    ds = exp.train_loader.dataset
    ds.deny_samples_with_predicate(lambda id, age, loss, times, denied, pred, label: loss <= 0.5)
    exp.train_n_steps(3)
    exp.model.unfreeze_layers_from_idx(0)
    ds.allowlist_samples({1, 2, 3})
    cid = exp.dump()
    exp.train_n_steps(3)
    exp.eval_full()
    keep()
    exp.load(checkpoint_id=cid)
    ds.deny_samples_and_sample_allowed_with_predicate(
        lambda id, age, loss, times, denied, pred, label: loss <= 1.0, allow_to_denied_factor=1)
    exp.train_n_steps(6)
    keep()
    return states


def test_replay_to_any_seq_is_bit_exact(make_exp, digits, store_target):
    exp = make_exp("replay-all")
    states = every_operation(exp)
    kinds = set(exp.events()["kind"])
    assert {"train", "eval", "add_neurons", "prune", "reinit_neurons", "set_neuron_lr", "set_incoming_neuron_lr",
            "freeze", "unfreeze", "deny", "allow", "dump", "load"} <= kinds
    train_ds, eval_ds = digits
    for seq, expected in states.items():
        for from_start in (False, True):
            rep = replica(exp.store, "replay-all", model=MNISTModel(), train_dataset=train_ds,
                          eval_dataset=eval_ds)
            outcome = replay_to(rep, seq, from_start=from_start)
            assert outcome.ok, (seq, outcome)
            got, _ = rep.capture()
            assert got.keys() == expected.keys()
            for k, v in expected.items():
                assert tensor_hash(got[k]) == tensor_hash(v), (seq, k)  # bit-exact, NaN included


def test_replay_with_the_recorded_recipe(make_exp):
    exp = make_exp("recipe", recipe="weightslab.demo:recipe")
    exp.train_n_steps(3)
    exp.model.prune(layer_index=2, neuron_indices={1, 2})
    exp.train_n_steps(2)
    rep = replica(exp.store, "recipe")
    assert replay_to(rep).ok
    assert [layer.neuron_count for layer in rep.model.layers] == [2, 4, 8, 10]


def test_replay_reports_the_first_diverging_seq_and_part(make_exp, digits):
    exp = make_exp("diverge")
    exp.train_n_steps(3)
    exp.train_n_steps(3)
    train_ds, eval_ds = digits
    # a different training set: same length, but sample 0 changed -> the fingerprint check refuses it
    x, y = train_ds.tensors
    x2 = x.clone()
    x2[0] += 1
    with pytest.raises(Exception, match="different train dataset"):
        replica(exp.store, "diverge", model=MNISTModel(), train_dataset=torch.utils.data.TensorDataset(x2, y),
                eval_dataset=eval_ds)
    # a change the fingerprint of the data cannot see: the criterion differs -> training diverges
    rep = replica(exp.store, "diverge", model=MNISTModel(), train_dataset=train_ds, eval_dataset=eval_ds)
    rep.criterion = lambda out, y: torch.nn.functional.nll_loss(out, y, reduction="none") * 2
    outcome = replay_to(rep)
    assert not outcome.ok
    assert outcome.divergence.seq == 2 and "model" in outcome.divergence.parts


def test_replica_never_writes(make_exp, digits):
    exp = make_exp("ro")
    exp.train_n_steps(2)
    before = len(exp.events())
    train_ds, eval_ds = digits
    rep = replica(exp.store, "ro", model=MNISTModel(), train_dataset=train_ds, eval_dataset=eval_ds)
    replay_to(rep)
    with pytest.raises(ReplayError, match="read-only replica"):
        rep.train_n_steps(1)
    rep.model.prune(layer_index=0, neuron_indices={0})  # allowed in memory, never recorded
    assert len(exp.events()) == before


def test_replay_seq_out_of_range_names_the_range(make_exp, digits):
    exp = make_exp("range")
    exp.train_n_steps(1)
    train_ds, eval_ds = digits
    rep = replica(exp.store, "range", model=MNISTModel(), train_dataset=train_ds, eval_dataset=eval_ds)
    with pytest.raises(ReplayError, match=r"1\.\.2"):
        replay_to(rep, 99)
