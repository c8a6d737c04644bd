"""The loss: per-sample losses, checked once on a real batch before anything is recorded."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from weightslab.errors import ConfigurationError

__all__ = ["Criterion", "check_criterion", "default_criterion"]

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def default_criterion(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood per sample: fits the tutorial's ``log_softmax`` output."""
    return F.nll_loss(output, labels, reduction="none")


def check_criterion(criterion: Criterion, output: torch.Tensor, labels: torch.Tensor) -> None:
    """Refuse a criterion that does not give one finite loss per sample.

    Raises:
        ConfigurationError: a reducing criterion, wrong shape, or labels it cannot use.
    """
    reduction = getattr(criterion, "reduction", "none")
    if reduction != "none":
        raise ConfigurationError(
            f"the criterion reduces its losses (reduction={reduction!r}); WeightsLab needs one loss per "
            "sample: pass e.g. nn.CrossEntropyLoss(reduction='none')"
        )
    try:
        with warnings.catch_warnings(record=True) as caught:  # a broadcasting criterion warns: say why
            warnings.simplefilter("always")
            losses = criterion(output, labels)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise ConfigurationError(
            f"the criterion cannot use these labels with the model's output "
            f"(output {tuple(output.shape)} {output.dtype}, labels {tuple(labels.shape)} {labels.dtype}): {e}"
        ) from e
    if not isinstance(losses, torch.Tensor) or losses.shape != (output.shape[0],):
        shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        hint = f" (it warned: {caught[0].message})" if caught else ""
        raise ConfigurationError(
            f"the criterion must return one loss per sample, shape ({output.shape[0]},); got {shape}{hint}. "
            "Use reduction='none'."
        )
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
