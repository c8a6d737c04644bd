"""The editing operations of ``NetworkWithOps``: validate, plan, apply, record.

Each operation validates every argument and builds every new tensor before the
first mutation (a refused operation changes nothing and records nothing), then
installs the result in one transaction, and finally hands exactly one
:class:`OperationRecord` to the network's observers. Random draws come from a
local generator seeded with the recorded ``seed`` (drawn with ``secrets`` when
not given, so torch's global RNG is never consumed).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

from weightslab.errors import SurgeryError
from weightslab.events.record import EventKind, OperationRecord
from weightslab.surgery.apply import run_transaction, stage_edit, stage_reinit
from weightslab.surgery.modules import BatchNorm2dWithNeuronOps, NeuronLayer
from weightslab.surgery.plan import SurgeryPlan, add_keys, finish_plan, prune_keys
from weightslab.surgery.selection import (
    check_count,
    check_layer_index,
    check_multiplier,
    check_neuron_indices,
    check_ratio,
    check_seed,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    import numpy as np

    from weightslab.surgery.graph import Graph

__all__ = ["METHOD_OF_KIND", "SurgeryOperations"]

# Event kind → the NetworkWithOps method that re-executes it with the record's args as kwargs.
METHOD_OF_KIND = {
    EventKind.ADD_NEURONS: "add_neurons",
    EventKind.PRUNE: "prune",
    EventKind.REINIT_NEURONS: "reinit_neurons",
    EventKind.SET_NEURON_LR: "set_per_neuron_learning_rate",
    EventKind.SET_INCOMING_NEURON_LR: "set_per_incoming_neuron_learning_rate",
    EventKind.FREEZE: "freeze_layers_up_to_idx",
    EventKind.UNFREEZE: "unfreeze_layers_from_idx",
}


def _generator(seed: int | None) -> tuple[int, torch.Generator]:
    if seed is None:
        seed = secrets.randbits(62)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return seed, generator


class SurgeryOperations:
    """Mixin of :class:`NetworkWithOps` holding the public editing operations."""

    if TYPE_CHECKING:  # provided by NetworkWithOps

        @property
        def layers(self) -> list[NeuronLayer]: ...
        @property
        def optimizer(self) -> torch.optim.Optimizer | None: ...
        def _layer_names(self) -> dict[NeuronLayer, str]: ...
        def _name_of(self, layer: NeuronLayer) -> str: ...
        def _label(self, name: str) -> str: ...
        def dependency_graph(self) -> Graph: ...
        def _trace(self, planned: Mapping[str, np.ndarray] | None = None) -> Graph: ...
        def _notify(self, record: OperationRecord) -> None: ...
        def _invalidate_step_targets(self) -> None: ...
        def _forget_graph(self) -> None: ...

    def _resolve(self, layer_index: Any) -> tuple[int, NeuronLayer, str]:
        layers = self.layers
        index = check_layer_index(layer_index, len(layers))
        layer = layers[index]
        return index, layer, self._name_of(layer)

    def _widths(self) -> list[int]:
        return [layer.neuron_count for layer in self.layers]

    # -- structural edits -----------------------------------------------------------------------------------

    def _plan(self, kind: str, name: str, indices: list[int] | None, count: int | None) -> SurgeryPlan:
        graph = self.dependency_graph()
        label = self._label
        if name not in graph.executed:
            raise SurgeryError(f"cannot {kind} {label(name)}: the forward pass does not use it.")
        if indices is not None:
            removed, planned = prune_keys(graph, name, indices, label)
            fresh: set[int] = set()
        else:
            assert count is not None
            planned, fresh = add_keys(graph, name, count, label)
            removed = set()
        try:
            new_graph = self._trace(planned)
        except Exception as error:
            raise SurgeryError(
                f"cannot {kind} {label(name)}: the forward pass fails with the new widths ({error}). Does "
                "forward() hard-code a size (e.g. x.view(-1, 320))? Use x.view(x.size(0), -1) instead."
            ) from error
        order = list(self._layer_names().values())
        return finish_plan(kind, name, graph, new_graph, planned, removed, fresh, label, order)

    def plan_prune(self, layer_index: int, neuron_indices: Iterable[int]) -> SurgeryPlan:
        """The printable plan of :meth:`prune` (nothing is changed)."""
        index, layer, name = self._resolve(layer_index)
        indices = check_neuron_indices(neuron_indices, layer.neuron_count)
        return self._plan("prune", name, indices, None)

    def plan_add_neurons(self, layer_index: int, neuron_count: int) -> SurgeryPlan:
        """The printable plan of :meth:`add_neurons` (nothing is changed)."""
        index, layer, name = self._resolve(layer_index)
        return self._plan("add_neurons", name, None, check_count(neuron_count))

    def _apply_plan(self, plan: SurgeryPlan, generator: torch.Generator | None) -> None:
        by_name = {name: layer for layer, name in self._layer_names().items()}
        for layer in by_name.values():
            layer._flush_triggers()  # sums kept by batched counting count in the old widths
        optimizer = self.optimizer
        generator = generator or torch.Generator()
        staged = [stage_edit(by_name[edit.name], edit, optimizer, generator) for edit in plan.edits]
        run_transaction(staged, optimizer, plan.kind)
        for edit in plan.edits:
            by_name[edit.name]._refresh_caches()
        self._forget_graph()
        self._invalidate_step_targets()

    def add_neurons(self, layer_index: int, neuron_count: int, seed: int | None = None) -> None:
        """Add ``neuron_count`` neurons to a layer (and to its coupled group), preserving the function.

        New neurons get incoming weights drawn like the layer's initializer and zero
        outgoing weights, so the output does not change, yet they receive gradient.
        A following batch norm, the next layers' input columns and residual partners
        are widened alike; new neurons get fresh optimizer state and zero counters.

        Raises:
            IndexSelectionError: bad ``layer_index`` or ``neuron_count``.
            SurgeryError: the layer's neurons are model outputs, or its coupling cannot be resolved.

        Example:
            ``model.add_neurons(layer_index=0, neuron_count=4)``
        """
        index, layer, name = self._resolve(layer_index)
        count = check_count(neuron_count)
        seed, generator = _generator(check_seed(seed))
        plan = self._plan("add_neurons", name, None, count)
        self._apply_plan(plan, generator)
        self._notify(
            OperationRecord(
                EventKind.ADD_NEURONS,
                {"layer_index": index, "neuron_count": count, "seed": seed},
                {"widths": self._widths(), "changed": [e.name for e in plan.edits]},
            )
        )

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
        index, layer, name = self._resolve(layer_index)
        indices = check_neuron_indices(neuron_indices, layer.neuron_count)
        plan = self._plan("prune", name, indices, None)
        self._apply_plan(plan, None)
        self._notify(
            OperationRecord(
                EventKind.PRUNE,
                {"layer_index": index, "neuron_indices": indices},
                {"widths": self._widths(), "changed": [e.name for e in plan.edits]},
            )
        )

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
        index, layer, name = self._resolve(layer_index)
        indices = check_neuron_indices(neuron_indices, layer.neuron_count)
        ratio = check_ratio(perturbation_ratio)
        seed, generator = _generator(check_seed(seed))
        optimizer = self.optimizer
        layer._flush_triggers()  # sums kept by batched counting count before the statistics restart
        staged = stage_reinit(layer, indices, ratio, optimizer, generator)
        run_transaction([staged], optimizer, "reinit_neurons")
        layer._refresh_caches()
        self._notify(
            OperationRecord(
                EventKind.REINIT_NEURONS,
                {"layer_index": index, "neuron_indices": indices, "perturbation_ratio": ratio, "seed": seed},
                {"changed": [name]},
            )
        )

    # -- learning rates and freezing ------------------------------------------------------------------------

    def set_per_neuron_learning_rate(
        self, layer_index: int, neuron_indices: Iterable[int], lr: float
    ) -> None:
        """Multiply the optimizer's update of these neurons by ``lr`` (see the layer method)."""
        self._set_lr(EventKind.SET_NEURON_LR, layer_index, neuron_indices, lr, incoming=False)

    def set_per_incoming_neuron_learning_rate(
        self, layer_index: int, neuron_indices: Iterable[int], lr: float
    ) -> None:
        """Multiply the optimizer's update of these incoming neurons' weight columns by ``lr``."""
        self._set_lr(EventKind.SET_INCOMING_NEURON_LR, layer_index, neuron_indices, lr, incoming=True)

    def _set_lr(self, kind: str, layer_index: int, neuron_indices: Iterable[int], lr: float,
                *, incoming: bool) -> None:
        """Check, set the row (or column) multipliers, and report one record."""
        index, layer, name = self._resolve(layer_index)
        if incoming:
            layer._check_has_columns()
        indices = check_neuron_indices(neuron_indices, layer.incoming_count if incoming else layer.neuron_count)
        value = check_multiplier(lr)
        layer._set_multiplier("lr_col_multiplier" if incoming else "lr_row_multiplier", indices, value)
        self._notify(
            OperationRecord(kind, {"layer_index": index, "neuron_indices": indices, "lr": value}, {"changed": [name]})
        )

    def _with_partners(self, chosen: list[NeuronLayer]) -> list[NeuronLayer]:
        # Batch norms that are not in self.layers follow the layer whose output they normalise.
        listed = set(map(id, self.layers))
        names = self._layer_names()
        loose = [m for m in names if isinstance(m, BatchNorm2dWithNeuronOps) and id(m) not in listed]
        if not loose:
            return chosen
        graph = self.dependency_graph()
        chosen_names = {names[m] for m in chosen}
        return chosen + [m for m in loose if graph.bn_origin.get(names[m]) in chosen_names]

    def _set_frozen(self, layers: list[NeuronLayer], flag: bool) -> list[str]:
        names = self._layer_names()
        for layer in layers:
            layer._set_frozen(flag)
        self._invalidate_step_targets()
        return [names[m] for m in layers]

    def freeze_layers_up_to_idx(self, up_to_index: int) -> None:
        """Freeze layers ``0..up_to_index`` (inclusive) and their batch norms.

        Frozen parameters get no gradient, so no optimizer (weight decay included) moves them.

        Example:
            ``model.freeze_layers_up_to_idx(1)``
        """
        layers = self.layers
        index = check_layer_index(up_to_index, len(layers))
        targets = self._with_partners(layers[: index + 1])
        changed = self._set_frozen(targets, True)
        self._notify(OperationRecord(EventKind.FREEZE, {"up_to_index": index}, {"changed": changed}))

    def unfreeze_layers_from_idx(self, from_index: int) -> None:
        """Unfreeze layers ``from_index..end`` and their batch norms.

        Example:
            ``model.unfreeze_layers_from_idx(1)``
        """
        layers = self.layers
        index = check_layer_index(from_index, len(layers))
        targets = self._with_partners(layers[index:])
        changed = self._set_frozen(targets, False)
        self._notify(OperationRecord(EventKind.UNFREEZE, {"from_index": index}, {"changed": changed}))
