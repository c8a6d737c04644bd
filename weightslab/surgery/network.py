"""``NetworkWithOps``: an ``nn.Module`` whose ops layers can be edited while it trains.

The network is composed of three objects, one attribute each: its
:class:`NetworkState` (layer order, tracking mode, example input and traced
graph, optimizer hooks, seed source), its :class:`Surgery` (the editing
operations, plan → check → apply → record), and its :class:`Observers` (told of
every operation as the last step of its transaction). The public methods below
delegate to them; the model age is a buffer, so checkpoints carry it.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from weightslab.errors import ConfigurationError
from weightslab.events.observers import Observer, Observers
from weightslab.surgery.graph import Graph
from weightslab.surgery.layer_state import LayerOwner
from weightslab.surgery.modules import NeuronLayer
from weightslab.surgery.network_state import NetworkState, check_layers
from weightslab.surgery.operations import Surgery
from weightslab.surgery.plan import SurgeryPlan
from weightslab.surgery.report import format_stats
from weightslab.surgery.resize import load_state_resizing
from weightslab.surgery.selection import check_seed_source
from weightslab.surgery.tracking import TrackingMode

__all__ = ["NetworkWithOps"]


def _remember_example(network: NetworkWithOps, args: tuple[Any, ...]) -> None:
    state = network._state
    if state.example is None and args and isinstance(args[0], torch.Tensor) and not state.tracing:
        state.remember(args[0])


class NetworkWithOps(nn.Module):
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
    _state: NetworkState
    _surgery: Surgery
    _observers: Observers

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("model_age", torch.zeros((), dtype=torch.int64))
        self._state = NetworkState(self)
        self._observers = Observers()
        self._surgery = Surgery(self._state, self._observers)
        self._state.example_hook = self.register_forward_pre_hook(_remember_example)

    # -- binding of layers ----------------------------------------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "layers" and isinstance(value, nn.ModuleList | nn.Sequential):
            # nn.Module registers the container without calling the property setter.
            check_layers(list(value))
            self._state.explicit_layers = value
        super().__setattr__(name, value)
        if isinstance(value, nn.Module) and getattr(self, "_surgery", None) is not None:
            self._bind(value)

    def _bind(self, root: nn.Module) -> None:
        """Make every ops layer under ``root`` route its operations to this network."""
        owner: LayerOwner = self._surgery
        for module in root.modules():
            if isinstance(module, NeuronLayer):
                module._layer_state.owner = weakref.ref(owner)
                module._layer_state.mode = self._state.tracking_mode
        self._state.forget_graph()
        self._state.invalidate_step_targets()

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_state"] = copy.copy(self._state)  # detached (even for copy.copy): the copy binds it to itself
        state.pop("_surgery", None)  # weakly tied to this network: the copy builds its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._state.bind_network(self)
        self._surgery = Surgery(self._state, self._observers)
        self._bind(self)

    # -- layers ---------------------------------------------------------------------------------------------

    @property
    def layers(self) -> list[NeuronLayer]:
        """The editable layers, in the order ``layer_index`` refers to.

        Assign a list (``self.layers = [...]``) to choose the order; by default, every
        ops layer in registration order.
        """
        return self._state.layers()

    @layers.setter
    def layers(self, value: Any) -> None:
        layers = list(value)
        check_layers(layers)
        self._state.explicit_layers = value if isinstance(value, list) else layers
        for layer in layers:
            self._bind(layer)

    def layer_index_of(self, layer: NeuronLayer) -> int:
        """Position of ``layer`` in ``self.layers``.

        Raises:
            ConfigurationError: the layer is not listed.
        """
        return self._state.layer_index_of(layer)

    # -- tracking and age -----------------------------------------------------------------------------------

    @property
    def tracking_mode(self) -> TrackingMode:
        """Which neuron counters forward passes update (``TrackingMode.TRAIN/EVAL/DISABLED``)."""
        return self._state.tracking_mode

    @tracking_mode.setter
    def tracking_mode(self, mode: TrackingMode) -> None:
        if not isinstance(mode, TrackingMode):
            raise ConfigurationError(f"tracking_mode must be a TrackingMode, got {mode!r}.")
        self._state.tracking_mode = mode
        for module in self.modules():
            if isinstance(module, NeuronLayer):
                module.tracking_mode = mode

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
            layer._batch_triggers(True)
        try:
            yield
        finally:
            for layer in layers:
                layer._batch_triggers(False)

    @property
    def age(self) -> int:
        """Model age: the number of training samples the model has processed."""
        return int(self.model_age)

    def maybe_update_age(self, input: torch.Tensor) -> None:
        """Add the batch size of ``input`` to the model age when the model is training."""
        state = self._state
        if state.tracing:
            return
        if self.training:
            self.model_age.add_(input.shape[0])
        if state.example is None:
            state.remember(input)

    def set_example_input(self, example: torch.Tensor) -> None:
        """Give the input shape used to trace the network (one sample or a batch, batch first).

        Needed only before the first forward pass; afterwards the shape seen first is used.
        """
        if not isinstance(example, torch.Tensor) or example.dim() < 1:
            raise ConfigurationError("set_example_input expects a tensor with a batch dimension, e.g. x[:1].")
        self._state.example = None
        self._state.remember(example)
        self._state.forget_graph()

    def dependency_graph(self) -> Graph:
        """The traced dependency graph (cached until the next structural edit)."""
        return self._state.dependency_graph()

    # -- observers and seeds --------------------------------------------------------------------------------

    def add_observer(self, observer: Observer) -> None:
        """Call ``observer(record)`` as the last step of every operation on this model or its layers.

        If the observer raises, the operation is rolled back (weights, optimizer state,
        settings: all as before) and the observer's exception propagates.
        """
        self._observers.add(observer)

    def remove_observer(self, observer: Observer) -> None:
        """Stop notifying ``observer`` (no error if it was not registered)."""
        self._observers.remove(observer)

    def set_seed_source(self, source: Callable[[], int] | None) -> None:
        """Draw the seeds of ``add_neurons`` / ``reinit_neurons`` called without ``seed=`` from ``source()``.

        ``source()`` must return an int in ``0..2**62-1``; the seed used is recorded as
        always. ``None`` removes the source (seeds are then drawn with ``secrets``). The
        source is not copied with the model.

        Example:
            >>> seeds = iter(range(100))
            >>> model.set_seed_source(lambda: next(seeds))
        """
        self._state.seed_source = check_seed_source(source)

    # -- editing operations ---------------------------------------------------------------------------------

    def plan_prune(self, layer_index: int, neuron_indices: Iterable[int]) -> SurgeryPlan:
        """The printable plan of :meth:`prune` (nothing is changed)."""
        return self._surgery.plan_prune(layer_index, neuron_indices)

    def plan_add_neurons(self, layer_index: int, neuron_count: int) -> SurgeryPlan:
        """The printable plan of :meth:`add_neurons` (nothing is changed)."""
        return self._surgery.plan_add_neurons(layer_index, neuron_count)

    def add_neurons(self, layer_index: int, neuron_count: int, seed: int | None = None) -> None:
        """Add ``neuron_count`` neurons to a layer (and to its coupled group), preserving the function.

        New neurons get incoming weights drawn like the layer's initializer and zero
        outgoing weights, so the output does not change, yet they receive gradient.
        A following batch norm, the next layers' input columns and residual partners
        are widened alike; new neurons get fresh optimizer state and zero counters.
        One call adds at most 65,536 neurons (``selection.MAX_ADDED_NEURONS``).

        Raises:
            IndexSelectionError: bad ``layer_index`` or ``neuron_count`` (or more than the bound).
            SurgeryError: the layer's neurons are model outputs, or its coupling cannot be resolved.

        Example:
            ``model.add_neurons(layer_index=0, neuron_count=4)``
        """
        self._surgery.add_neurons(layer_index, neuron_count, seed)

    def prune(self, layer_index: int, neuron_indices: Iterable[int]) -> None:
        """Remove neurons from a layer and from everything coupled with it.

        Smaller weight tensors: the layer's rows, a following batch norm's channels, the
        next layers' input columns (H×W column blocks after a flatten), residual
        partners' channels. Survivors keep weights, statistics, settings and optimizer
        state bit-exactly.

        Raises:
            IndexSelectionError: bad ``layer_index`` or ``neuron_indices``.
            SurgeryError: pruning every neuron, model outputs, or an unresolvable coupling.

        Example:
            ``model.prune(layer_index=0, neuron_indices={0, 2, 4})``
        """
        self._surgery.prune(layer_index, neuron_indices)

    def reinit_neurons(
        self,
        layer_index: int,
        neuron_indices: Iterable[int],
        perturbation_ratio: float | None = None,
        seed: int | None = None,
    ) -> None:
        """Re-draw the incoming weights of some neurons (or perturb them: ``w + r·|w|·U(-1, 1)``).

        Their optimizer state and statistics restart; learning-rate settings are kept.

        Example:
            ``model.reinit_neurons(layer_index=0, neuron_indices={5, 6}, perturbation_ratio=0.2)``
        """
        self._surgery.reinit_neurons(layer_index, neuron_indices, perturbation_ratio, seed)

    def set_per_neuron_learning_rate(self, layer_index: int, neuron_indices: Iterable[int], lr: float) -> None:
        """Multiply the optimizer's update of these neurons by ``lr`` (see the layer method)."""
        self._surgery.set_per_neuron_learning_rate(layer_index, neuron_indices, lr)

    def set_per_incoming_neuron_learning_rate(
        self, layer_index: int, neuron_indices: Iterable[int], lr: float
    ) -> None:
        """Multiply the optimizer's update of these incoming neurons' weight columns by ``lr``."""
        self._surgery.set_per_incoming_neuron_learning_rate(layer_index, neuron_indices, lr)

    def freeze_layers_up_to_idx(self, up_to_index: int) -> None:
        """Freeze layers ``0..up_to_index`` (inclusive) and their batch norms.

        Frozen parameters get no gradient, so no optimizer (weight decay included) moves them.

        Example:
            ``model.freeze_layers_up_to_idx(1)``
        """
        self._surgery.freeze_layers_up_to_idx(up_to_index)

    def unfreeze_layers_from_idx(self, from_index: int) -> None:
        """Unfreeze layers ``from_index..end`` and their batch norms.

        Example:
            ``model.unfreeze_layers_from_idx(1)``
        """
        self._surgery.unfreeze_layers_from_idx(from_index)

    # -- optimizer ------------------------------------------------------------------------------------------

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Let surgery keep ``optimizer``'s state consistent and apply per-neuron learning rates.

        The Experiment calls this; call it yourself when you train with your own optimizer.
        Installs step hooks on the optimizer (replacing those of a previously attached one).
        """
        self._state.attach_optimizer(optimizer)

    def detach_optimizer(self) -> None:
        """Remove the hooks of the attached optimizer, if any."""
        self._state.detach_optimizer()

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The attached optimizer, or None."""
        return self._state.optimizer

    # -- checkpoints and statistics -------------------------------------------------------------------------

    def architecture(self) -> dict[str, dict[str, list[int]]]:
        """Parameter shapes of every ops layer by qualified name (JSON-serialisable)."""
        return {
            name: {p: list(t.shape) for p, t in _module(layer).named_parameters(recurse=False)}
            for layer, name in self._state.layer_names().items()
        }

    def load_state_resizing(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Resize every ops layer to the shapes in ``state_dict``, then load it (strict).

        Keeps the Parameter objects; clears the attached optimizer's state of every
        parameter whose shape changed (load the optimizer's state dict afterwards).

        Raises:
            ConfigurationError: keys missing or unexpected, or a shape mismatch outside ops layers.
        """
        load_state_resizing(self, self._state, state_dict)

    def stats_report(self) -> str:
        """Per layer and neuron, the train and eval trigger rates (the ``display_stats`` text)."""
        names = self._state.layer_names()
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


def _module(layer: NeuronLayer) -> nn.Module:
    return layer  # type: ignore[return-value]  # every NeuronLayer is also an nn.Module
