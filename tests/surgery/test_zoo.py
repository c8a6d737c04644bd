"""The zoo's CI-sized run: one torchvision model per family, pruned and grown, every edit checked.

``tools/zoo.py`` runs every torchvision classification model (the table is in ``docs/zoo.md``);
this runs one model per family in process, with a layer or two each, so that it fits the
suite (about a minute on one CPU core). Heavy families run a smaller member of the same
architecture class. Every edit must be either done and checked (output shape, exact function
preservation of an add, parameters really gone, optimizer state in step, a training step
after) or refused cleanly (the model unchanged); nothing may crash.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torchvision.models.maxvit import MaxVit

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def _small_maxvit() -> tuple[torch.nn.Module, int]:
    model = MaxVit(input_size=(32, 32), stem_channels=16, partition_size=2, block_channels=[16, 32],
                   block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.0, num_classes=10)
    return model, 32


# family → (model, layers, smaller builder or None); the heavy ones edit one layer.
CI = {
    "alexnet": ("alexnet", 1, None),
    "convnext": ("convnext_tiny", 2, None),
    "densenet": ("densenet121", 2, None),
    "efficientnet": ("efficientnet_b0", 2, None),
    "efficientnet_v2": ("efficientnet_v2_s", 2, None),
    "googlenet": ("googlenet", 2, None),
    "inception": ("inception_v3", 2, None),
    "maxvit": ("maxvit_t", 2, _small_maxvit),
    "mnasnet": ("mnasnet0_5", 2, None),
    "mobilenet_v2": ("mobilenet_v2", 2, None),
    "mobilenet_v3": ("mobilenet_v3_small", 2, None),
    "regnet_x": ("regnet_x_400mf", 2, None),
    "regnet_y": ("regnet_y_400mf", 2, None),
    "resnet": ("resnet18", 2, None),
    "resnext": ("resnext50_32x4d", 2, None),
    "shufflenet": ("shufflenet_v2_x0_5", 2, None),
    "squeezenet": ("squeezenet1_1", 2, None),
    "swin": ("swin_t", 2, None),
    "swin_v2": ("swin_v2_t", 2, None),
    "vgg": ("vgg11_bn", 1, None),
    "vit": ("vit_b_32", 2, None),
    "wide_resnet": ("wide_resnet50_2", 1, None),
}
# Families whose every sampled layer must be editable by prune 1, prune 25 % and add 2.
FULLY_EDITABLE = {
    "alexnet", "convnext", "densenet", "efficientnet", "efficientnet_v2", "googlenet", "inception", "mnasnet",
    "mobilenet_v2", "mobilenet_v3", "regnet_x", "regnet_y", "resnet", "resnext", "shufflenet", "squeezenet", "swin",
    "swin_v2", "vgg", "vit", "wide_resnet",
}


@pytest.fixture(scope="module")
def zoo():
    sys.path.insert(0, str(TOOLS))
    try:
        import zoo as module
    finally:
        sys.path.remove(str(TOOLS))
    return module


@pytest.fixture(scope="module")
def reports(zoo):
    return {family: zoo.run_model(name, layers, builder=builder) for family, (name, layers, builder) in CI.items()}


def test_the_ci_set_has_one_model_of_every_family(zoo):
    assert set(CI) == {family for _, family in zoo.FAMILIES}
    assert all(zoo.family_of(name) == family for family, (name, _, _) in CI.items())


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(CI))
def test_every_edit_is_done_and_checked_or_cleanly_refused(family, reports):
    report = reports[family]
    assert report.outcomes and not report.error
    problems = [(o.layer, o.op, o.status, o.detail) for o in report.outcomes if o.status in ("crash", "failed")]
    assert problems == []
    if family in FULLY_EDITABLE:
        assert [o.status for o in report.outcomes] == ["ok"] * len(report.outcomes), report.outcomes
    for outcome in report.outcomes:
        if outcome.status == "refused":
            assert outcome.detail.startswith("cannot "), outcome.detail  # a SurgeryError that says why
        if outcome.op == "add 2" and outcome.status == "ok" and not outcome.normalised:
            assert outcome.add_error is not None and outcome.add_error <= 1e-5


def test_the_table_adds_up(zoo, reports):
    rows = zoo.summarize(reports.values())
    total = rows[-1]
    assert total["family"] == "all" and total["models"] == len(CI)
    assert total["crashes"] == 0 and total["failed"] == 0
    assert total["layers"] == sum(layers for _, layers, _ in CI.values())
    assert "| family |" in zoo.format_table(rows, markdown=True)
