"""``convert_to_ops``: make an existing model (e.g. a torchvision ResNet) editable."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from weightslab.errors import ConfigurationError
from weightslab.surgery.attention import MultiheadAttentionWithNeuronOps, convertible_attention
from weightslab.surgery.modules import (
    BatchNorm2dWithNeuronOps,
    Conv2dWithNeuronOps,
    LinearWithNeuronOps,
    NeuronLayer,
)
from weightslab.surgery.network import NetworkWithOps
from weightslab.surgery.recurrent import convertible_recurrent, recurrent_ops
from weightslab.surgery.window_attention import (
    RelativeAttentionWithNeuronOps,
    WindowAttentionWithNeuronOps,
    convertible_window_attention,
    window_attention_ops,
)

__all__ = ["CONVERSION_VERSION", "EXCLUDED", "ConvertedNetwork", "conversion_version", "convert_to_ops",
           "use_conversion"]

#: What convert_to_ops converts; an experiment records it, and reopening or replaying it converts the same way
#: (what a later version converts shifts ``model.layers`` indices and checkpoint keys of recorded experiments).
#: 1: ``nn.Conv2d``, ``nn.Linear``, ``nn.BatchNorm2d`` of exactly these types.
#: 2: also their subclasses that compute the same (see :func:`convert_to_ops`).
#: 3: also ``nn.MultiheadAttention`` (its projections become ops layers: ``in_proj``, ``out_proj``).
#: 4: also ``nn.LSTM``, ``nn.GRU``, ``nn.RNN`` of one layer and one direction (their hidden units are neurons).
#: 5: also torchvision's Swin / Swin v2 / MaxViT attention modules (their heads' width is read from their
#:    projections, so the residual stream is editable); checkpoint keys and layer order are those of 4.
CONVERSION_VERSION = 5


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
#: plain parameters (lazy, quantization-aware) or their layer computes something else. The ``out_proj`` of an
#: ``nn.MultiheadAttention`` is read by the attention op directly, never called: the attention module as a whole
#: is converted instead (version 3), or left as it is.
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


def _convert(child: nn.Module, version: int) -> tuple[nn.Module, int] | None:
    """The ops module replacing ``child``, and the conversion version that first converts it; or None."""
    new: Any
    if version >= 3 and convertible_attention(child):
        return MultiheadAttentionWithNeuronOps(child), 3  # type: ignore[arg-type]
    if version >= 4 and convertible_recurrent(child):
        return recurrent_ops(child), 4
    needed = 1
    for base in (nn.Conv2d, nn.Linear, nn.BatchNorm2d):
        if _convertible(child, base):
            needed = 1 if type(child) is base else 2
            break
    else:
        return None
    if needed > version:
        return None
    if isinstance(child, nn.Conv2d):
        c: Any = child
        new = Conv2dWithNeuronOps(
            c.in_channels, c.out_channels, c.kernel_size, stride=c.stride, padding=c.padding,
            dilation=c.dilation, groups=c.groups, bias=c.bias is not None, padding_mode=c.padding_mode,
            device="meta",
        )
    elif isinstance(child, nn.Linear):
        lin: Any = child
        new = LinearWithNeuronOps(lin.in_features, lin.out_features, bias=lin.bias is not None, device="meta")
    else:
        bn: Any = child
        new = BatchNorm2dWithNeuronOps(
            bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
            track_running_stats=bn.track_running_stats, device="meta",
        )
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            new._buffers[name] = bn._buffers.get(name)
    # The same Parameter objects: an optimizer built on the plain model keeps working.
    for name, param in child._parameters.items():
        new._parameters[name] = param
    new._reset_neuron_state()
    new.train(child.training)
    return new, needed


#: One replacement made by convert_to_ops: (parent module, child name, the original child, the version needing it).
Conversion = tuple[nn.Module, str, nn.Module, int]


def _replace_children(module: nn.Module, version: int, done: list[Conversion]) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, NeuronLayer | MultiheadAttentionWithNeuronOps):
            continue
        if version >= 5 and convertible_window_attention(child):
            # Its projections are converted first (as every version does), then shared by the replacement,
            # so that converting back (use_conversion) returns the original with its ops layers.
            _replace_children(child, version, done)
            module._modules[name] = window_attention_ops(child)
            done.append((module, name, child, 5))
            continue
        replacement = _convert(child, version)
        if replacement is None:
            _replace_children(child, version, done)
        else:
            module._modules[name] = replacement[0]
            done.append((module, name, child, replacement[1]))


def convert_to_ops(model: nn.Module, *, version: int = CONVERSION_VERSION) -> NetworkWithOps:
    """Replace every ``nn.Conv2d``, ``nn.Linear`` and ``nn.BatchNorm2d`` of ``model`` by its ops layer.

    Subclasses are converted too, unless they compute something else (their own ``forward``),
    their weights are not plain parameters (weight norm, parametrizations, lazy or
    quantization-aware layers) or they are listed in :data:`EXCLUDED`. An ``nn.MultiheadAttention``
    becomes a :class:`~weightslab.surgery.attention.MultiheadAttentionWithNeuronOps` (its residual
    stream is then editable), and a one-layer, one-direction ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` its
    ops layer (its hidden units are then neurons); torchvision's Swin, Swin v2 and MaxViT attention
    modules become :mod:`~weightslab.surgery.window_attention` modules (their residual stream is then
    editable). ``version`` (see :data:`CONVERSION_VERSION`) converts as an earlier
    WeightsLab did; an experiment records the version and converts its model back to it on reopen.

    The parameters and running statistics are kept (the same objects). A
    :class:`NetworkWithOps` is converted in place and returned; any other module is
    wrapped in a :class:`ConvertedNetwork` (``.model`` is the original, converted
    in place). Dependencies between layers are traced on the first edit.

    Raises:
        ConfigurationError: ``model`` is not an ``nn.Module``, or is itself a single ops layer, or
            ``version`` is not one of 1..CONVERSION_VERSION.

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
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= CONVERSION_VERSION:
        raise ConfigurationError(f"version must be an integer from 1 to {CONVERSION_VERSION}, got {version!r}")
    done: list[Conversion] = []
    _replace_children(model, version, done)
    network = model if isinstance(model, NetworkWithOps) else ConvertedNetwork(model)
    previous = network.__dict__.get("_conversions", ())
    network.__dict__["_conversions"] = [*previous, *done]  # not registered: the originals are no submodules
    network.__dict__["_conversion_version"] = min(version, network.__dict__.get("_conversion_version", version))
    network._bind(network)
    return network


def conversion_version(network: nn.Module) -> int | None:
    """The version :func:`convert_to_ops` converted ``network`` with; None when it converted nothing."""
    if not network.__dict__.get("_conversions"):
        return None
    return int(network.__dict__["_conversion_version"])


def use_conversion(network: nn.Module, version: int) -> bool:
    """Undo what a conversion later than ``version`` converted in ``network``: the layers come back as they were.

    For an experiment recorded with an earlier conversion (its ``model.layers`` indices and checkpoint
    keys are those of that version). The original modules come back with the same Parameter objects.
    Returns whether anything changed.

    Raises:
        ConfigurationError: a layer to undo was edited already (its widths changed), or ``version`` is
            not one of 1..CONVERSION_VERSION.
    """
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= CONVERSION_VERSION:
        raise ConfigurationError(f"version must be an integer from 1 to {CONVERSION_VERSION}, got {version!r}")
    conversions: list[Conversion] = network.__dict__.get("_conversions", [])
    undo = [c for c in conversions if c[3] > version]
    for parent, name, original, _ in undo:
        converted = parent._modules[name]
        if converted is None or not _same_widths(converted, original):
            raise ConfigurationError(
                f"cannot convert {type(original).__name__} back to conversion version {version}: it was edited "
                "after convert_to_ops; reopen the experiment with a model built as it was recorded."
            )
    for parent, name, original, _ in undo:
        parent._modules[name] = original
    network.__dict__["_conversions"] = [c for c in conversions if c[3] <= version]
    network.__dict__["_conversion_version"] = version
    if undo:
        cast: Any = network
        cast._bind(network)
    return bool(undo)


def _same_widths(converted: nn.Module, original: nn.Module) -> bool:
    if isinstance(converted, WindowAttentionWithNeuronOps | RelativeAttentionWithNeuronOps):
        return converted.unchanged()
    if isinstance(converted, MultiheadAttentionWithNeuronOps):
        orig: Any = original
        return tuple(converted.in_proj.weight.shape) == (3 * orig.embed_dim, orig.embed_dim) and \
            tuple(converted.out_proj.weight.shape) == (orig.embed_dim, orig.embed_dim)
    return all(getattr(converted, attr) == getattr(original, attr)
               for attr in ("in_channels", "out_channels", "in_features", "out_features", "num_features", "groups",
                            "input_size", "hidden_size")
               if hasattr(original, attr))
