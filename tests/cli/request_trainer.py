"""A training process for the request tests: ``python request_trainer.py STORE NAME STOP_FILE``.

Creates (or reopens) experiment NAME on STORE (the tutorial model on digits, recipe
``weightslab.demo:recipe`` so that replay tools rebuild it) and runs
``train_n_steps_with_eval_full`` in short calls, each with a full eval every 2 steps (the
safe points where outside requests are applied), until STOP_FILE exists (pausing between calls, so the log stays short). Prints
"ready" once the experiment exists and its first call ran, and "stopped SEQ" at the end.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import optim

from weightslab import Experiment
from weightslab.demo import MNISTModel, digits_datasets


def main() -> None:
    store, name, stop = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    torch.manual_seed(0)
    train_ds, eval_ds = digits_datasets()
    exp = Experiment(model=MNISTModel(), optimizer_class=optim.Adam, train_dataset=train_ds, eval_dataset=eval_ds,
                     learning_rate=1e-2, batch_size=64, name=name, store=store, eval_every=2,
                     recipe="weightslab.demo:recipe", tensorboard_dir=str(stop.parent / "tb"), progress=False)
    exp.train_n_steps_with_eval_full(2)
    print("ready", flush=True)
    deadline = time.monotonic() + 240  # never outlive a test that forgot to stop it
    while not stop.exists() and time.monotonic() < deadline:
        exp.train_n_steps_with_eval_full(4)
        time.sleep(1.0)  # a short log: the tests replay it
    exp.close()
    print("stopped", exp.last_seq, flush=True)


if __name__ == "__main__":
    main()
