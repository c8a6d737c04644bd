"""Validation of the user-facing arguments of surgery operations.

Every check runs before the first mutation, so a refused operation leaves the
model, its optimizer and its statistics untouched. Messages say what was wrong,
what was expected and what to do.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Iterable
from typing import Any

import torch

from weightslab.errors import ConfigurationError, IndexSelectionError

__all__ = [
    "MAX_ADDED_NEURONS",
    "check_count",
    "check_drawn_seed",
    "check_index",
    "check_layer_index",
    "check_multiplier",
    "check_neuron_indices",
    "check_ratio",
    "check_seed",
    "check_seed_source",
]

_MAX_SEED = 2**63
_MAX_DRAWN_SEED = 2**62
#: The most neurons one ``add_neurons`` call may add: far beyond any layer's useful growth, and
#: small enough that planning (a traced forward at the new width) cannot exhaust memory.
MAX_ADDED_NEURONS = 65_536


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, (bool, str | bytes)):
        raise IndexSelectionError(
            f"{what} must be an integer, got {value!r} ({type(value).__name__}); pass an int such as 0."
        )
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_floating_point():
        return int(value.item())
    try:
        return operator.index(value)
    except TypeError:
        raise IndexSelectionError(
            f"{what} must be an integer, got {value!r} ({type(value).__name__}); pass an int such as 0."
        ) from None


def check_index(value: Any, what: str) -> int:
    """``value`` as a plain int (rejects bools, floats, strings)."""
    return _as_int(value, what)


def check_layer_index(layer_index: Any, layer_count: int) -> int:
    """Normalise a layer index (negative counts from the end) to ``0 <= i < layer_count``.

    Raises:
        IndexSelectionError: wrong type or out of range (the message names the valid range).
    """
    index = _as_int(layer_index, "layer_index")
    if layer_count == 0:
        raise IndexSelectionError(
            "the model has no editable layers; build it from Conv2dWithNeuronOps / LinearWithNeuronOps / "
            "BatchNorm2dWithNeuronOps (or call convert_to_ops) and list them in self.layers."
        )
    if not -layer_count <= index < layer_count:
        raise IndexSelectionError(
            f"layer_index {index} is out of range: the model has {layer_count} layers, so valid indices "
            f"are 0..{layer_count - 1} (or -{layer_count}..-1 counting from the end)."
        )
    return index % layer_count


def check_neuron_indices(neuron_indices: Any, width: int, what: str = "neuron_indices") -> list[int]:
    """Validate a selection of neurons of a layer with ``width`` neurons; return it sorted.

    Accepts a set, list, tuple, range or 1-d integer tensor of distinct indices in ``0..width-1``.

    Raises:
        IndexSelectionError: empty, not integers, negative, duplicated or out of range.
    """
    if isinstance(neuron_indices, str | bytes) or not isinstance(neuron_indices, Iterable | torch.Tensor):
        raise IndexSelectionError(
            f"{what} must be a collection of integers such as {{0, 2}}, got {neuron_indices!r}."
        )
    if isinstance(neuron_indices, torch.Tensor):
        if neuron_indices.is_floating_point() or neuron_indices.dim() > 1:
            raise IndexSelectionError(f"{what} must be a 1-d integer tensor, got {neuron_indices!r}.")
        items: list[Any] = neuron_indices.flatten().tolist()
    else:
        items = list(neuron_indices)
    if not items:
        raise IndexSelectionError(f"{what} is empty; name at least one neuron, e.g. {{0}}.")
    values = [_as_int(v, f"every entry of {what}") for v in items]
    negative = sorted(v for v in values if v < 0)
    if negative:
        raise IndexSelectionError(
            f"{what} contains negative indices {negative}; neurons are numbered 0..{width - 1}."
        )
    if len(set(values)) != len(values):
        dupes = sorted({v for v in values if values.count(v) > 1})
        raise IndexSelectionError(f"{what} contains duplicates {dupes}; name each neuron once.")
    outside = sorted(v for v in values if v >= width)
    if outside:
        raise IndexSelectionError(
            f"{what} {outside} out of range: this layer has {width} neurons, valid indices are "
            f"0..{width - 1}."
        )
    return sorted(values)


def _size(nbytes: int) -> str:
    value, unit = float(nbytes), "bytes"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:,.1f} {unit}"


def check_count(neuron_count: Any, bytes_per_neuron: int = 0) -> int:
    """A number of neurons to add: at least 1, at most :data:`MAX_ADDED_NEURONS`.

    Args:
        neuron_count: the caller's value.
        bytes_per_neuron: memory one new neuron takes in its layer (named in the refusal).

    Raises:
        IndexSelectionError: not an integer, below 1, or above the bound (checked before
            anything is allocated).
    """
    count = _as_int(neuron_count, "neuron_count")
    if count <= 0:
        raise IndexSelectionError(f"neuron_count must be at least 1, got {count}.")
    if count > MAX_ADDED_NEURONS:
        need = f", and these would take {_size(count * bytes_per_neuron)} in this layer alone" if bytes_per_neuron else ""
        raise IndexSelectionError(
            f"neuron_count {count} is too large: one add_neurons call adds at most {MAX_ADDED_NEURONS} "
            f"neurons{need}. Add fewer neurons (in several calls if you really need that many)."
        )
    return count


def _finite_non_negative(value: Any, what: str, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigurationError(f"{what} must be a number, got {value!r} ({type(value).__name__}).")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ConfigurationError(f"{what} must be finite and >= 0, got {value!r}; {hint}")
    return number


def check_ratio(perturbation_ratio: Any) -> float | None:
    """``None`` or a finite, non-negative perturbation ratio."""
    if perturbation_ratio is None:
        return None
    return _finite_non_negative(
        perturbation_ratio,
        "perturbation_ratio",
        "use e.g. 0.2 to move each weight by at most 20% of its magnitude, or None for a fresh draw.",
    )


def check_multiplier(lr: Any) -> float:
    """A finite, non-negative learning-rate multiplier."""
    return _finite_non_negative(
        lr, "lr", "it multiplies the optimizer's step: 1.0 is normal, 0.0 freezes the neurons."
    )


def check_seed_source(source: Any) -> Any:
    """``None`` or a callable that takes no argument (an owner's source of seeds).

    Raises:
        ConfigurationError: anything else.
    """
    if source is not None and not callable(source):
        raise ConfigurationError(
            f"a seed source must be a function returning an int in 0..2**62-1 (or None to remove it), "
            f"got {source!r} ({type(source).__name__})."
        )
    return source


def check_drawn_seed(value: Any) -> int:
    """A seed returned by a seed source: an int in ``0..2**62-1``.

    Raises:
        ConfigurationError: anything else (the operation is refused, nothing changed).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= int(value) < _MAX_DRAWN_SEED:
        raise ConfigurationError(
            f"the seed source returned {value!r}; it must return an int in 0..2**62-1. Nothing was changed."
        )
    return int(value)


def check_seed(seed: Any) -> int | None:
    """``None`` or an integer seed in ``0..2**63-1``."""
    if seed is None:
        return None
    value = _as_int(seed, "seed")
    if not 0 <= value < _MAX_SEED:
        raise ConfigurationError(f"seed must be in 0..2**63-1, got {value}.")
    return value
