"""Fixtures of the surgery tests."""

from __future__ import annotations

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Every test that takes ``device`` runs on the CPU and, where present, on CUDA."""
    return torch.device(request.param)


@pytest.fixture(autouse=True, scope="module")
def _one_cpu_thread():
    # These tests run small models on a shared 2-core machine: one intra-op thread is several
    # times faster than two fighting other processes. Restored after each module.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
