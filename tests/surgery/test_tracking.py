"""Trigger counters, tracking modes, model age and the statistics report."""

from __future__ import annotations

import re

import torch
from surgery_helpers import assert_same, fingerprint
from surgery_models import ConvBNModel, MNISTModel, mnist_batch, small_batch

from weightslab.surgery import Conv2dWithNeuronOps, LinearWithNeuronOps, TrackingMode
from weightslab.surgery.tracking import count_positive, spatial_sums


def test_trigger_is_a_positive_spatial_mean_per_sample_and_neuron(device):
    torch.manual_seed(0)
    conv = Conv2dWithNeuronOps(2, 3, kernel_size=3).to(device)
    conv.tracking_mode = TrackingMode.TRAIN
    x = torch.randn(50, 2, 6, 6, device=device)
    out = conv(x)
    expected = (out.detach().mean(dim=(2, 3)) > 0).sum(0)
    assert torch.equal(conv.train_trigger_count, expected)
    assert conv.train_seen_count.tolist() == [50, 50, 50]
    assert conv.train_trigger_count.device == out.device and conv.train_trigger_count.dtype == torch.int64
    rates = conv.trigger_rates("train")
    assert ((rates >= 0) & (rates <= 1)).all()


def test_linear_triggers_count_positive_outputs():
    layer = LinearWithNeuronOps(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    layer.tracking_mode = TrackingMode.EVAL
    layer(torch.tensor([[1.0, 1.0], [-1.0, -1.0], [2.0, 0.0]]))
    assert layer.eval_trigger_count.tolist() == [2, 1]
    assert layer.eval_seen_count.tolist() == [3, 3]
    assert layer.train_seen_count.tolist() == [0, 0]


def test_tracking_mode_selects_the_counters_and_skip_register_skips():
    torch.manual_seed(0)
    model = MNISTModel()
    x, _ = mnist_batch(8)
    model(x)  # DISABLED (the tutorial's default)
    assert model.layer0.train_seen_count.sum() == 0 and model.layer0.eval_seen_count.sum() == 0
    model.tracking_mode = TrackingMode.TRAIN
    model(x)
    model.tracking_mode = TrackingMode.EVAL
    model(x)
    model(x)
    for layer in (model.layer0, model.layer1, model.layer2):
        assert set(layer.train_seen_count.tolist()) == {8}
        assert set(layer.eval_seen_count.tolist()) == {16}
    assert model.out.train_seen_count.sum() == 0 and model.out.eval_seen_count.sum() == 0  # skip_register=True


def test_model_age_counts_training_samples_only():
    model = MNISTModel()
    x, _ = mnist_batch(8)
    model.train()
    model(x)
    model(x[:3])
    model.eval()
    model(x)
    assert model.age == 11
    assert "model_age" in model.state_dict()


def test_tracing_changes_no_counter_no_age_and_no_running_statistic():
    torch.manual_seed(0)
    model = ConvBNModel()
    model.tracking_mode = TrackingMode.TRAIN
    model(small_batch(4)[0])
    before = fingerprint(model)
    model.dependency_graph()
    model.plan_add_neurons(layer_index=0, neuron_count=2)
    assert_same(before, fingerprint(model))
    assert model.training


def test_counters_follow_prune_start_at_zero_for_added_and_reset_on_reinit():
    torch.manual_seed(0)
    model = MNISTModel()
    model.tracking_mode = TrackingMode.TRAIN
    for seed in range(3):
        model(mnist_batch(16, seed=seed)[0])
    model.tracking_mode = TrackingMode.EVAL
    model(mnist_batch(16, seed=9)[0])
    train, evals = model.layer1.train_trigger_count.clone(), model.layer1.eval_trigger_count.clone()
    model.prune(layer_index=1, neuron_indices={1})
    assert torch.equal(model.layer1.train_trigger_count, train[[0, 2, 3]])
    assert torch.equal(model.layer1.eval_trigger_count, evals[[0, 2, 3]])
    assert model.layer1.train_seen_count.tolist() == [48, 48, 48]
    model.add_neurons(layer_index=1, neuron_count=2)
    assert model.layer1.train_trigger_count.tolist()[3:] == [0, 0]
    assert model.layer1.train_seen_count.tolist() == [48, 48, 48, 0, 0]
    model.reinit_neurons(layer_index=1, neuron_indices={0})
    assert model.layer1.train_seen_count.tolist() == [0, 48, 48, 0, 0]
    assert model.layer1.train_trigger_count[0] == 0
    assert torch.equal(model.layer1.train_trigger_count[1:3], train[[2, 3]])


def test_stats_report_prints_two_lines_per_neuron_and_flags_dead_and_weak_neurons():
    model = MNISTModel()
    layer = model.layer1
    layer.train_trigger_count.copy_(torch.tensor([500, 0, 100, 480]))
    layer.train_seen_count.fill_(1000)
    layer.eval_trigger_count.copy_(torch.tensor([50, 0, 9, 40]))
    layer.eval_seen_count.fill_(100)
    report = model.stats_report()
    lines = report.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("Layer 1 ")))
    block = lines[start + 1 : start + 9]
    assert block[0] == "Neuron 00000:  train: 0.5000 (    500 /    1000)"
    assert block[1] == "            :  eval : 0.5000 (     50 /     100)"
    assert block[2].endswith("<------ DEAD") and block[4].endswith("<------ WEAK")
    assert not block[6].endswith("WEAK")
    pattern = re.compile(r"^Neuron \d{5}:  train: \d\.\d{4} \( *\d+ / *\d+\)")
    assert all(pattern.match(line) for line in lines if line.startswith("Neuron"))
    assert sum(line.startswith("Neuron") for line in lines) == 2 + 4 + 10 + 10


def test_neuron_stats_rows_match_the_counters():
    model = MNISTModel()
    model.layer0.train_trigger_count.copy_(torch.tensor([3, 4]))
    model.layer0.train_seen_count.fill_(5)
    rows = [r for r in model.neuron_stats() if r["layer_index"] == 0 and r["split"] == "train"]
    assert rows == [
        {"layer_index": 0, "neuron_index": 0, "split": "train", "trigger_count": 3, "seen_samples": 5},
        {"layer_index": 0, "neuron_index": 1, "split": "train", "trigger_count": 4, "seen_samples": 5},
    ]


def test_count_positive_counts_rows_above_zero_exactly_nan_and_zeros_excluded():
    sums = torch.tensor([[1.0, -0.0, float("nan")], [0.0, 2.5, float("inf")], [1e-3, -1e-3, -float("inf")]])
    for dtype in (torch.float32, torch.float64, torch.float16):
        counts = count_positive(sums.to(dtype))
        assert counts.tolist() == [2, 1, 1] and counts.dtype == torch.int64
    assert count_positive(torch.zeros(0, 3)).tolist() == [0, 0, 0]
    big = torch.randn(70_000, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.equal(count_positive(big), (big > 0).sum(0))


def test_count_positive_stays_exact_past_the_rows_a_uint8_block_holds():
    # 255 rows that all trigger fill a uint8 block to its limit; more rows must carry into int64
    for rows in (254, 255, 256, 510, 511, 1000, 70_001):
        sums = torch.ones(rows, 3)
        sums[:, 1] = -1.0
        sums[::7, 2] = -1.0
        assert count_positive(sums).tolist() == [rows, 0, rows - len(range(0, rows, 7))]
    sums = torch.randn(5_000, 9, generator=torch.Generator().manual_seed(2))
    assert torch.equal(count_positive(sums), (sums > 0).sum(0))
    assert count_positive(torch.zeros(300, 0)).shape == (0,)  # a layer without neurons counts nothing


def test_spatial_sums_of_every_output_shape():
    torch.manual_seed(0)
    conv_out = torch.randn(4, 3, 5, 5, requires_grad=True)
    sums = spatial_sums(conv_out, 1)
    assert not sums.requires_grad and torch.allclose(sums, conv_out.detach().sum((2, 3)))
    one_by_one = torch.randn(4, 3, 1, 1)
    assert torch.equal(spatial_sums(one_by_one, 1), one_by_one.view(4, 3))  # a 1×1 map is its own sum
    seq = torch.randn(4, 6, 2)  # a linear layer over a sequence: neurons last, summed over positions
    assert torch.allclose(spatial_sums(seq, -1), seq.sum(1))
    assert torch.equal(spatial_sums(seq[:, :1], -1), seq[:, 0])
    assert spatial_sums(torch.tensor([1.0, -1.0]), -1).tolist() == [[1.0, -1.0]]  # one unbatched sample


def test_an_unbatched_linear_input_counts_as_one_sample():
    layer = LinearWithNeuronOps(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    layer.tracking_mode = TrackingMode.TRAIN
    layer(torch.tensor([1.0, 1.0]))
    assert layer.train_trigger_count.tolist() == [1, 0]
    assert layer.train_seen_count.tolist() == [1, 1]
