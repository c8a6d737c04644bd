"""``convert_to_ops``: make an existing model (e.g. a torchvision ResNet) editable."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from weightslab.errors import ConfigurationError
from weightslab.surgery.modules import (
    BatchNorm2dWithNeuronOps,
    Conv2dWithNeuronOps,
    LinearWithNeuronOps,
    NeuronLayer,
)
from weightslab.surgery.network import NetworkWithOps

__all__ = ["EXCLUDED", "ConvertedNetwork", "convert_to_ops"]


class ConvertedNetwork(NetworkWithOps):
    """A plain model wrapped as a :class:`NetworkWithOps` (built by :func:`convert_to_ops`).

    ``layers`` are its ops layers in registration order; the model is ``self.model``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if args and isinstance(args[0], torch.Tensor):
            self.maybe_update_age(args[0])
        return self.model(*args, **kwargs)


#: Subclasses of the converted torch layers that convert_to_ops leaves as they are: their weights are not
#: plain parameters (lazy, quantization-aware) or their layer computes something else. The ``out_proj`` of
#: ``nn.MultiheadAttention`` is read by the attention op directly, never called: converting it would make
#: nothing editable (attention heads are not, yet) and would shift the layer indices of every recorded
#: experiment on a transformer.
EXCLUDED: tuple[type[nn.Module], ...] = (
    nn.modules.linear.NonDynamicallyQuantizableLinear,
    nn.LazyLinear,
    nn.LazyConv2d,
    nn.LazyBatchNorm2d,
    nn.SyncBatchNorm,
    torch.ao.nn.qat.Linear,
    torch.ao.nn.qat.Conv2d,
    torch.ao.nn.intrinsic.qat.ConvBn2d,
    torch.ao.nn.intrinsic.qat.ConvBnReLU2d,
    torch.ao.nn.intrinsic.qat.ConvReLU2d,
    torch.ao.nn.intrinsic.qat.LinearReLU,
)


def _convertible(child: nn.Module, base: type[nn.Module]) -> bool:
    """An instance of ``base`` (or of a subclass) that computes exactly what ``base`` does, with plain weights."""
    if not isinstance(child, base) or isinstance(child, EXCLUDED):
        return False
    kind = type(child)
    own_code = kind.forward is not base.forward or getattr(kind, "_conv_forward", None) is not getattr(
        base, "_conv_forward", None
    )
    if own_code:
        return False  # its own forward would be lost
    # Weight norm, parametrizations: the weight is computed, not a parameter.
    return not (set(child._parameters) - {"weight", "bias"} or hasattr(child, "parametrizations")
                or child._forward_pre_hooks)


def _convert(child: nn.Module) -> nn.Module | None:
    new: Any
    if _convertible(child, nn.Conv2d):
        c: Any = child
        new = Conv2dWithNeuronOps(
            c.in_channels, c.out_channels, c.kernel_size, stride=c.stride, padding=c.padding,
            dilation=c.dilation, groups=c.groups, bias=c.bias is not None, padding_mode=c.padding_mode,
            device="meta",
        )
    elif _convertible(child, nn.Linear):
        lin: Any = child
        new = LinearWithNeuronOps(lin.in_features, lin.out_features, bias=lin.bias is not None, device="meta")
    elif _convertible(child, nn.BatchNorm2d):
        bn: Any = child
        new = BatchNorm2dWithNeuronOps(
            bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
            track_running_stats=bn.track_running_stats, device="meta",
        )
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            new._buffers[name] = bn._buffers.get(name)
    else:
        return None
    # The same Parameter objects: an optimizer built on the plain model keeps working.
    for name, param in child._parameters.items():
        new._parameters[name] = param
    new._reset_neuron_state()
    new.train(child.training)
    return new


def _replace_children(module: nn.Module) -> int:
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, NeuronLayer):
            continue
        replacement = _convert(child)
        if replacement is None:
            count += _replace_children(child)
        else:
            module._modules[name] = replacement
            count += 1
    return count


def convert_to_ops(model: nn.Module) -> NetworkWithOps:
    """Replace every ``nn.Conv2d``, ``nn.Linear`` and ``nn.BatchNorm2d`` of ``model`` by its ops layer.

    Subclasses are converted too, unless they compute something else (their own ``forward``),
    their weights are not plain parameters (weight norm, parametrizations, lazy or
    quantization-aware layers) or they are listed in :data:`EXCLUDED`.

    The parameters and running statistics are kept (the same objects). A
    :class:`NetworkWithOps` is converted in place and returned; any other module is
    wrapped in a :class:`ConvertedNetwork` (``.model`` is the original, converted
    in place). Dependencies between layers are traced on the first edit.

    Raises:
        ConfigurationError: ``model`` is not an ``nn.Module``, or is itself a single ops layer.

    Example:
        >>> net = convert_to_ops(torchvision.models.resnet18(num_classes=10))
        >>> net(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
        >>> net.prune(layer_index=0, neuron_indices={0})
    """
    if not isinstance(model, nn.Module) or isinstance(model, NeuronLayer):
        raise ConfigurationError(
            f"convert_to_ops expects a model (an nn.Module containing layers), got {type(model).__name__}."
        )
    _replace_children(model)
    if isinstance(model, NetworkWithOps):
        model._bind(model)
        return model
    return ConvertedNetwork(model)
