"""The tutorial's model-surgery snippets run as written, in sequence (SPEC §2)."""

from __future__ import annotations

import pytest
import torch
from surgery_helpers import train_step
from surgery_models import MNISTModel, mnist_batch

from weightslab.errors import IndexSelectionError
from weightslab.surgery import TrackingMode


def test_tutorial_snippets_run_in_sequence_and_name_missing_indices_clearly():
    torch.manual_seed(0)
    model = MNISTModel()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.attach_optimizer(optimizer)
    x, y = mnist_batch(32)
    model.tracking_mode = TrackingMode.TRAIN
    train_step(model, optimizer, x, y)

    model.add_neurons(layer_index=0, neuron_count=4)
    model.prune(layer_index=0, neuron_indices={0, 2, 4})
    assert model.layer0.out_channels == 3
    # Neurons 5 and 6 were pruned away by the snippet before: a clear index error, nothing changed.
    with pytest.raises(IndexSelectionError, match=r"\[5, 6\] out of range.*0\.\.2"):
        model.reinit_neurons(layer_index=0, neuron_indices={5, 6})
    model.reinit_neurons(layer_index=0, neuron_indices={1, 2})
    model.reinit_neurons(layer_index=0, neuron_indices={1, 2}, perturbation_ratio=0.2)
    model.layers[0].set_per_neuron_learning_rate(set(range(0, 2)), lr=0.0)
    # Layer 0 has a single incoming neuron (the image channel).
    with pytest.raises(IndexSelectionError, match=r"\[1\] out of range.*0\.\.0"):
        model.layers[0].set_per_incoming_neuron_learning_rate(set(range(0, 2)), lr=0.0)
    model.layers[1].set_per_incoming_neuron_learning_rate(set(range(0, 2)), lr=0.0)
    model.freeze_layers_up_to_idx(1)
    model.unfreeze_layers_from_idx(1)
    train_step(model, optimizer, x, y)
    assert "Neuron 00000:  train:" in model.stats_report()
    assert model.age == 64
