"""The GPU check (tools/gpu_check.py) runs, at tiny sizes on the CPU, every row it runs on a GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

TOOLS = Path(__file__).resolve().parents[1] / "tools"

ROWS = ("tutorial", "resnet18 train", "resnet18 prune", "resnet18 add neurons", "resnet18 reinit",
        "resnet18 per-neuron lr", "resnet18 per-incoming lr", "resnet18 freeze", "resnet18 unfreeze",
        "resnet18 deny", "resnet18 allow", "resnet18 learning rate", "resnet18 eval", "resnet18 dump",
        "resnet18 load", "resnet18 replay from start", "overhead tutorial (batch 256)", "overhead resnet18")


@pytest.mark.slow
def test_the_gpu_check_runs_every_row_on_the_cpu_at_tiny_sizes() -> None:
    done = subprocess.run([sys.executable, str(TOOLS / "gpu_check.py"), "--device", "cpu", "--tiny"],
                          capture_output=True, text=True, timeout=600, cwd=TOOLS.parent)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    table = done.stdout.rpartition("\ncheck ")[2]
    lines = {line.split("  ")[0].strip(): line for line in table.splitlines()[1:] if line.strip()}
    for check in ROWS:
        assert check in lines, (check, table)
        assert "FAILED" not in lines[check]
    assert "all checks passed" in done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_the_gpu_check_without_cuda_says_to_run_on_the_cpu(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(TOOLS))
    import gpu_check

    with pytest.raises(SystemExit, match="no CUDA device here: run with --device cpu"):
        gpu_check.main(["--device", "cuda"])
