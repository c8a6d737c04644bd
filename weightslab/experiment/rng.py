"""Random number generator states (torch, CUDA, numpy, python) as plain arrays.

Checkpoints and training events store these as tensor blobs, so restoring them
needs no pickle: python's Mersenne Twister state is 625 integers, numpy's
legacy global state is a key array plus a few numbers.
"""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["capture_rng", "restore_rng"]


def capture_rng() -> dict[str, torch.Tensor]:
    """The global RNG states of this process, as CPU tensors."""
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    assert np_name == "MT19937"
    states = {
        "torch": torch.get_rng_state(),
        "python": torch.tensor([version, *internal, -1 if gauss is None else 1], dtype=torch.int64),
        "python_gauss": torch.tensor([0.0 if gauss is None else gauss], dtype=torch.float64),
        "numpy": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
        "numpy_meta": torch.tensor([np_pos, np_has_gauss], dtype=torch.int64),
        "numpy_gauss": torch.tensor([np_gauss], dtype=torch.float64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            states[f"cuda{i}"] = s
    return states


def restore_rng(states: dict[str, torch.Tensor]) -> None:
    """Set the global RNG states from :func:`capture_rng`'s output."""
    torch.set_rng_state(states["torch"].to(torch.uint8).cpu())
    py = states["python"].tolist()
    gauss = float(states["python_gauss"][0]) if py[-1] == 1 else None
    random.setstate((int(py[0]), tuple(int(x) for x in py[1:-1]), gauss))
    keys = states["numpy"].numpy().astype(np.uint32)
    pos, has_gauss = (int(x) for x in states["numpy_meta"].tolist())
    np.random.set_state(("MT19937", keys, pos, has_gauss, float(states["numpy_gauss"][0])))
    cuda = sorted(k for k in states if k.startswith("cuda"))
    if cuda and torch.cuda.is_available():
        for k in cuda:
            i = int(k[4:])
            if i < torch.cuda.device_count():
                torch.cuda.set_rng_state(states[k].to(torch.uint8).cpu(), i)
