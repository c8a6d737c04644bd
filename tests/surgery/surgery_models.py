"""Models the surgery tests run on: the tutorial's MNISTModel (verbatim), a
conv → BN → conv → flatten → Linear model, and a converted torchvision ResNet-18."""

from __future__ import annotations

import torch as th
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from weightslab.surgery import (
    BatchNorm2dWithNeuronOps,
    Conv2dWithNeuronOps,
    LinearWithNeuronOps,
    NetworkWithOps,
    TrackingMode,
    convert_to_ops,
)


# --- copied verbatim from the tutorial (seed/weightslab-tutorial.md) ---
class MNISTModel(NetworkWithOps):
    def __init__(self):
        super(MNISTModel, self).__init__()  # noqa: UP008 - verbatim from the tutorial
        self.tracking_mode = TrackingMode.DISABLED
        self.layer0 = Conv2dWithNeuronOps(
            in_channels=1, out_channels=2, kernel_size=3)
        self.mpool0 = nn.MaxPool2d(2)
        self.layer1 = Conv2dWithNeuronOps(
            in_channels=2, out_channels=4, kernel_size=3)
        self.mpool1 = nn.MaxPool2d(2)
        self.layer2 = Conv2dWithNeuronOps(
            in_channels=4, out_channels=10, kernel_size=3)
        self.mpool2 = nn.MaxPool2d(2)
        self.out = LinearWithNeuronOps(in_features=10, out_features=10)
        self.layers = [self.layer0, self.layer1, self.layer2, self.out]

    def forward(self, input: th.Tensor):
        self.maybe_update_age(input)

        x = self.layer0(input)
        x = F.relu(x)
        x = self.mpool0(x)

        x = self.layer1(x)
        x = F.relu(x)
        x = self.mpool1(x)

        x = self.layer2(x)
        x = F.relu(x)
        x = self.mpool2(x)

        x = x.view(x.size(0), -1)
        output = self.out(x, skip_register=True)

        output = F.log_softmax(output, dim=1)
        return output
# --- end of the tutorial's code ---


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
