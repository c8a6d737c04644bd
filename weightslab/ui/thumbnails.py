"""Thumbnails of samples, from the data sets an experiment's recipe builds.

The only part of the UI that imports torch, and only when a thumbnail is asked
for: the recorded recipe (``package.module:function``, see
:func:`weightslab.experiment.replica.load_recipe`) is imported and called once
per experiment, in the server's process, so it is code the store names: serve
stores you trust, or start the UI with ``--no-thumbnails``. A sample's input is
an image when it is a tensor of shape (H, W), (1, H, W) or (3, H, W); it is
scaled to 0..255 by its own minimum and maximum and written as a PNG (Pillow).
"""

from __future__ import annotations

import io
import threading
from typing import Any

from weightslab.errors import ConfigurationError

__all__ = ["Thumbnails"]

MAX_SIDE = 96  # pixels: larger images are shrunk to this


class Thumbnails:
    """PNG thumbnails of samples, by experiment (its recipe) and split."""

    def __init__(self) -> None:
        self._datasets: dict[str, tuple[Any, Any] | None] = {}
        self._lock = threading.Lock()

    def png(self, recipe: str | None, split: str, sample_id: int) -> bytes | None:
        """The thumbnail of a sample as PNG bytes; None when the experiment has no recipe that imports or
        its inputs are not images.

        Raises:
            ConfigurationError: ``sample_id`` is not in the split.
        """
        datasets = self._load(recipe) if recipe else None
        if datasets is None:
            return None
        dataset = datasets[0] if split == "train" else datasets[1]
        if not 0 <= sample_id < len(dataset):
            raise ConfigurationError(f"sample {sample_id} is not in the {split} set of {len(dataset)} samples")
        return _to_png(dataset[sample_id][0])

    def _load(self, recipe: str) -> tuple[Any, Any] | None:
        with self._lock:  # one import and one call per recipe, however many thumbnails a page asks for
            if recipe not in self._datasets:
                from weightslab.errors import WeightsLabError
                from weightslab.experiment.replica import load_recipe

                try:
                    _, train, evaluation = load_recipe(recipe)
                    self._datasets[recipe] = (train, evaluation)
                except WeightsLabError:
                    self._datasets[recipe] = None  # the page shows no thumbnails
            return self._datasets[recipe]


def _to_png(x: Any) -> bytes | None:
    import numpy as np
    import torch
    from PIL import Image

    if not isinstance(x, torch.Tensor):
        return None
    a = x.detach().to("cpu", torch.float32)
    if a.dim() == 3 and a.shape[0] in (1, 3):
        a = a.permute(1, 2, 0)
        if a.shape[2] == 1:
            a = a[:, :, 0]
    if a.dim() not in (2, 3) or min(a.shape[:2]) < 2:
        return None
    lo, hi = float(a.min()), float(a.max())
    pixels = ((a - lo) / (hi - lo or 1.0) * 255).round().to(torch.uint8).numpy()
    image = Image.fromarray(np.ascontiguousarray(pixels))
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    if max(image.size) < 48:  # small inputs (digits' 8×8 upsampled, MNIST's 28×28): show them larger
        scale = 48 // max(image.size) or 1
        image = image.resize((image.size[0] * scale, image.size[1] * scale), Image.Resampling.NEAREST)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
