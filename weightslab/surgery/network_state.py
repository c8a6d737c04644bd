"""What a :class:`NetworkWithOps` keeps besides its modules, and the queries over it.

One :class:`NetworkState` per network (one attribute of it): the tracking mode,
the layer order that ``layer_index`` refers to, the example input and the traced
dependency graph (cached until the next structural edit), the attached
optimizer's step hooks and the parameters they adjust, and the owner's seed
source. The network's surgery and the optimizer's hooks read the network through
it. Only the tracking mode, the layer order and the example input survive a copy
(pickle, deepcopy); the rest is rebuilt or re-attached.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from weightslab.errors import ConfigurationError, SurgeryError
from weightslab.surgery.graph import Graph, PlannedLayout
from weightslab.surgery.modules import NeuronLayer
from weightslab.surgery.optim_state import OptimizerBinding, StepTarget
from weightslab.surgery.trace import trace_network
from weightslab.surgery.tracking import TrackingMode

__all__ = ["NetworkState", "check_layers"]

SeedSource = Callable[[], int]


def check_layers(layers: list[Any]) -> None:
    """Refuse a ``self.layers`` list with anything but ops layers.

    Raises:
        ConfigurationError: a plain module is listed.
    """
    wrong = [type(m).__name__ for m in layers if not isinstance(m, NeuronLayer)]
    if wrong:
        raise ConfigurationError(
            f"self.layers may only hold Conv2dWithNeuronOps / LinearWithNeuronOps / BatchNorm2dWithNeuronOps "
            f"layers, got {wrong}; convert plain layers with convert_to_ops(model)."
        )


class NetworkState:
    """The per-network state of a :class:`NetworkWithOps` (see the module docstring).

    Attributes:
        tracking_mode: which counters forward passes update.
        explicit_layers: the value assigned to ``self.layers`` (a list or a module
            container), or None for every ops layer in registration order.
        example: shape (without the batch dimension) and dtype of the first input seen.
        graph: the traced dependency graph, or None until the next edit needs it.
        binding: the step hooks on the attached optimizer, or None.
        tracing: whether a trace is running (the forward pass must not age the model).
        targets: parameters the step hooks adjust, or None until the next step needs them.
        example_hook: the pre-hook that remembers the first input, until it has.
        seed_source: the owner's source of seeds for random draws, or None.
    """

    def __init__(self, network: nn.Module) -> None:
        self.tracking_mode = TrackingMode.DISABLED
        self.explicit_layers: Any = None
        self.example: tuple[tuple[int, ...], torch.dtype] | None = None
        self.graph: Graph | None = None
        self.binding: OptimizerBinding | None = None
        self.tracing = False
        self.targets: list[StepTarget] | None = None
        self.example_hook: RemovableHandle | None = None
        self.seed_source: SeedSource | None = None
        self._network: weakref.ref[nn.Module] = weakref.ref(network)

    def __getstate__(self) -> dict[str, Any]:
        return {"tracking_mode": self.tracking_mode, "explicit_layers": self.explicit_layers, "example": self.example}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # The copy's network calls bind_network; hooks, caches and the owner's seed source stay behind.
        self.tracking_mode, self.explicit_layers = state["tracking_mode"], state["explicit_layers"]
        self.example, self.graph, self.binding, self.tracing = state["example"], None, None, False
        self.targets, self.example_hook, self.seed_source = None, None, None

    def bind_network(self, network: nn.Module) -> None:
        """Belong to ``network`` (a copy's state, once the copy exists)."""
        self._network = weakref.ref(network)

    @property
    def network(self) -> nn.Module:
        """The network this state belongs to."""
        network = self._network()
        if network is None:
            raise SurgeryError("the network of this surgery no longer exists.")
        return network

    # -- layers ---------------------------------------------------------------------------------------------

    def layers(self) -> list[NeuronLayer]:
        """The editable layers, in the order ``layer_index`` refers to."""
        explicit = self.explicit_layers
        if isinstance(explicit, nn.Module):
            return list(explicit)  # type: ignore[call-overload]
        if explicit is not None:
            return explicit
        return [m for m in self.network.modules() if isinstance(m, NeuronLayer)]

    def layer_names(self) -> dict[NeuronLayer, str]:
        """Every ops layer of the network (listed or not) → its qualified name, in registration order."""
        return {m: name for name, m in self.network.named_modules() if isinstance(m, NeuronLayer)}

    def layer_index_of(self, layer: NeuronLayer) -> int:
        """Position of ``layer`` in the layer order (see :meth:`NetworkWithOps.layer_index_of`)."""
        for index, candidate in enumerate(self.layers()):
            if candidate is layer:
                return index
        raise ConfigurationError(
            f"this {type(layer).__name__} is not in model.layers, so it has no layer_index; add it to "
            "self.layers to edit it."
        )

    def name_of(self, layer: NeuronLayer) -> str:
        """The qualified name of a listed layer.

        Raises:
            ConfigurationError: the layer is listed but is not a submodule.
        """
        names = self.layer_names()
        if layer not in names:
            raise ConfigurationError(
                f"a {type(layer).__name__} in model.layers is not a submodule of the model; assign it as an "
                "attribute (self.x = ...) before listing it in self.layers."
            )
        return names[layer]

    def label(self, name: str) -> str:
        """How messages name the layer called ``name``: ``layer 1 (conv1: Conv2dWithNeuronOps)``."""
        by_name = {n: m for m, n in self.layer_names().items()}
        layer = by_name.get(name)
        if layer is None:
            return name  # a follower tensor or a module outside the ops layers
        for index, candidate in enumerate(self.layers()):
            if candidate is layer:
                return f"layer {index} ({name or 'root'}: {type(layer).__name__})"
        return f"module {name} ({type(layer).__name__})"

    # -- example input and tracing --------------------------------------------------------------------------

    def remember(self, input: torch.Tensor) -> None:
        """Keep the shape and dtype of the first input (batch first), then drop the pre-hook."""
        if self.example is None and input.dim() >= 1:
            self.example = (tuple(input.shape[1:]), input.dtype)
            hook, self.example_hook = self.example_hook, None
            if hook is not None:
                hook.remove()

    def _example_batch(self) -> torch.Tensor:
        if self.example is None:
            raise SurgeryError(
                "the model has not seen an input yet, so its layer dependencies cannot be traced; run one "
                "forward pass (or call model.set_example_input(x)) before editing its structure."
            )
        shape, dtype = self.example
        first = next(iter(self.network.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
        if first is not None and dtype.is_floating_point and first.dtype.is_floating_point:
            dtype = first.dtype  # follow model.double() / .half() done after the first forward
        return torch.zeros((2, *shape), dtype=dtype, device=device)

    def can_trace(self) -> bool:
        """Whether the network has seen an input (or was given an example), so that it can be traced."""
        return self.example is not None

    def trace(self, planned: PlannedLayout | None = None) -> Graph:
        """Trace the network on a dummy batch (at the ``planned`` widths); see ``trace.py``."""
        example = self._example_batch()
        self.tracing = True
        try:
            return trace_network(self.network, (example,), self.layer_names(), planned)
        finally:
            self.tracing = False

    def dependency_graph(self) -> Graph:
        """The traced dependency graph, cached until :meth:`forget_graph`.

        Raises:
            SurgeryError: no input seen yet, or the traced forward pass failed.
        """
        if self.graph is None:
            try:
                self.graph = self.trace()
            except SurgeryError:
                raise
            except Exception as error:
                raise SurgeryError(f"tracing the forward pass with a dummy input failed: {error}") from error
        return self.graph

    def forget_graph(self) -> None:
        """Drop the cached trace (after a structural edit); the next edit re-traces."""
        self.graph = None

    # -- optimizer ------------------------------------------------------------------------------------------

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The attached optimizer, or None."""
        return self.binding.optimizer if self.binding is not None else None

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """See :meth:`NetworkWithOps.attach_optimizer`."""
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigurationError(f"attach_optimizer expects a torch.optim.Optimizer, got {type(optimizer).__name__}.")
        self.detach_optimizer()
        self.binding = OptimizerBinding(self, optimizer)
        for layer in self.layer_names():
            weight = getattr(layer, layer.step_roles()[0], None)
            module: Any = layer
            if weight is not None and weight not in optimizer.state and layer._layer_state.max_birth:
                # A fresh optimizer: rows born at an old step of the previous one are not young in it.
                module.row_birth_step.zero_()
                module.col_birth_step.zero_()
                layer._refresh_caches()

    def detach_optimizer(self) -> None:
        """Remove the hooks of the attached optimizer, if any."""
        if self.binding is not None:
            self.binding.detach()
            self.binding = None

    def step_targets(self) -> list[StepTarget]:
        """The parameters whose updates the step hooks adjust: ``(param, layer, "weight" | "bias")``."""
        targets = self.targets
        if targets is None:
            targets = []
            for layer in self.layer_names():
                state = layer._layer_state
                if state.lr_active or state.max_birth > 0:
                    for role in layer.step_roles():
                        param = getattr(layer, role, None)
                        if isinstance(param, nn.Parameter):
                            targets.append((param, layer, role))
            self.targets = targets
        return targets

    def invalidate_step_targets(self) -> None:
        """Forget :meth:`step_targets` (a layer's multipliers, birth steps or tensors changed)."""
        self.targets = None
