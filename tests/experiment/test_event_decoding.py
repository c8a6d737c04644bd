"""Every event kind the library writes decodes into its typed class, and nothing else does."""

from __future__ import annotations

import pytest
from torch import optim

from weightslab import Experiment
from weightslab.demo import MNISTModel
from weightslab.errors import EventPayloadError
from weightslab.events.codec import normalise
from weightslab.events.domain import EVENT_CLASSES, NeuronsPruned, RecordedEvent, StepsTrained, decode
from weightslab.history.log import walk


def _every_kind(exp: Experiment) -> None:
    exp.train_n_steps(3)
    exp.eval_n_steps(1)
    exp.eval_full()
    exp.model.add_neurons(layer_index=0, neuron_count=2)
    exp.model.prune(layer_index=1, neuron_indices={0})
    exp.model.reinit_neurons(layer_index=0, neuron_indices={1}, perturbation_ratio=0.1)
    exp.model.layers[1].set_per_neuron_learning_rate({0}, lr=0.5)
    exp.model.layers[1].set_per_incoming_neuron_learning_rate({1}, lr=0.0)
    exp.model.freeze_layers_up_to_idx(0)
    exp.model.unfreeze_layers_from_idx(0)
    exp.set_hyperparameters(learning_rate=5e-3)
    ds = exp.train_loader.dataset
    ds.deny_samples_with_predicate(lambda id, age, loss, times, denied, pred, label: id % 11 == 0)
    ds.deny_samples_and_sample_allowed_with_predicate(
        lambda id, age, loss, times, denied, pred, label: id % 13 == 0, allow_to_denied_factor=0.5)
    ds.deny_samples_where("sample_id % 17 == 0")
    ds.allowlist_samples({11, 22})
    exp.eval_loader.dataset.denylist_samples({0})
    ds.allowlist_samples(None)
    cid = exp.dump()
    exp.train_n_steps(2)
    exp.load(checkpoint_id=cid)


def test_every_kind_written_decodes_strictly_and_encodes_back_to_its_stored_payload(make_exp, digits):
    exp = make_exp("kinds")
    _every_kind(exp)
    exp.close()
    train_ds, eval_ds = digits
    reopened = Experiment(model=MNISTModel(), optimizer_class=optim.Adam, train_dataset=train_ds,
                          eval_dataset=eval_ds, learning_rate=1e-2, batch_size=64, name="kinds", store=exp.store,
                          tensorboard_dir=str(exp.tensorboard_dir))
    rows = exp.store.events(exp.experiment_id)
    assert {r.kind for r in rows} == set(EVENT_CLASSES)  # the session covers every kind
    for row in rows:
        event = RecordedEvent.from_row(row).event  # strict: an unknown key or kind would raise
        assert type(event) is EVENT_CLASSES[row.kind]
        assert normalise(event.to_payload()) == normalise(row.payload), row.seq
    reopened.close()


def test_the_history_tools_store_decodes(built):
    log = walk(built.store, "x0")
    assert [e.kind for e in log][:4] == ["create", "train", "eval", "dump"]
    assert [e.head for e in log][-5:] == [1, 1, 1, 3, 3]  # load 1, allow, deny, dump 3, train


@pytest.mark.parametrize(("kind", "payload", "says"), [
    ("retrain", {}, "unknown event kind 'retrain'"),
    ("train", {"steps": 1, "age_before": 0, "age_after": 1, "epochs": 2}, "unknown key 'epochs'"),
    ("prune", {"args": {"layer_index": 0, "neuron_indices": [1], "why": "x"}}, "unknown key 'args.why'"),
    ("prune", {"args": {"layer_index": 0, "neuron_indices": [1]}, "result": {"w": 1}}, "unknown key 'result.w'"),
    ("prune", {"args": {"layer_index": "0", "neuron_indices": [1]}}, "layer_index is '0', expected int"),
    ("prune", {"args": {"layer_index": True, "neuron_indices": [1]}}, "expected int"),
    ("train", {"steps": 1, "age_before": 0}, "lacks age_after"),
    ("train", {"steps": 1, "age_before": 0, "age_after": 1, "v": 99}, "version 99, newer than"),
    ("dump", {"checkpoint_id": 0, "manifest": None}, "manifest is null"),
])
def test_anything_else_is_refused_with_a_clear_message(kind, payload, says):
    with pytest.raises(EventPayloadError, match=says.replace("(", r"\(").replace(")", r"\)")):
        decode(kind, payload)


def test_typed_events_are_frozen_values():
    e = NeuronsPruned(layer_index=1, neuron_indices=(0, 2), widths=(2, 3))
    assert e == decode("prune", e.to_payload())
    with pytest.raises(AttributeError):
        e.layer_index = 2  # type: ignore[misc]
    assert StepsTrained(steps=2, age_before=0, age_after=10).summary() == "train 2 steps (age 0 → 10)"
