"""The environment of a run: what changes floating-point results, recorded with the history.

The create event and every resume event record it (:func:`current`). Replay and
reopening compare the environment an event ran in with this process's
(:func:`compare`): what can be set at run time is *pinned* while the event is
re-executed (thread counts, deterministic-algorithm and cuDNN flags, float32
matmul precision; :class:`Pinned`), what cannot (another torch version, another
kind of device or GPU) is *refused*, naming the difference, unless the caller
accepts the risk, and the rest (numpy and Python versions, the CPU's vector
unit) is *noted*: the fingerprints say whether it mattered.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["Comparison", "Pinned", "compare", "current"]

#: Settings replay sets to their recorded values while it re-executes an event.
PINNABLE = ("threads", "deterministic", "cudnn_deterministic", "cudnn_benchmark", "matmul_precision")
#: Differences replay cannot undo: it refuses them unless the caller accepts the risk.
REFUSED = ("torch", "device_type", "device_name", "world_size")  # world_size: see experiment/distributed.py
#: Differences that may or may not change results: reported, not refused.
NOTED = ("numpy", "python", "cpu_capability", "interop_threads", "backend")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _distributed() -> tuple[int, str | None]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), str(dist.get_backend())
    return 1, None


def current(device: torch.device) -> dict[str, Any]:
    """This process's environment, as a create or resume event records it."""
    world_size, backend = _distributed()
    cuda = device.type == "cuda"
    return {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "device_type": device.type,
        # on a CPU the model name is informative only (noted); a GPU's decides which kernels run
        "device_name": torch.cuda.get_device_name(device) if cuda else None,
        "cpu": _cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "matmul_precision": torch.get_float32_matmul_precision(),
        "world_size": world_size,
        "backend": backend,
    }


@dataclass(frozen=True)
class Comparison:
    """How a recorded environment differs from this one."""

    pin: dict[str, Any] = field(default_factory=dict)  # setting -> recorded value to use while replaying
    refused: list[str] = field(default_factory=list)  # "torch 2.13.0 (here 2.14.1)"
    noted: list[str] = field(default_factory=list)


def compare(recorded: Mapping[str, Any] | None, here: Mapping[str, Any]) -> Comparison:
    """What to pin, refuse and note to re-execute, here, an event recorded in ``recorded`` (None: unknown)."""
    if not recorded:
        return Comparison()
    out = Comparison()
    for key in (*PINNABLE, *REFUSED, *NOTED):
        if key not in recorded or recorded[key] == here.get(key):
            continue
        if key in PINNABLE:
            out.pin[key] = recorded[key]
        elif key in REFUSED:
            out.refused.append(f"{key} {recorded[key]} (here {here.get(key)})")
        else:
            out.noted.append(f"{key} {recorded[key]} (here {here.get(key)})")
    return out


def _apply(settings: Mapping[str, Any]) -> None:
    for key, value in settings.items():
        if key == "threads":
            torch.set_num_threads(int(value))
        elif key == "deterministic":
            torch.use_deterministic_algorithms(bool(value))
        elif key == "cudnn_deterministic":
            torch.backends.cudnn.deterministic = bool(value)
        elif key == "cudnn_benchmark":
            torch.backends.cudnn.benchmark = bool(value)
        elif key == "matmul_precision":
            torch.set_float32_matmul_precision(str(value))


class Pinned:
    """Sets recorded settings while events are re-executed, and puts the caller's back afterwards.

    Example:
        >>> with Pinned(device).pinning() as pin:
        ...     pin.to(entry.environment)   # before each event
        ...     ...                         # re-execute it
    """

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._caller = {k: v for k, v in current(device).items() if k in PINNABLE}
        self._now: dict[str, Any] = dict(self._caller)

    def to(self, recorded: Mapping[str, Any] | None) -> None:
        """Use ``recorded``'s pinnable settings (the caller's where it recorded none)."""
        wanted = dict(self._caller)
        wanted.update({k: recorded[k] for k in PINNABLE if recorded and k in recorded})
        changed = {k: v for k, v in wanted.items() if self._now.get(k) != v}
        if changed:
            _apply(changed)
            self._now.update(changed)

    def restore(self) -> None:
        _apply({k: v for k, v in self._caller.items() if self._now.get(k) != v})
        self._now = dict(self._caller)

    @contextmanager
    def pinning(self) -> Iterator[Pinned]:
        try:
            yield self
        finally:
            self.restore()
