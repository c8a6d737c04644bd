"""The demo's digits are scikit-learn's, read without importing scikit-learn (a second of every demo and replay)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from sklearn.datasets import load_digits

PROBE = ("import sys, numpy as np; from weightslab.demo import digits_arrays; images, target = digits_arrays(); "
         "print('sklearn' in sys.modules); np.save(sys.argv[1], images); np.save(sys.argv[2], target)")


def test_the_digits_are_those_of_load_digits_without_importing_sklearn(tmp_path):
    images, target = tmp_path / "images.npy", tmp_path / "target.npy"
    out = subprocess.run([sys.executable, "-c", PROBE, str(images), str(target)], capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"  # scikit-learn was not imported
    digits = load_digits()
    assert np.load(images).dtype == digits.images.dtype and np.array_equal(np.load(images), digits.images)
    assert np.array_equal(np.load(target), digits.target)
