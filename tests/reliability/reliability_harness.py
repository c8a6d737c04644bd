"""A fork server that runs experiment workers for the crash and concurrency tests.

Started once per test module with ``python reliability_harness.py``: it imports
torch and WeightsLab and builds the digits data once (the slow part, ~2 s), then
forks one worker per ``spawn`` command read from stdin. A worker is a real
process: it opens (or reopens) an experiment, runs a seeded script of
operations and reports, one JSON line per fact, on stdout:

    {"ev": "spawned", "tag": ..., "pid": ...}        (from the server)
    {"ev": "ready", "tag": ..., "last_seq": ..., "replayed": n, "not_restored": [...]}
    {"ev": "done", "tag": ..., "op": ..., "seq": ..., "hash": ...}   after each operation returned
    {"ev": "hit", "tag": ..., "phase": ...}          a failpoint was reached: the worker now sleeps
    {"ev": "finished", "tag": ..., ...}              the script ended (the worker exits 0)
    {"ev": "error", "tag": ..., "type": ..., "message": ...}
    {"ev": "exited", "pid": ..., "signal": ..., "code": ...}   (from the server, after reaping)

A *failpoint* wraps one internal step (a blob rename, a statistics upsert, a
Parquet encoding, an event insert before its commit, ...): its ``n``-th call
reports ``hit`` and sleeps, so the test can SIGKILL the worker exactly there.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

HIT_SLEEP_S = 60.0


def emit(obj: dict[str, Any]) -> None:
    """One JSON line on stdout in one write (atomic on a pipe: lines never interleave)."""
    os.write(1, (json.dumps(obj, separators=(",", ":")) + "\n").encode())


# --------------------------------------------------------------------------- failpoints

class Failpoint:
    """Counts calls of a wrapped step; the ``n``-th reports ``hit`` and sleeps (to be killed)."""

    def __init__(self, tag: str, phase: str, nth: int) -> None:
        self.tag, self.phase, self.nth, self.calls = tag, phase, nth, 0

    def reached(self) -> None:
        self.calls += 1
        if self.calls == self.nth:
            emit({"ev": "hit", "tag": self.tag, "phase": self.phase})
            deadline = time.monotonic() + HIT_SLEEP_S
            while time.monotonic() < deadline:
                exit_if_orphaned()
                time.sleep(0.05)


SERVER_PID = 0  # set in each worker: if the server goes, the worker goes too


def exit_if_orphaned() -> None:
    if SERVER_PID and os.getppid() != SERVER_PID:
        os._exit(3)


def arm(phase: str, fp: Failpoint) -> None:
    """Install the failpoint of ``phase`` in this (worker) process."""
    import weightslab.experiment.batch_results as batch_results
    import weightslab.experiment.checkpoints as checkpoints
    import weightslab.experiment.experiment as experiment
    import weightslab.experiment.replay as replay
    import weightslab.experiment.statistics as statistics
    import weightslab.history.blobs as blobs
    import weightslab.history.eventlog as eventlog
    import weightslab.history.snapshots as snapshots
    import weightslab.history.stats as stats

    def after(module: Any, name: str) -> None:
        original = getattr(module, name)

        def wrapper(*a: Any, **k: Any) -> Any:
            out = original(*a, **k)
            fp.reached()
            return out

        setattr(module, name, wrapper)

    if phase == "train":  # between two training batches: trained, nothing recorded yet
        original_add = batch_results.BatchResults.add

        def add(self: Any, *a: Any, **k: Any) -> Any:
            out = original_add(self, *a, **k)
            if self._ds.split == "train":
                fp.reached()
            return out

        batch_results.BatchResults.add = add
    elif phase == "event-insert":  # the event row is inserted, its transaction not committed
        after(eventlog, "append_event")
    elif phase == "sample-stats":  # the background writer's upsert, before its commit
        after(stats, "upsert_sample_stats")
    elif phase == "neuron-stats":  # the neuron statistics of an event's transaction
        after(stats, "upsert_neuron_stats")
    elif phase == "dump-blobs":  # a dump's tensor blobs written, the dump event not yet
        after(checkpoints, "write_state")
    elif phase == "dump-commit":  # checkpoint row and snapshots inserted, not committed
        after(statistics.Statistics, "write_snapshots")
    elif phase == "parquet":  # while a Parquet snapshot is being encoded
        after(snapshots, "parquet_bytes")
    elif phase == "create":  # the experiment row exists, its creation event does not yet
        after(experiment, "write_state")
    elif phase == "resume":  # re-applying the events after the last checkpoint on reopen
        after(replay.Replayer, "apply")
    elif phase == "blob-rename":  # a blob fully written to blobs/tmp, not yet renamed into place
        blobs.INLINE_MAX = 0  # the test model's blobs are small: make every one a file
        real_os = blobs.os

        class _Os:
            def __getattr__(self, name: str) -> Any:
                return getattr(real_os, name)

            def replace(self, src: Any, dst: Any) -> None:
                fp.reached()
                real_os.replace(src, dst)

        blobs.os = _Os()  # type: ignore[assignment]
    elif phase == "blob-partial":  # half of a blob's bytes written to its temporary file
        blobs.INLINE_MAX = 0
        import builtins

        class _HalfFile:
            def __init__(self, f: Any) -> None:
                self._f = f

            def __enter__(self) -> _HalfFile:
                return self

            def __exit__(self, *exc: Any) -> None:
                self._f.close()

            def write(self, data: bytes) -> int:
                half = len(data) // 2
                self._f.write(data[:half])
                self._f.flush()
                fp.reached()
                return half + self._f.write(data[half:])

            def __getattr__(self, name: str) -> Any:
                return getattr(self._f, name)

        def half_open(path: Any, mode: str = "r", *a: Any, **k: Any) -> Any:
            f = builtins.open(path, mode, *a, **k)  # noqa: SIM115 - closed by the caller's with
            return _HalfFile(f) if "w" in mode and "tmp" in str(path) else f

        blobs.open = half_open  # type: ignore[attr-defined]
    elif phase != "random":
        raise ValueError(f"unknown phase {phase!r}")


# --------------------------------------------------------------------------- the worker

DATA: Any = None  # (train, eval): built once in the server, inherited by every fork


def open_experiment(cmd: dict[str, Any]) -> Any:
    import torch
    from torch import optim

    from weightslab import Experiment
    from weightslab.demo import MNISTModel

    torch.manual_seed(0)
    train_ds, eval_ds = DATA
    return Experiment(model=MNISTModel(), optimizer_class=optim.Adam, train_dataset=train_ds,
                      eval_dataset=eval_ds, device="cpu", learning_rate=1e-2, batch_size=64,
                      name=cmd["name"], store=cmd["target"], tensorboard_dir=cmd["tb"], seed=0, progress=False)


def _operations(exp: Any, rng: random.Random) -> list[tuple[str, int, Any]]:
    """(name, weight, action) of the script; an action returns False when it does not apply now."""
    model, ds = exp.model, exp.train_loader.dataset

    def add() -> Any:
        i = rng.randrange(3)
        if model.layers[i].neuron_count >= 6:
            return False
        model.add_neurons(layer_index=i, neuron_count=1)

    def prune() -> Any:
        i = rng.randrange(3)
        width = model.layers[i].neuron_count
        if width <= 2:
            return False
        model.prune(layer_index=i, neuron_indices={rng.randrange(width)})

    def reinit() -> None:
        i = rng.randrange(3)
        model.reinit_neurons(layer_index=i, neuron_indices={0}, perturbation_ratio=rng.choice([None, 0.1]))

    def lr() -> None:
        model.layers[rng.randrange(3)].set_per_neuron_learning_rate({0}, lr=rng.choice([0.0, 0.5, 1.0]))

    def freeze() -> None:
        if rng.random() < 0.5:
            model.freeze_layers_up_to_idx(rng.randrange(2))
        else:
            model.unfreeze_layers_from_idx(0)

    def deny() -> None:
        k = rng.randrange(50)
        ds.deny_samples_with_predicate(lambda id, age, loss, times, denied, pred, label: id % 50 == k)

    def load() -> Any:
        ids = exp.chkpt_manager.ids()
        if not ids:
            return False
        exp.load(checkpoint_id=rng.choice(ids))

    return [
        ("train", 6, lambda: exp.train_n_steps(rng.randint(1, 4))),
        ("eval", 1, lambda: exp.eval_n_steps(rng.randint(1, 2))),
        ("eval_full", 1, exp.eval_full),
        ("add_neurons", 1, add),
        ("prune", 1, prune),
        ("reinit", 1, reinit),
        ("set_lr", 1, lr),
        ("freeze", 1, freeze),
        ("deny", 1, deny),
        ("allow", 1, lambda: ds.allowlist_samples(None)),
        ("dump", 2, exp.dump),
        ("snapshot", 1, exp.snapshot),
        ("load", 1, load),
    ]


def _last_event(exp: Any) -> tuple[int, str]:
    seq = exp.last_seq
    rows = exp.store.events(exp.experiment_id, from_seq=seq, to_seq=seq)
    return seq, rows[0].hash if rows else ""


def run_worker(cmd: dict[str, Any]) -> int:
    tag = cmd["tag"]
    fp = Failpoint(tag, cmd.get("phase", "random"), int(cmd.get("nth", 1)))
    arm(fp.phase, fp)
    mode = cmd.get("mode", "script")
    if mode == "same":
        return _same_experiment(cmd)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exp = open_experiment(cmd)
    report = exp.resume_report
    seq, digest = _last_event(exp)
    emit({"ev": "ready", "tag": tag, "last_seq": seq, "hash": digest,
          "replayed": len(report.replayed) if report else 0,
          "not_restored": report.not_restored if report else [],
          "warnings": [str(w.message)[:300] for w in caught]})
    rng = random.Random(cmd.get("seed", 0))
    ops = _operations(exp, rng)
    if cmd.get("script") == "edits":  # the cheapest recorded operation: an event and a state fingerprint
        ops = [o for o in ops if o[0] == "set_lr"]
    names, weights = [o[0] for o in ops], [o[1] for o in ops]
    actions = {o[0]: o[2] for o in ops}
    started = time.perf_counter()
    events_before = seq
    for _ in range(int(cmd.get("ops", 10**6))):
        exit_if_orphaned()
        name = rng.choices(names, weights)[0]
        if actions[name]() is False:
            continue
        seq, digest = _last_event(exp)
        emit({"ev": "done", "tag": tag, "op": name, "seq": seq, "hash": digest})
    exp.close()
    elapsed = time.perf_counter() - started
    final: dict[str, Any] = {"ev": "finished", "tag": tag, "seq": exp.last_seq,
                             "events": exp.last_seq - events_before, "seconds": elapsed,
                             "experiment_id": exp.experiment_id}
    for split, lds in (("train", exp.train_loader.dataset), ("eval", exp.eval_loader.dataset)):
        final[f"{split}_exposure"] = int(lds.stats.exposure_amount.sum())
        final[f"{split}_denied"] = int(lds.stats.deny_listed.sum())
    final["age"] = exp.model_age
    emit(final)
    return 0


def _same_experiment(cmd: dict[str, Any]) -> int:
    """Open an existing experiment, wait at the barrier file, then train step by step."""
    from weightslab.errors import ConcurrencyError

    tag = cmd["tag"]
    try:
        exp = open_experiment(cmd)
    except ConcurrencyError as e:
        emit({"ev": "conflict", "tag": tag, "at": "open", "message": str(e)})
        return 0
    emit({"ev": "opened", "tag": tag, "seq": exp.last_seq})
    barrier = Path(cmd["barrier"])
    deadline = time.monotonic() + 60
    while not barrier.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    done = 0
    for _ in range(int(cmd["steps"])):
        try:
            exp.train_n_steps(1)
        except ConcurrencyError as e:
            emit({"ev": "conflict", "tag": tag, "at": "train", "message": str(e), "done": done})
            return 0
        done += 1
    exp.close()
    emit({"ev": "finished", "tag": tag, "events": done, "seq": exp.last_seq})
    return 0


# --------------------------------------------------------------------------- the server

LIVE: set[int] = set()  # the server's workers not reaped yet


def _reap() -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        LIVE.discard(pid)
        emit({"ev": "exited", "pid": pid,
              "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
              "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None})


def _spawn(cmd: dict[str, Any]) -> None:
    pid = os.fork()
    if pid:
        LIVE.add(pid)
        emit({"ev": "spawned", "tag": cmd["tag"], "pid": pid})
        return
    global SERVER_PID
    SERVER_PID = os.getppid()
    code = 1
    try:
        code = run_worker(cmd)
    except BaseException as e:  # noqa: BLE001 - report everything to the test, then exit
        emit({"ev": "error", "tag": cmd["tag"], "type": type(e).__name__, "message": str(e)[:2000],
              "traceback": traceback.format_exc()[-3000:]})
    finally:
        os._exit(code)


def serve() -> None:
    global DATA
    import torch

    torch.set_num_threads(1)  # no OpenMP pool before fork; two cores are shared by several workers
    from torch.utils.tensorboard import SummaryWriter  # noqa: F401 - the slow import, done once

    import weightslab.experiment.experiment  # noqa: F401 - imported once, inherited by every fork
    from weightslab.demo import digits_datasets

    DATA = digits_datasets()
    emit({"ev": "server-ready", "pid": os.getpid()})
    buf = b""
    while True:
        _reap()
        readable, _, _ = select.select([0], [], [], 0.02)
        if not readable:
            continue
        chunk = os.read(0, 65536)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                _spawn(json.loads(line))
    # stdin closed: the test is over (or gone). No worker may outlive the server.
    for pid in list(LIVE):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.02)
        except ChildProcessError:
            break


if __name__ == "__main__":
    sys.exit(serve())
