"""Batched trigger counting: the same counters as counting every forward, bounded memory, safe exits."""

from __future__ import annotations

import copy

import pytest
import torch
from surgery_models import ConvBNModel, MNISTModel, mnist_batch, small_batch

from weightslab.surgery import TrackingMode
from weightslab.surgery.modules import COUNTER_NAMES, NeuronLayer


def _counters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{name}.{c}": getattr(m, c).clone() for name, m in model.named_modules()
            if isinstance(m, NeuronLayer) for c in COUNTER_NAMES}


def _assert_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("make", [MNISTModel, ConvBNModel], ids=["tutorial", "conv-bn-linear"])
def test_batched_counts_equal_counting_every_forward_in_both_modes(make, device):
    torch.manual_seed(0)
    model = make().to(device)
    twin = copy.deepcopy(model)
    batch = mnist_batch if make is MNISTModel else small_batch
    inputs = [batch(n, seed=i)[0].to(device) for i, n in enumerate((16, 16, 7, 16, 3))]

    def run(m: torch.nn.Module) -> None:
        m.tracking_mode = TrackingMode.TRAIN
        for x in inputs[:3]:
            m(x)
        m.tracking_mode = TrackingMode.EVAL  # sums kept so far count as train, the rest as eval
        for x in inputs[3:]:
            m(x)
        m.tracking_mode = TrackingMode.DISABLED

    run(twin)
    with model.batched_trigger_counts():
        run(model)
    _assert_equal(_counters(model), _counters(twin))
    first = model.layers[0]
    assert (int(first.train_seen_count[0]), int(first.eval_seen_count[0])) == (39, 19)


def test_inside_the_block_counting_waits_and_stays_bounded():
    torch.manual_seed(0)
    model = MNISTModel()
    x, _ = mnist_batch(4)
    model.tracking_mode = TrackingMode.TRAIN
    with model.batched_trigger_counts():
        model(x)
        assert model.layer0.train_seen_count.sum() == 0  # kept, not yet counted
        for _ in range(63):
            model(x)
        assert model.layer0.train_seen_count.tolist() == [64 * 4] * 2  # the 64th forward counted all kept
        assert model.layer0._wl_pending == []
        model(x)
    assert model.layer0.train_seen_count.tolist() == [65 * 4] * 2
    assert model.layer0._wl_pending is None  # nothing kept after the block


def test_a_failing_forward_inside_the_block_keeps_the_counts_of_the_completed_ones():
    torch.manual_seed(0)
    model = ConvBNModel()
    twin = copy.deepcopy(model)
    x, _ = small_batch(8)
    for m in (model, twin):
        m.tracking_mode = TrackingMode.TRAIN
    twin(x)
    with pytest.raises(RuntimeError), model.batched_trigger_counts():
        model(x)
        model(x[:, :0])  # no input channels: the first convolution fails, before any counting
    _assert_equal(_counters(model), _counters(twin))
    assert model.conv0._wl_pending is None
