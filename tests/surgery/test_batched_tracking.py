"""Batched trigger counting: the same counters as counting every forward, bounded memory, safe exits."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from surgery_models import ConvBNModel, MNISTModel, mnist_batch, small_batch

from weightslab.surgery import LinearWithNeuronOps, NetworkWithOps, TrackingMode
from weightslab.surgery.modules import COUNTER_NAMES, NeuronLayer


def _counters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{name}.{c}": getattr(m, c).clone() for name, m in model.named_modules()
            if isinstance(m, NeuronLayer) for c in COUNTER_NAMES}


def _assert_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _assert_batched_counts_like_every_forward(model: torch.nn.Module, run: Any) -> None:
    """``run(model)`` inside a batched block leaves the counters ``run`` leaves on a twin counting each forward."""
    twin = copy.deepcopy(model)
    run(twin)
    with model.batched_trigger_counts():
        run(model)
    _assert_equal(_counters(model), _counters(twin))


def _train_on(inputs: list[torch.Tensor]) -> Any:
    def run(m: torch.nn.Module) -> None:
        m.tracking_mode = TrackingMode.TRAIN
        for x in inputs:
            m(x)
    return run


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
        assert model.layer0.pending_forwards == 0
        model(x)
    assert model.layer0.train_seen_count.tolist() == [65 * 4] * 2
    assert model.layer0.pending_forwards is None  # nothing kept after the block


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
    assert model.conv0.pending_forwards is None


def test_edits_inside_the_block_count_the_kept_sums_in_the_widths_they_were_taken_in():
    torch.manual_seed(0)
    model = ConvBNModel()
    inputs = [small_batch(6, seed=i)[0] for i in range(6)]

    def run(m: torch.nn.Module) -> None:
        m.tracking_mode = TrackingMode.TRAIN
        m(inputs[0])
        m(inputs[1])
        m.prune(layer_index=0, neuron_indices={1, 4})  # conv0 and its batch norm: 6 → 4 neurons
        m(inputs[2])
        m.add_neurons(layer_index=0, neuron_count=3, seed=5)
        m(inputs[3])
        m.reinit_neurons(layer_index=1, neuron_indices={0}, seed=2)
        m(inputs[4])
        m.load_state_dict(m.state_dict())
        m(inputs[5])

    _assert_batched_counts_like_every_forward(model, run)
    assert model.conv0.train_seen_count.tolist() == [36] * 4 + [18] * 3  # added neurons saw the last three


def test_a_new_dtype_or_a_larger_batch_inside_the_block_is_counted_like_the_rest():
    torch.manual_seed(0)
    model = ConvBNModel()
    small, large = small_batch(2)[0], small_batch(300, seed=1)[0]  # 300 rows > 64 forwards × 2 rows

    def run(m: torch.nn.Module) -> None:
        m.tracking_mode = TrackingMode.TRAIN
        m(small)
        m(large)
        m(small)
        m.double()
        m(small.double())
        m(large.double())

    _assert_batched_counts_like_every_forward(model, run)
    assert int(model.fc.train_seen_count[0]) == 2 * (2 + 300) + 2


def test_resnet18_batched_counts_equal_counting_every_forward():
    from surgery_models import resnet18

    torch.manual_seed(0)
    model = resnet18()  # its last stage has 1×1 feature maps at 32×32 inputs
    model.train()
    inputs = [torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    _assert_batched_counts_like_every_forward(model, _train_on(inputs))
    assert (model.layers[-2].train_seen_count == 9).all()


class _InPlaceAfterLinear(NetworkWithOps):
    """A linear layer whose output the forward then changes in place (as ``relu_`` or ``+=`` do)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = LinearWithNeuronOps(4, 3)
        self.head = LinearWithNeuronOps(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.maybe_update_age(x)
        h = self.fc(x)
        h -= 10.0  # every kept value would turn negative if the layer kept a view of its output
        return self.head(h)


def test_kept_sums_do_not_follow_in_place_changes_of_the_output():
    torch.manual_seed(0)
    model = _InPlaceAfterLinear()
    inputs = [torch.randn(5, 4, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    _assert_batched_counts_like_every_forward(model, _train_on(inputs))
    assert model.fc.train_trigger_count.sum() > 0
