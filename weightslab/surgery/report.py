"""The per-neuron statistics report behind ``display_stats()``.

Format (the tutorial's two lines per neuron, rates in [0, 1])::

    Neuron 00003:  train: 0.0759 (   7493 /   98758) <------ WEAK
                :  eval : 0.0700 (   1673 /   23900)

A neuron is DEAD when it saw samples and never triggered, WEAK when its rate is
below a quarter of the median rate of its layer's live (not dead) neurons. The
train counters decide the flags (the eval ones when the layer never trained).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from weightslab.surgery.modules import NeuronLayer

__all__ = ["WEAK_FRACTION", "format_layer_stats", "format_stats"]

WEAK_FRACTION = 0.25


def _flags(triggers: list[int], seen: list[int]) -> list[str]:
    live = [t / s for t, s in zip(triggers, seen) if s > 0 and t > 0]
    median = statistics.median(live) if live else 0.0
    flags = []
    for t, s in zip(triggers, seen):
        if s == 0:
            flags.append("")
        elif t == 0:
            flags.append(" <------ DEAD")
        elif t / s < WEAK_FRACTION * median:
            flags.append(" <------ WEAK")
        else:
            flags.append("")
    return flags


def format_layer_stats(index: int, name: str, layer: NeuronLayer) -> list[str]:
    """The header and the two lines per neuron of one layer."""
    module: Any = layer
    counts = {
        split: (getattr(module, f"{split}_trigger_count").tolist(), getattr(module, f"{split}_seen_count").tolist())
        for split in ("train", "eval")
    }
    train_t, train_s = counts["train"]
    eval_t, eval_s = counts["eval"]
    use_train = any(train_s)
    flags = _flags(train_t, train_s) if use_train else _flags(eval_t, eval_s)
    header = f"Layer {index} ({name}: {type(layer).__name__}, {layer.neuron_count} neurons)"
    if not any(train_s) and not any(eval_s):
        header += ": no samples tracked yet (or called with skip_register=True)"
    lines = [header]
    for n in range(layer.neuron_count):
        rate_t = train_t[n] / train_s[n] if train_s[n] else 0.0
        rate_e = eval_t[n] / eval_s[n] if eval_s[n] else 0.0
        flag_t = flags[n] if use_train else ""
        flag_e = "" if use_train else flags[n]
        lines.append(f"Neuron {n:05d}:  train: {rate_t:.4f} ({train_t[n]:7d} / {train_s[n]:7d}){flag_t}")
        lines.append(f"            :  eval : {rate_e:.4f} ({eval_t[n]:7d} / {eval_s[n]:7d}){flag_e}")
    return lines


def format_stats(layers: Sequence[tuple[int, str, NeuronLayer]]) -> str:
    """The report of several layers, each given as ``(layer_index, name, layer)``."""
    lines: list[str] = ["# trigger_rate (trigger_count / seen_samples)"]
    for index, name, layer in layers:
        lines += format_layer_stats(index, name, layer)
    return "\n".join(lines)
