"""Start-up cost of the ``weightslab`` command: each read-only command beside ``python -c pass``.

Builds a small store (the demo's model on scikit-learn's digits: a few train events, a checkpoint, an edit),
then runs each command as a user does, in a fresh process, alternated in ABBA order with ``python -c pass``
(the interpreter's own start-up: the floor no command can go below). Reports each command's median wall
time and the median of the per-pair ratios to ``python -c pass``. ``replay`` is reported as its fixed
overhead: wall time minus the seconds it reports for the replay itself (``--json``'s ``seconds``), beside
the floor of any PyTorch program that builds an optimizer (``import torch`` and the first
``torch.optim.Adam(...)``, which imports ``torch._dynamo``), alternated with it.

    python tools/bench_cli.py [--reps 7] [--importtime COMMAND]   # also run by tools/bench.py --only cli_startup

``--importtime experiments`` prints the modules that cost the most to import for that command
(``python -X importtime``, self time), for profiling.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NAME = "cli-bench"
SQL = "SELECT kind, COUNT(*) AS n FROM events GROUP BY kind"
# command name → its arguments (after `weightslab`); --store is appended
COMMANDS: dict[str, list[str]] = {
    "experiments": ["experiments"],
    "events": ["events", NAME],
    "lineage": ["lineage", NAME],
    "audit": ["audit", NAME],
    "sql": ["sql", SQL],
}
TORCH_FLOOR = "import torch; torch.optim.Adam([torch.zeros(1, requires_grad=True)])"


def build_store(store: str) -> None:
    """A small store: the demo's model on digits, 3 train events, a checkpoint, a prune, 1 more train event."""
    import torch
    from torch import optim

    from weightslab import Experiment
    from weightslab.demo import MNISTModel, digits_datasets

    train, ev = digits_datasets()
    torch.manual_seed(0)
    exp = Experiment(model=MNISTModel(), optimizer_class=optim.Adam, train_dataset=train, eval_dataset=ev,
                     learning_rate=1e-2, batch_size=64, name=NAME, store=store, recipe="weightslab.demo:recipe",
                     progress=False)
    for _ in range(3):
        exp.train_n_steps(4)
    exp.dump()
    exp.model.prune(layer_index=1, neuron_indices={0})
    exp.train_n_steps(4)
    exp.close()


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "WEIGHTSLAB_STORE"}


def _run(argv: list[str]) -> tuple[float, str]:
    t = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, env=_env(), check=False)
    wall = time.perf_counter() - t
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr[-2000:]}")
    return wall, out.stdout


def _weightslab(args: list[str], store: str) -> list[str]:
    return [sys.executable, "-m", "weightslab.cli", *args, "--store", store]


def measure(store: str, reps: int) -> list[dict[str, Any]]:
    """Per command: median wall, median of per-pair ratios to ``python -c pass``, and the runs (ABBA order)."""
    floor = [sys.executable, "-c", "pass"]
    _run(floor)  # warm the file cache for both sides
    rows = []
    for args in COMMANDS.values():
        cmd = _weightslab(args, store)
        _run(cmd)
        base, subj = [], []
        for i in range(reps):
            for side in ((floor, base), (cmd, subj)) if i % 2 == 0 else ((cmd, subj), (floor, base)):
                side[1].append(_run(side[0])[0])
        rows.append({"command": f"weightslab {' '.join(args)}", "python_c_pass": statistics.median(base),
                     "wall": statistics.median(subj),
                     "ratio": statistics.median(s / b for s, b in zip(subj, base, strict=True)),
                     "runs": {"python_c_pass": base, "command": subj}})
    # replay: the fixed overhead is the wall time minus the seconds the command reports for the replay
    cmd = _weightslab(["replay", NAME, "--json"], store)
    floor = [sys.executable, "-c", TORCH_FLOOR]
    walls, work, floors = [], [], []
    for i in range(max(3, reps // 2)):
        for side in ("floor", "replay") if i % 2 == 0 else ("replay", "floor"):
            if side == "floor":
                floors.append(_run(floor)[0])
            else:
                wall, out = _run(cmd)
                walls.append(wall)
                work.append(float(json.loads(out)["seconds"]))
    overhead = [w - s for w, s in zip(walls, work, strict=True)]
    rows.append({"command": f"weightslab replay {NAME}", "wall": statistics.median(walls),
                 "reported": statistics.median(work), "overhead": statistics.median(overhead),
                 "torch_floor": statistics.median(floors),
                 "beyond_floor": statistics.median(o - f for o, f in zip(overhead, floors, strict=True)),
                 "runs": {"wall": walls, "reported": work, "torch_floor": floors}})
    return rows


def importtime(command: str, store: str, top: int = 15) -> list[tuple[int, int, str]]:
    """The modules with the largest self import time (µs) when running ``command``: (self, cumulative, name)."""
    argv = [sys.executable, "-X", "importtime", "-m", "weightslab.cli", *COMMANDS[command], "--store", store]
    err = subprocess.run(argv, capture_output=True, text=True, env=_env(), check=True).stderr
    rows = []
    for line in err.splitlines():
        if line.startswith("import time:") and "|" in line and "self" not in line:
            own, cum, mod = line.removeprefix("import time:").split("|")
            rows.append((int(own), int(cum), mod.strip()))
    return sorted(rows, reverse=True)[:top]


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=7, help="pairs per command (default 7)")
    ap.add_argument("--store", default=None, help="use this store (built there if it has no experiment)")
    ap.add_argument("--importtime", choices=sorted(COMMANDS), default=None,
                    help="print the top import costs of one command instead of timing")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or str(Path(tmp) / "store")
        if not (Path(store) / "weightslab.db").exists():
            build_store(store)
        if args.importtime:
            for own, cum, mod in importtime(args.importtime, store):
                print(f"{own / 1000:8.1f} ms self {cum / 1000:8.1f} ms cumulative  {mod}")
            return
        print(f"load before: {load()}")
        for row in measure(store, args.reps):
            if "ratio" in row:
                print(f"  {row['command']:<58} {row['wall']:6.3f} s  {row['ratio']:5.2f}× python -c pass "
                      f"({row['python_c_pass']:.3f} s)")
            else:
                print(f"  {row['command']:<58} {row['wall']:6.3f} s  overhead {row['overhead']:.3f} s beyond the "
                      f"{row['reported']:.3f} s it reports; import torch + first optimizer alone: "
                      f"{row['torch_floor']:.3f} s; overhead beyond that: {row['beyond_floor']:.3f} s")
        print(f"load after: {load()}")


if __name__ == "__main__":
    main()
