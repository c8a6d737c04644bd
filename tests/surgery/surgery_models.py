"""Models the surgery tests run on: the tutorial's MNISTModel (verbatim), a
conv → BN → conv → flatten → Linear model, and a converted torchvision ResNet-18."""

from __future__ import annotations

import torch as th
import torch.nn as nn
import torch.nn.functional as F
import torchvision

# The tutorial's MNISTModel, verbatim (one copy, in the demo module users also run).
from weightslab.demo import MNISTModel  # noqa: F401 - re-exported for the tests
from weightslab.surgery import (
    BatchNorm2dWithNeuronOps,
    Conv2dWithNeuronOps,
    LinearWithNeuronOps,
    NetworkWithOps,
    convert_to_ops,
)


class ConvBNModel(NetworkWithOps):
    """conv → BN → relu → conv → BN → relu → pool → flatten (C×4×4 columns) → Linear → Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = Conv2dWithNeuronOps(1, 6, kernel_size=3, padding=1)
        self.bn0 = BatchNorm2dWithNeuronOps(6)
        self.conv1 = Conv2dWithNeuronOps(6, 8, kernel_size=3, padding=1)
        self.bn1 = BatchNorm2dWithNeuronOps(8)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = LinearWithNeuronOps(8 * 4 * 4, 12)
        self.out = LinearWithNeuronOps(12, 5)
        self.layers = [self.conv0, self.conv1, self.fc, self.out]

    def forward(self, x: th.Tensor) -> th.Tensor:
        self.maybe_update_age(x)
        x = F.relu(self.bn0(self.conv0(x)))
        x = F.relu(self.bn1(self.conv1(x)))
        x = th.flatten(self.pool(x), 1)
        x = F.relu(self.fc(x))
        return self.out(x, skip_register=True)


def resnet18() -> NetworkWithOps:
    """torchvision's ResNet-18 (10 classes) with its layers converted to ops layers."""
    return convert_to_ops(torchvision.models.resnet18(num_classes=10))


def mnist_batch(batch: int = 8, seed: int = 0) -> tuple[th.Tensor, th.Tensor]:
    generator = th.Generator().manual_seed(seed)
    return th.randn(batch, 1, 28, 28, generator=generator), th.randint(0, 10, (batch,), generator=generator)


def small_batch(batch: int = 8, seed: int = 0, classes: int = 5) -> tuple[th.Tensor, th.Tensor]:
    generator = th.Generator().manual_seed(seed)
    return th.randn(batch, 1, 12, 12, generator=generator), th.randint(0, classes, (batch,), generator=generator)
