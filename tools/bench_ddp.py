"""The 2-process benchmark scenario: what one rank of it runs (``tools/bench.py --only train_tutorial_ddp``).

Launched as N local gloo processes (``weightslab.experiment.distributed.launch``), each with one torch
thread. Alternates, in ABBA order, a plain DDP loop (``DistributedSampler``, the tutorial's architecture in
plain torch.nn, Adam, NLL) and an ``Experiment`` on the same data and global batch (recording every event,
gathering statistics, agreeing fingerprints), each timed from a barrier to a barrier; rank 0 writes the
runs to ``OUT`` as JSON.

    python tools/bench_ddp.py OUT --samples 12000 --batch 128 --reps 3    (under launch / torchrun)
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import optim
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

sys.path.insert(0, str(Path(__file__).parent))
from bench_models import PlainMNISTModel, synthetic  # noqa: E402

from weightslab import Experiment  # noqa: E402
from weightslab.demo import MNISTModel  # noqa: E402
from weightslab.experiment.distributed import initialise_from_environment  # noqa: E402


def _cpu_sum(cpu: float) -> float:
    """Process CPU seconds of the timed part, summed over the ranks (steadier than wall time on a busy
    machine: what each side costs, wherever it ran)."""
    t = torch.tensor([cpu], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())


def plain(ds: TensorDataset, batch: int, steps: int) -> tuple[float, float]:
    model = DistributedDataParallel(PlainMNISTModel())
    opt = optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(ds, batch_size=batch, sampler=DistributedSampler(ds, shuffle=True, seed=0))
    gc.collect()
    dist.barrier()
    t, c = time.perf_counter(), time.process_time()
    for i, (x, y) in enumerate(loader):
        if i == steps:
            break
        opt.zero_grad(set_to_none=True)
        F.nll_loss(model(x), y).backward()
        opt.step()
    cpu = time.process_time() - c
    dist.barrier()
    return time.perf_counter() - t, _cpu_sum(cpu)


def experiment(ds: TensorDataset, ev: TensorDataset, batch: int, steps: int, store: str) -> tuple[float, float]:
    name = [f"ddp-{uuid.uuid4().hex[:8]}"]
    dist.broadcast_object_list(name, src=0)
    exp = Experiment(model=MNISTModel(), optimizer_class=optim.Adam, train_dataset=ds, eval_dataset=ev,
                     learning_rate=1e-3, batch_size=batch, name=name[0], store=store, progress=False)
    gc.collect()
    dist.barrier()
    t, c = time.perf_counter(), time.process_time()
    exp.train_n_steps(steps)
    exp.close()  # collective: rank 0 has written every statistic
    elapsed, cpu = time.perf_counter() - t, time.process_time() - c
    exp.store.close()
    return elapsed, _cpu_sum(cpu)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--samples", type=int, default=12_000)
    ap.add_argument("--batch", type=int, default=128, help="per rank (the global batch is this × world size)")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if not initialise_from_environment("cpu"):
        raise SystemExit("run under a process group: tools/bench.py --only train_tutorial_ddp launches it")
    world = dist.get_world_size()
    ds, ev = synthetic(args.samples), synthetic(1000, seed=1)
    steps = args.samples // (args.batch * world)
    with tempfile.TemporaryDirectory() as tmp:
        box = [tmp]
        dist.broadcast_object_list(box, src=0)  # rank 0's directory: the one store every rank opens
        store = box[0]
        plain(ds, args.batch, steps)  # warm-up
        experiment(ds, ev, args.batch, steps, store)
        base, subject = [], []
        for i in range(args.reps):
            if i % 2 == 0:
                base.append(plain(ds, args.batch, steps))
                subject.append(experiment(ds, ev, args.batch, steps, store))
            else:
                subject.append(experiment(ds, ev, args.batch, steps, store))
                base.append(plain(ds, args.batch, steps))
        dist.barrier()
    if dist.get_rank() == 0:
        Path(args.out).write_text(json.dumps({"world_size": world, "steps": steps,
                                              "baseline": [b[0] for b in base], "weightslab": [s[0] for s in subject],
                                              "baseline_cpu": [b[1] for b in base],
                                              "weightslab_cpu": [s[1] for s in subject]}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
