"""A cheap fingerprint of a map-style dataset: its length and a hash of a few items.

Reopening an experiment compares the recorded fingerprint with the dataset at
hand, so that sample ids are known to point at the same samples. Reading every
item would cost an epoch; a handful at fixed positions catches the usual
mistakes (another dataset, another split, a different transform or order).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

__all__ = ["dataset_fingerprint", "fingerprint_positions"]

_ITEMS = 8  # items hashed: the first, the last and evenly spaced ones between


def fingerprint_positions(length: int, count: int = _ITEMS) -> list[int]:
    """The deterministic item positions hashed for a dataset of ``length`` items."""
    if length <= 0:
        return []
    return sorted({int(p) for p in np.linspace(0, length - 1, num=min(length, count))})


def dataset_fingerprint(dataset: Any) -> str:
    """``"<length>:<sha256 hex>"`` of the dataset's length and the bytes of a few items.

    Tensors and arrays contribute dtype, shape and raw bytes; PIL images their
    mode, size and pixels; other values their ``repr``. Deterministic across runs
    and processes.

    Example:
        >>> dataset_fingerprint(torch.utils.data.TensorDataset(torch.zeros(3, 2), torch.zeros(3)))[:2]
        '3:'
    """
    length = len(dataset)
    h = hashlib.sha256(f"len={length}".encode())
    for position in fingerprint_positions(length):
        h.update(f"|item {position}|".encode())
        _hash_value(h, dataset[position])
    return f"{length}:{h.hexdigest()}"


def _hash_value(h: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"tensor {t.dtype} {tuple(t.shape)}".encode())
        flat = t.reshape(-1)
        if flat.numel() == 1:  # a one-element view may keep any stride, which a byte view refuses
            flat = flat.as_strided((1,), (1,))
        h.update(flat.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, np.ndarray):
        h.update(f"ndarray {value.dtype} {value.shape}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, tuple | list):
        h.update(f"seq {len(value)}".encode())
        for v in value:
            _hash_value(h, v)
    elif hasattr(value, "tobytes") and hasattr(value, "mode") and hasattr(value, "size"):  # PIL image
        h.update(f"image {value.mode} {value.size}".encode())
        h.update(value.tobytes())
    else:
        h.update(f"{type(value).__name__} {value!r}".encode())
