"""Conversion versions: what each version of convert_to_ops converts, converting back, and experiments recorded
with an earlier version (or none recorded) reopening and replaying with the model converted as they were."""

from __future__ import annotations

import pytest
import torch
from torch import nn, optim

from weightslab import Experiment
from weightslab.demo import digits_datasets
from weightslab.errors import ConfigurationError
from weightslab.experiment import experiment as experiment_module
from weightslab.experiment.replica import replay_to, replica
from weightslab.surgery import MultiheadAttentionWithNeuronOps, convert_to_ops
from weightslab.surgery.convert import CONVERSION_VERSION, conversion_version, use_conversion


class Named(nn.Linear):
    """A subclass that computes what nn.Linear computes (converted from version 2 on)."""


class Tokens(nn.Module):
    """Digits as 28 tokens of 28 pixels (rows): a Linear subclass, self-attention with a residual, a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = Named(28, 16)
        self.attention = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.reshape(x.shape[0], 28, 28))
        h = h + self.attention(h, h, h, need_weights=False)[0]
        return torch.log_softmax(self.head(torch.relu(h)).mean(1), dim=-1)


def _model(version: int = CONVERSION_VERSION):
    torch.manual_seed(0)
    return convert_to_ops(Tokens(), version=version)


def test_each_conversion_version_converts_what_it_says():
    layers = {version: [type(layer).__name__ for layer in _model(version).layers] for version in (1, 2, 3)}
    assert layers[1] == ["LinearWithNeuronOps"]  # the head; Named and the attention stay as they are
    assert layers[2] == ["LinearWithNeuronOps"] * 2
    assert len(layers[3]) == 4  # embed, the attention's in_proj and out_proj, head
    assert isinstance(_model(3).model.attention, MultiheadAttentionWithNeuronOps)
    assert [conversion_version(_model(v)) for v in (1, 2, 3)] == [1, 2, 3]
    with pytest.raises(ConfigurationError, match=f"version must be an integer from 1 to {CONVERSION_VERSION}"):
        convert_to_ops(Tokens(), version=CONVERSION_VERSION + 1)


def test_converting_back_restores_the_original_modules_with_the_same_parameters():
    net = _model()
    x = torch.randn(3, 1, 28, 28)
    params = [id(p) for p in net.parameters()]
    expected = net(x)
    assert use_conversion(net, 1)
    assert type(net.model.embed) is Named and type(net.model.attention) is nn.MultiheadAttention
    assert [id(p) for p in net.parameters()] == params and len(net.layers) == 1
    assert torch.allclose(net(x), expected, atol=1e-6)
    assert not use_conversion(net, 1)  # nothing left to undo


def test_converting_back_a_layer_edited_since_is_refused():
    net = _model()
    net(torch.randn(2, 1, 28, 28))
    net.add_neurons(0, 2, seed=0)  # the embedding (the attention's stream) grows
    with pytest.raises(ConfigurationError, match="it was edited after convert_to_ops"):
        use_conversion(net, 1)


@pytest.fixture(scope="module")
def digits():
    return digits_datasets()


def _experiment(model, store: str, digits) -> Experiment:
    train_ds, eval_ds = digits
    return Experiment(model, optim.Adam, train_ds, eval_ds, learning_rate=1e-2, batch_size=32, name="tokens",
                      store=store, progress=False, recipe="tests.surgery.test_conversion_versions:recipe")


def recipe():
    train_ds, eval_ds = digits_datasets()
    return _model(), train_ds, eval_ds


def _record(store: str, model, digits) -> list[int]:
    exp = _experiment(model, store, digits)
    exp.train_n_steps(2)
    # The head: its layer_index in this conversion (it would name another layer in today's).
    exp.model.set_per_neuron_learning_rate(len(exp.model.layers) - 1, [0], 0.5)
    exp.train_n_steps(1)
    widths = [layer.neuron_count for layer in exp.model.layers]
    exp.close()
    exp.store.close()
    return widths


def test_an_experiment_records_its_conversion_version_and_reopens_converted_the_same_way(tmp_path, digits):
    store = str(tmp_path / "store")
    widths = _record(store, _model(2), digits)  # as WeightsLab converted before attention was
    exp = _experiment(_model(), store, digits)  # today's conversion of the same model
    assert exp.resume_report is not None and exp.resume_report.not_restored == []
    assert [layer.neuron_count for layer in exp.model.layers] == widths
    assert type(exp.model.model.attention) is nn.MultiheadAttention
    exp.close()
    exp.store.close()
    outcome = replay_to(replica(store, "tokens"), from_start=True)  # the recipe converts today's way too
    assert outcome.ok, outcome


def test_a_store_that_predates_conversion_versions_reopens_with_the_version_its_widths_match(
    tmp_path, digits, monkeypatch
):
    store = str(tmp_path / "store")
    with monkeypatch.context() as patch:  # an older WeightsLab: no version in the create config
        patch.setattr(experiment_module, "conversion_record", lambda model: {})
        widths = _record(store, _model(1), digits)
    exp = _experiment(_model(), store, digits)
    assert exp.resume_report is not None and exp.resume_report.not_restored == []
    assert [layer.neuron_count for layer in exp.model.layers] == widths and len(widths) == 1
    assert type(exp.model.model.embed) is Named
    exp.close()
    exp.store.close()
