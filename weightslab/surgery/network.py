"""``NetworkWithOps``: an ``nn.Module`` whose ops layers can be edited while it trains.

The network owns: the layer order that ``layer_index`` refers to (``self.layers``,
else the order in which ops layers are registered), the tracking mode, the model
age, the traced dependency graph (re-traced after every structural edit), the
attached optimizer's step hooks, and the observers that hear of every successful
operation. The editing operations themselves live in ``operations.py``.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from weightslab.errors import ConfigurationError, SurgeryError
from weightslab.events.record import Observable
from weightslab.surgery.graph import Graph
from weightslab.surgery.modules import NeuronLayer
from weightslab.surgery.operations import SurgeryOperations
from weightslab.surgery.optim_state import OptimizerBinding
from weightslab.surgery.report import format_stats
from weightslab.surgery.trace import trace_network
from weightslab.surgery.tracking import PendingSums, TrackingMode

__all__ = ["NetworkWithOps"]

_TRANSIENT = ("_wl_observers", "_wl_binding", "_wl_graph", "_wl_targets", "_wl_example_hook")


def _module(layer: NeuronLayer) -> nn.Module:
    return layer  # type: ignore[return-value]  # every NeuronLayer is also an nn.Module


def _check_layers(layers: list[Any]) -> None:
    wrong = [type(m).__name__ for m in layers if not isinstance(m, NeuronLayer)]
    if wrong:
        raise ConfigurationError(
            f"self.layers may only hold Conv2dWithNeuronOps / LinearWithNeuronOps / BatchNorm2dWithNeuronOps "
            f"layers, got {wrong}; convert plain layers with convert_to_ops(model)."
        )


def _remember_example(network: NetworkWithOps, args: tuple[Any, ...]) -> None:
    if network._wl_example is None and args and isinstance(args[0], torch.Tensor) and not network._wl_tracing:
        network._remember(args[0])


class NetworkWithOps(SurgeryOperations, Observable, nn.Module):
    """Base class of editable networks (subclass it like ``nn.Module``).

    Example:
        >>> class Net(NetworkWithOps):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc1 = LinearWithNeuronOps(4, 8)
        ...         self.out = LinearWithNeuronOps(8, 2)
        ...         self.layers = [self.fc1, self.out]
        ...     def forward(self, x):
        ...         self.maybe_update_age(x)
        ...         return self.out(torch.relu(self.fc1(x)), skip_register=True)
    """

    model_age: torch.Tensor
    _wl_tracking_mode: TrackingMode
    _wl_graph: Graph | None
    _wl_example: tuple[tuple[int, ...], torch.dtype] | None
    _wl_binding: OptimizerBinding | None
    _wl_tracing: bool
    _wl_targets: list[tuple[torch.Tensor, NeuronLayer, str]] | None

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("model_age", torch.zeros((), dtype=torch.int64))
        state = self.__dict__
        state["_wl_tracking_mode"] = TrackingMode.DISABLED
        state["_wl_layers"] = None
        state["_wl_graph"] = None
        state["_wl_example"] = None
        state["_wl_binding"] = None
        state["_wl_tracing"] = False
        state["_wl_targets"] = None
        state["_wl_example_hook"] = self.register_forward_pre_hook(_remember_example)

    # -- binding of layers ----------------------------------------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "layers" and isinstance(value, nn.ModuleList | nn.Sequential):
            # nn.Module registers the container without calling the property setter.
            _check_layers(list(value))
            self.__dict__["_wl_layers"] = value
        super().__setattr__(name, value)
        if isinstance(value, nn.Module) and "_wl_tracking_mode" in self.__dict__:
            self._bind(value)

    def _bind(self, root: nn.Module) -> None:
        ref = weakref.ref(self)
        for module in root.modules():
            if isinstance(module, NeuronLayer):
                module._wl_network = ref
                module._wl_mode = self._wl_tracking_mode
        self._forget_graph()
        self._invalidate_step_targets()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in _TRANSIENT:
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.update({"_wl_binding": None, "_wl_graph": None, "_wl_targets": None})
        self._bind(self)

    # -- layers ---------------------------------------------------------------------------------------------

    @property
    def layers(self) -> list[NeuronLayer]:
        """The editable layers, in the order ``layer_index`` refers to.

        Assign a list (``self.layers = [...]``) to choose the order; by default, every
        ops layer in registration order.
        """
        explicit = self.__dict__.get("_wl_layers")
        if isinstance(explicit, nn.Module):
            return list(explicit)  # type: ignore[call-overload]
        if explicit is not None:
            return explicit
        return [m for m in self.modules() if isinstance(m, NeuronLayer)]

    @layers.setter
    def layers(self, value: Any) -> None:
        layers = list(value)
        _check_layers(layers)
        self.__dict__["_wl_layers"] = value if isinstance(value, list) else layers
        for layer in layers:
            self._bind(layer)

    def _layer_names(self) -> dict[NeuronLayer, str]:
        return {m: name for name, m in self.named_modules() if isinstance(m, NeuronLayer)}

    def layer_index_of(self, layer: NeuronLayer) -> int:
        """Position of ``layer`` in ``self.layers``.

        Raises:
            ConfigurationError: the layer is not listed.
        """
        for index, candidate in enumerate(self.layers):
            if candidate is layer:
                return index
        raise ConfigurationError(
            f"this {type(layer).__name__} is not in model.layers, so it has no layer_index; add it to "
            "self.layers to edit it."
        )

    def _label(self, name: str) -> str:
        by_name = {n: m for m, n in self._layer_names().items()}
        layer = by_name.get(name)
        for index, candidate in enumerate(self.layers):
            if candidate is layer:
                return f"layer {index} ({name or 'root'}: {type(layer).__name__})"
        return f"module {name} ({type(layer).__name__})"

    def _name_of(self, layer: NeuronLayer) -> str:
        names = self._layer_names()
        if layer not in names:
            raise ConfigurationError(
                f"a {type(layer).__name__} in model.layers is not a submodule of the model; assign it as an "
                "attribute (self.x = ...) before listing it in self.layers."
            )
        return names[layer]

    # -- tracking and age -----------------------------------------------------------------------------------

    @property
    def tracking_mode(self) -> TrackingMode:
        """Which neuron counters forward passes update (``TrackingMode.TRAIN/EVAL/DISABLED``)."""
        return self.__dict__.get("_wl_tracking_mode", TrackingMode.DISABLED)

    @tracking_mode.setter
    def tracking_mode(self, mode: TrackingMode) -> None:
        if not isinstance(mode, TrackingMode):
            raise ConfigurationError(f"tracking_mode must be a TrackingMode, got {mode!r}.")
        self.__dict__["_wl_tracking_mode"] = mode
        if "_modules" in self.__dict__:
            for module in self.modules():
                if isinstance(module, NeuronLayer):
                    module._flush_triggers()  # kept sums count in the mode they were taken in
                    module._wl_mode = mode

    @contextmanager
    def batched_trigger_counts(self) -> Iterator[None]:
        """Within the block, each tracked forward only computes its layers' spatial sums; the
        counting runs once for many forwards (at most 64, or ~1 MiB of sums a layer) and when
        the block ends, the tracking mode changes or an edit (prune, add, reinit, a state-dict
        load) is about to change a layer. The counters come out the same (they are integers);
        read them after the block. The Experiment's train and eval loops use it.
        """
        layers = [m for m in self.modules() if isinstance(m, NeuronLayer)]
        for layer in layers:
            layer._flush_triggers()
            layer._wl_pending = PendingSums()
        try:
            yield
        finally:
            for layer in layers:
                layer._flush_triggers()
                layer._wl_pending = None

    @property
    def age(self) -> int:
        """Model age: the number of training samples the model has processed."""
        return int(self.model_age)

    def maybe_update_age(self, input: torch.Tensor) -> None:
        """Add the batch size of ``input`` to the model age when the model is training."""
        if self._wl_tracing:
            return
        if self.training:
            self.model_age.add_(input.shape[0])
        if self._wl_example is None:
            self._remember(input)

    def _remember(self, input: torch.Tensor) -> None:
        if self._wl_example is None and input.dim() >= 1:
            self._wl_example = (tuple(input.shape[1:]), input.dtype)
            hook = self.__dict__.pop("_wl_example_hook", None)
            if hook is not None:
                hook.remove()

    def set_example_input(self, example: torch.Tensor) -> None:
        """Give the input shape used to trace the network (one sample or a batch, batch first).

        Needed only before the first forward pass; afterwards the shape seen first is used.
        """
        if not isinstance(example, torch.Tensor) or example.dim() < 1:
            raise ConfigurationError("set_example_input expects a tensor with a batch dimension, e.g. x[:1].")
        self._wl_example = None
        self._remember(example)
        self._forget_graph()

    # -- tracing --------------------------------------------------------------------------------------------

    def _example_batch(self) -> torch.Tensor:
        if self._wl_example is None:
            raise SurgeryError(
                "the model has not seen an input yet, so its layer dependencies cannot be traced; run one "
                "forward pass (or call model.set_example_input(x)) before editing its structure."
            )
        shape, dtype = self._wl_example
        first = next(iter(self.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
        if first is not None and dtype.is_floating_point and first.dtype.is_floating_point:
            dtype = first.dtype  # follow model.double() / .half() done after the first forward
        return torch.zeros((2, *shape), dtype=dtype, device=device)

    def _trace(self, planned: Mapping[str, np.ndarray] | None = None) -> Graph:
        example = self._example_batch()
        self.__dict__["_wl_tracing"] = True
        try:
            return trace_network(self, (example,), self._layer_names(), planned)
        finally:
            self.__dict__["_wl_tracing"] = False

    def _forget_graph(self) -> None:
        """Drop the cached trace (after a structural edit); the next edit re-traces."""
        self.__dict__["_wl_graph"] = None

    def dependency_graph(self) -> Graph:
        """The traced dependency graph (cached until the next structural edit)."""
        if self._wl_graph is None:
            try:
                self._wl_graph = self._trace()
            except SurgeryError:
                raise
            except Exception as error:
                raise SurgeryError(f"tracing the forward pass with a dummy input failed: {error}") from error
        return self._wl_graph

    # -- optimizer ------------------------------------------------------------------------------------------

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Let surgery keep ``optimizer``'s state consistent and apply per-neuron learning rates.

        The Experiment calls this; call it yourself when you train with your own optimizer.
        Installs step hooks on the optimizer (replacing those of a previously attached one).
        """
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigurationError(f"attach_optimizer expects a torch.optim.Optimizer, got {type(optimizer).__name__}.")
        self.detach_optimizer()
        self._wl_binding = OptimizerBinding(self, optimizer)
        for layer in self._layer_names():
            weight = getattr(layer, "weight", None)
            module: Any = layer
            if weight is not None and weight not in optimizer.state and layer._wl_max_birth:
                module.row_birth_step.zero_()
                module.col_birth_step.zero_()
                layer._refresh_caches()

    def detach_optimizer(self) -> None:
        """Remove the hooks of the attached optimizer, if any."""
        if self._wl_binding is not None:
            self._wl_binding.detach()
            self._wl_binding = None

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The attached optimizer, or None."""
        binding = self.__dict__.get("_wl_binding")
        return binding.optimizer if binding is not None else None

    def _invalidate_step_targets(self) -> None:
        self.__dict__["_wl_targets"] = None

    def _step_targets(self) -> list[tuple[torch.Tensor, NeuronLayer, str]]:
        targets: list[tuple[torch.Tensor, NeuronLayer, str]] | None = self._wl_targets
        if targets is None:
            targets = []
            for layer in self._layer_names():
                if layer._wl_lr_active or layer._wl_max_birth > 0:
                    for role in ("weight", "bias"):
                        param = getattr(layer, role, None)
                        if isinstance(param, nn.Parameter):
                            targets.append((param, layer, role))
            self.__dict__["_wl_targets"] = targets
        return targets

    # -- checkpoints ----------------------------------------------------------------------------------------

    def architecture(self) -> dict[str, dict[str, list[int]]]:
        """Parameter shapes of every ops layer by qualified name (JSON-serialisable)."""
        return {
            name: {p: list(t.shape) for p, t in _module(layer).named_parameters(recurse=False)}
            for layer, name in self._layer_names().items()
        }

    def load_state_resizing(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Resize every ops layer to the shapes in ``state_dict``, then load it (strict).

        Keeps the Parameter objects; clears the attached optimizer's state of every
        parameter whose shape changed (load the optimizer's state dict afterwards).

        Raises:
            ConfigurationError: keys missing or unexpected, or a shape mismatch outside ops layers.
        """
        from weightslab.surgery.resize import load_state_resizing

        load_state_resizing(self, state_dict)

    # -- statistics -----------------------------------------------------------------------------------------

    def stats_report(self) -> str:
        """Per layer and neuron, the train and eval trigger rates (the ``display_stats`` text)."""
        names = self._layer_names()
        return format_stats([(i, names.get(layer, "?"), layer) for i, layer in enumerate(self.layers)])

    def neuron_stats(self) -> list[dict[str, Any]]:
        """One row per layer, neuron and split: ``layer_index, neuron_index, split, trigger_count, seen_samples``."""
        rows: list[dict[str, Any]] = []
        for index, layer in enumerate(self.layers):
            module: Any = layer
            for split in ("train", "eval"):
                triggers = getattr(module, f"{split}_trigger_count").tolist()
                seen = getattr(module, f"{split}_seen_count").tolist()
                rows += [
                    {"layer_index": index, "neuron_index": n, "split": split, "trigger_count": t, "seen_samples": s}
                    for n, (t, s) in enumerate(zip(triggers, seen))
                ]
        return rows
