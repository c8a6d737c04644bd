"""The editing operations of a network: validate, plan, apply, record (write-ahead).

:class:`Surgery` holds the seven editing operations of a :class:`NetworkWithOps`
(whose public methods delegate to it) and is the owner an ops layer calls when
an operation is invoked on the layer. Each operation validates every argument
and builds every new tensor before the first mutation (a refused operation
changes nothing and records nothing), applies the result in one transaction
whose :class:`~weightslab.surgery.transaction.UndoLog` covers every mutation, and
as the transaction's last step hands exactly one :class:`OperationRecord` to the
network's observers: if an observer raises, everything is rolled back and the
observer's exception propagates unchanged. Random draws come from a local
generator seeded with the recorded ``seed``: the caller's, else the owner's seed
source, else one drawn with ``secrets`` (torch's global RNG is never consumed).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from weightslab.errors import SurgeryError
from weightslab.events.domain import EventKind
from weightslab.events.observers import Observers
from weightslab.events.record import OperationRecord
from weightslab.surgery.apply import (
    refresh_caches,
    run_transaction,
    set_attributes,
    set_frozen,
    set_multiplier,
    stage_edit,
    stage_reinit,
    stage_tensor,
)
from weightslab.surgery.graph import Graph, PlannedLayout
from weightslab.surgery.modules import BatchNorm2dWithNeuronOps, NeuronLayer
from weightslab.surgery.network_state import NetworkState
from weightslab.surgery.plan import SurgeryPlan, add_keys, finish_plan, prune_keys, verb
from weightslab.surgery.relayout import KeyEdit, relayout
from weightslab.surgery.selection import (
    check_count,
    check_drawn_seed,
    check_layer_index,
    check_multiplier,
    check_neuron_indices,
    check_ratio,
    check_seed,
)
from weightslab.surgery.trace import loose_tensors
from weightslab.surgery.transaction import UndoLog

__all__ = ["Surgery"]


def _generator(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def _bytes_per_neuron(layer: NeuronLayer) -> int:
    """Memory one more neuron takes in ``layer`` itself (its row of every per-neuron tensor)."""
    total = 0
    for slot in layer.slots():
        tensor = getattr(layer, slot.name)
        if tensor is not None and slot.row_dim is not None:
            shape = list(tensor.shape)
            shape[slot.row_dim] = 1
            total += math.prod(shape) * tensor.element_size()
    return total


class Surgery:
    """The editing operations of one network (see the module docstring).

    Args:
        state: the network's :class:`NetworkState` (layers, graph, optimizer, seed source).
        observers: the network's observers, told of every operation as its last step.

    ``NetworkWithOps`` builds one and delegates to it; layers reach it through a weak
    reference, so that ``model.layers[0].set_per_neuron_learning_rate(...)`` is applied
    and recorded like ``model.set_per_neuron_learning_rate(0, ...)``.
    """

    def __init__(self, state: NetworkState, observers: Observers) -> None:
        self._state = state
        self._observers = observers

    # -- the transaction ------------------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[UndoLog]:
        """An undo log that is rolled back if the block raises (an observer included)."""
        log = UndoLog()
        try:
            yield log
        except BaseException:
            log.rollback()
            raise

    def _record(self, log: UndoLog, record: OperationRecord) -> None:
        """The last step of a transaction: the observers keep the operation, or it is rolled back."""
        self._observers.notify(record, rollback=log.rollback)

    def _forget_derived(self, log: UndoLog) -> None:
        """Drop (logged) what the network derives from its layers' settings: the step targets."""
        log.set_attr(self._state, "targets", None)

    def _draw_seed(self, seed: int | None) -> int:
        if seed is not None:
            return seed
        source = self._state.seed_source
        return secrets.randbits(62) if source is None else check_drawn_seed(source())

    def invalidate_step_targets(self) -> None:
        """Forget which parameters the optimizer's step hooks adjust (see :class:`LayerOwner`)."""
        self._state.invalidate_step_targets()

    # -- structural edits -----------------------------------------------------------------------------------

    def _resolve(self, layer_index: Any) -> tuple[int, NeuronLayer, str]:
        layers = self._state.layers()
        index = check_layer_index(layer_index, len(layers))
        layer = layers[index]
        return index, layer, self._state.name_of(layer)

    def _widths(self) -> list[int]:
        return [layer.neuron_count for layer in self._state.layers()]

    def _plan(self, kind: str, name: str, indices: list[int] | None, count: int | None) -> SurgeryPlan:
        """Decide the edit on the kept graph, compute the graph after it, and read every layer's sources.

        The graph after the edit comes from :func:`relayout` when every op of the network is
        width-agnostic (no trace: milliseconds), else from a trace at the new widths (which also
        proves the forward pass still runs).
        """
        state = self._state
        graph = state.dependency_graph()
        label = state.label
        if name not in graph.executed:
            if name in graph.read_by:
                raise SurgeryError(
                    f"cannot {verb(kind)} {label(name)}: its forward is never called; {graph.read_by[name]} reads its "
                    "weights directly, and surgery cannot follow what that op does with them."
                )
            raise SurgeryError(f"cannot {verb(kind)} {label(name)}: the forward pass does not use it.")
        if indices is not None:
            edit = prune_keys(graph, name, indices, label)
        else:
            assert count is not None
            edit = add_keys(graph, name, count, label)
        predicted = relayout(graph, edit)
        new_graph = predicted if graph.generic else self._trace_planned(kind, name, graph, edit, predicted)
        order = list(state.layer_names().values())
        return finish_plan(kind, name, graph, new_graph, edit, label, order)

    def _trace_planned(self, kind: str, name: str, graph: Graph, edit: KeyEdit, predicted: Graph) -> Graph:
        state = self._state
        loose = loose_tensors(state.network, state.layer_names())
        tensors = {}
        for tensor_name, follower in predicted.followers.items():
            shape = list(loose[tensor_name].shape)
            if shape[follower.dim] != len(follower.keys):
                shape[follower.dim] = len(follower.keys)
                tensors[tensor_name] = tuple(shape)
        sizes = {path: len(keys) for path, keys in predicted.sizes.items() if len(keys) != len(graph.sizes[path])}
        layout = PlannedLayout({**graph.out_keys, **edit.planned}, {**graph.groups, **edit.groups}, tensors, sizes)
        try:
            return state.trace(layout)
        except Exception as error:
            raise SurgeryError(
                f"cannot {verb(kind)} {state.label(name)}: the forward pass fails with the new widths ({error}). The "
                "model's code fixes the size of these channels somewhere: a hard-coded reshape such as "
                "x.view(-1, 320) (use x.view(x.size(0), -1) instead), or one that splits them into fixed groups "
                "(a channel shuffle, attention heads): edit a number of channels it accepts."
            ) from error

    def plan_prune(self, layer_index: int, neuron_indices: Iterable[int]) -> SurgeryPlan:
        """The printable plan of :meth:`prune` (nothing is changed)."""
        index, layer, name = self._resolve(layer_index)
        indices = check_neuron_indices(neuron_indices, layer.neuron_count)
        return self._plan(EventKind.PRUNE, name, indices, None)

    def plan_add_neurons(self, layer_index: int, neuron_count: int) -> SurgeryPlan:
        """The printable plan of :meth:`add_neurons` (nothing is changed)."""
        index, layer, name = self._resolve(layer_index)
        return self._plan(EventKind.ADD_NEURONS, name, None, check_count(neuron_count, _bytes_per_neuron(layer)))

    def _apply_plan(self, plan: SurgeryPlan, generator: torch.Generator, log: UndoLog) -> None:
        state = self._state
        by_name = {name: layer for layer, name in state.layer_names().items()}
        for layer in by_name.values():
            layer._flush_triggers()  # sums kept by batched counting count in the old widths
        optimizer = state.optimizer
        network = state.network
        staged = [stage_edit(by_name[edit.name], edit, optimizer, generator) for edit in plan.edits]
        for tensor in plan.tensors:
            owner, _, attr = tensor.name.rpartition(".")
            staged.append(stage_tensor(network.get_submodule(owner), attr, tensor, optimizer))
        self._forget_derived(log)
        log.set_attr(state, "graph", plan.graph)  # the graph after the edit: kept, not traced again
        run_transaction(staged, optimizer, plan.kind, log)
        for attribute in plan.attributes:
            set_attributes(network.get_submodule(attribute.module), attribute, log)
        for edit in plan.edits:
            refresh_caches(by_name[edit.name], log)

    def add_neurons(self, layer_index: int, neuron_count: int, seed: int | None = None) -> None:
        """See :meth:`NetworkWithOps.add_neurons`."""
        index, layer, name = self._resolve(layer_index)
        count = check_count(neuron_count, _bytes_per_neuron(layer))
        seed = check_seed(seed)
        plan = self._plan(EventKind.ADD_NEURONS, name, None, count)
        seed = self._draw_seed(seed)
        with self._transaction() as log:
            self._apply_plan(plan, _generator(seed), log)
            args = {"layer_index": index, "neuron_count": count, "seed": seed}
            result = {"widths": self._widths(), "changed": [e.name for e in plan.edits]}
            self._record(log, OperationRecord(EventKind.ADD_NEURONS, args, result))

    def prune(self, layer_index: int, neuron_indices: Iterable[int]) -> None:
        """See :meth:`NetworkWithOps.prune`."""
        index, layer, name = self._resolve(layer_index)
        indices = check_neuron_indices(neuron_indices, layer.neuron_count)
        plan = self._plan(EventKind.PRUNE, name, indices, None)
        with self._transaction() as log:
            self._apply_plan(plan, torch.Generator(), log)
            args = {"layer_index": index, "neuron_indices": indices}
            result = {"widths": self._widths(), "changed": [e.name for e in plan.edits]}
            self._record(log, OperationRecord(EventKind.PRUNE, args, result))

    def reinit_neurons(
        self,
        layer_index: int,
        neuron_indices: Iterable[int],
        perturbation_ratio: float | None = None,
        seed: int | None = None,
    ) -> None:
        """See :meth:`NetworkWithOps.reinit_neurons`."""
        index, layer, name = self._resolve(layer_index)
        indices = check_neuron_indices(neuron_indices, layer.neuron_count)
        ratio = check_ratio(perturbation_ratio)
        seed = self._draw_seed(check_seed(seed))
        optimizer = self._state.optimizer
        layer._flush_triggers()  # sums kept by batched counting count before the statistics restart
        staged = stage_reinit(layer, indices, ratio, optimizer, _generator(seed))
        with self._transaction() as log:
            self._forget_derived(log)
            run_transaction([staged], optimizer, EventKind.REINIT_NEURONS, log)
            refresh_caches(layer, log)
            args = {"layer_index": index, "neuron_indices": indices, "perturbation_ratio": ratio, "seed": seed}
            self._record(log, OperationRecord(EventKind.REINIT_NEURONS, args, {"changed": [name]}))

    # -- learning rates and freezing ------------------------------------------------------------------------

    def set_per_neuron_learning_rate(self, layer_index: int, neuron_indices: Iterable[int], lr: float) -> None:
        """See :meth:`NetworkWithOps.set_per_neuron_learning_rate`."""
        self._set_lr(*self._resolve(layer_index), neuron_indices, lr, incoming=False)

    def set_per_incoming_neuron_learning_rate(
        self, layer_index: int, neuron_indices: Iterable[int], lr: float
    ) -> None:
        """See :meth:`NetworkWithOps.set_per_incoming_neuron_learning_rate`."""
        self._set_lr(*self._resolve(layer_index), neuron_indices, lr, incoming=True)

    def set_layer_learning_rate(
        self, layer: NeuronLayer, neuron_indices: Iterable[int], lr: float, *, incoming: bool
    ) -> None:
        """The per-neuron (``incoming``: per-incoming-neuron) learning rate of a layer called on the layer.

        Raises:
            ConfigurationError: the layer is not in ``model.layers`` (it has no layer_index to record).
        """
        index = self._state.layer_index_of(layer)
        self._set_lr(index, layer, self._state.name_of(layer), neuron_indices, lr, incoming=incoming)

    def _set_lr(
        self, index: int, layer: NeuronLayer, name: str, neuron_indices: Iterable[int], lr: float, *, incoming: bool
    ) -> None:
        """Check, set the row (or column) multipliers, and record one operation."""
        if incoming:
            layer._check_has_columns()
        indices = check_neuron_indices(neuron_indices, layer.incoming_count if incoming else layer.neuron_count)
        value = check_multiplier(lr)
        kind = EventKind.SET_INCOMING_NEURON_LR if incoming else EventKind.SET_NEURON_LR
        with self._transaction() as log:
            self._forget_derived(log)
            set_multiplier(layer, "lr_col_multiplier" if incoming else "lr_row_multiplier", indices, value, log)
            args = {"layer_index": index, "neuron_indices": indices, "lr": value}
            self._record(log, OperationRecord(kind, args, {"changed": [name]}))

    def _with_partners(self, chosen: list[NeuronLayer]) -> list[NeuronLayer]:
        # Batch norms that are not in self.layers follow the layer whose output they normalise.
        listed = set(map(id, self._state.layers()))
        names = self._state.layer_names()
        loose = [m for m in names if isinstance(m, BatchNorm2dWithNeuronOps) and id(m) not in listed]
        if not loose:
            return chosen
        graph = self._state.dependency_graph()
        chosen_names = {names[m] for m in chosen}
        return chosen + [m for m in loose if graph.bn_origin.get(names[m]) in chosen_names]

    def _set_frozen(self, kind: str, args: dict[str, int], layers: list[NeuronLayer], flag: bool) -> None:
        names = self._state.layer_names()
        with self._transaction() as log:
            self._forget_derived(log)
            for layer in layers:
                set_frozen(layer, flag, log)
            self._record(log, OperationRecord(kind, args, {"changed": [names[m] for m in layers]}))

    def freeze_layers_up_to_idx(self, up_to_index: int) -> None:
        """See :meth:`NetworkWithOps.freeze_layers_up_to_idx`."""
        layers = self._state.layers()
        index = check_layer_index(up_to_index, len(layers))
        targets = self._with_partners(layers[: index + 1])
        self._set_frozen(EventKind.FREEZE, {"up_to_index": index}, targets, True)

    def unfreeze_layers_from_idx(self, from_index: int) -> None:
        """See :meth:`NetworkWithOps.unfreeze_layers_from_idx`."""
        layers = self._state.layers()
        index = check_layer_index(from_index, len(layers))
        targets = self._with_partners(layers[index:])
        self._set_frozen(EventKind.UNFREEZE, {"from_index": index}, targets, False)
