"""One experiment over the ranks of a ``torch.distributed`` process group (DDP, launched by ``torchrun``).

Every rank constructs the same ``Experiment(...)``; when a process group with more than one rank is
initialised, the experiment finds it (:meth:`Group.current`) and then:

- **rank 0 writes**: it opens (or creates) the store and is the only one to write events, blobs and
  statistics; the other ranks open it read-only and keep a *mirror* recorder that follows rank 0's
  seq and hash chain without writing;
- **batches**: every rank draws the same *global* batch (``batch_size × world_size`` ids) from the same
  ledger sampler, so denies, epochs and the sampler's state are those of one process training on the
  global batch, and keeps its contiguous share of it (:func:`~weightslab.experiment.loaders.share_of`);
- **training** goes through ``DistributedDataParallel`` (re-wrapped when an edit changed the
  parameters: :meth:`Group.wrap`); each rank's loss is weighted so that DDP's gradient average is the
  global batch's mean;
- **statistics**: per-sample results of every rank are all-gathered and applied in the global batch
  order on every rank (so every rank holds the same ledger, and deny predicates select the same ids),
  trigger counters are all-reduced and other floating buffers (BatchNorm statistics) taken from rank 0,
  at the end of every loop;
- **agreement**: every event is agreed before it is written: each rank's event payload and state
  fingerprint digest are all-gathered, and any difference raises :class:`~weightslab.errors.DistributedError`
  on every rank, naming the seq and the ranks, with nothing written; operations that start collectives
  of their own (training, evaluation, closing) first agree on the call itself.

Without a process group (or with one rank) none of this runs: a single process makes no collective call.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from weightslab.errors import ConfigurationError, DistributedError, StoreError
from weightslab.history.store import Store

if TYPE_CHECKING:
    from weightslab.events.domain import DomainEvent
    from weightslab.experiment.recorder import Recorder
    from weightslab.experiment.runtime import Fingerprint, Runtime
    from weightslab.experiment.tensorboard import Board

__all__ = ["Group", "Outcome", "free_port", "initialise_from_environment", "join", "launch", "recorded_world_size"]

#: Buffers that count per rank (summed over the ranks at the end of a loop) or are fixed by the global batch.
_COUNTERS = ("train_trigger_count", "train_seen_count", "eval_trigger_count", "eval_seen_count", "model_age")

#: One global batch as the loops keep it: (ids, per-sample losses, predictions, labels, model age).
Kept = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, Any]


@dataclass(frozen=True)
class Outcome:
    """What rank 0 tells the other ranks after a write: committed (seq, hash, experiment id) or failed."""

    seq: int = 0
    hash: str | None = None
    experiment_id: int = 0
    error: str | None = None


def initialise_from_environment(device: str = "cpu", timeout_s: float = 120.0) -> bool:
    """Initialise the default process group from ``torchrun``'s environment (``WORLD_SIZE`` > 1, ``RANK``,
    ``MASTER_ADDR``/``MASTER_PORT``): gloo on CPU, NCCL on CUDA. Returns whether a group with several ranks
    is (now) initialised; does nothing without that environment or when a group exists already."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    backend = "nccl" if str(device).startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return True


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a local process group's rendezvous)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(args: Sequence[str], nproc: int, *, timeout_s: float | None = None, quiet: bool = True,
           env: dict[str, str] | None = None) -> int:
    """Run ``python ARGS`` as ``nproc`` local processes of one process group (torchrun's environment on
    127.0.0.1, a free port); returns rank 0's exit code, or the first failure's. When a rank fails, the
    others get 30 s to notice (gloo reports a closed peer) and are then stopped; ``quiet``: the ranks > 0
    print nothing on stdout (their errors still reach stderr).

    Raises:
        TimeoutError: the ranks ran longer than ``timeout_s`` (they are stopped).
    """
    import subprocess
    import sys
    import time

    base = {**os.environ, **(env or {}), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
            "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc)}
    procs = [subprocess.Popen([sys.executable, *args], env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.DEVNULL if quiet and r else None) for r in range(nproc)]
    started, failed_at = time.monotonic(), None
    try:
        while any(p.poll() is None for p in procs):
            now = time.monotonic()
            if failed_at is None and any(p.returncode not in (None, 0) for p in procs):
                failed_at = now
            if failed_at is not None and now - failed_at > 30:
                break
            if timeout_s is not None and now - started > timeout_s:
                raise TimeoutError(f"the {nproc} ranks of python {' '.join(args)} ran longer than {timeout_s} s")
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    codes = [p.returncode for p in procs]
    return next((c for c in codes if c != 0), 0) if codes[0] == 0 else codes[0]


def recorded_world_size(environments: Sequence[Any]) -> tuple[int, str | None]:
    """The world size and backend a log was recorded with (the largest over its creation and resumes)."""
    sizes = [(int(e.get("world_size") or 1), e.get("backend")) for e in environments if e]
    return max(sizes, default=(1, None), key=lambda s: s[0])


def join(group: Group, rt: Runtime, recorder: Recorder, board: Board, arguments: dict[str, Any]) -> None:
    """Make a just-built experiment rank-aware: global batches sharded, events agreed (only rank 0 writes,
    and only rank 0 writes TensorBoard logs), after checking that every rank was given the same
    ``arguments`` and giving every rank rank 0's model state.

    Raises:
        ConfigurationError: an option that cannot run under torch.distributed (on every rank).
        DistributedError: the ranks were given different arguments (on every rank).
    """
    if rt.config.compile is not None:
        raise ConfigurationError("compile=True is not supported under torch.distributed yet: construct the "
                                 "experiment without it (DDP trains the eager model)")
    rt.group = group
    rt.batches.distribute(group.rank, group.world_size)
    recorder.group = group
    board.quiet = not group.writes
    group.agree("Experiment", arguments)
    group.broadcast_module(rt.model)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Group:
    """This process's place in the default process group, and the collective steps of an experiment."""

    def __init__(self, rank: int, world_size: int, backend: str) -> None:
        self.rank, self.world_size, self.backend = rank, world_size, backend
        self._signature: tuple[tuple[Any, ...], ...] | None = None  # of the parameters DDP wraps now

    @classmethod
    def current(cls) -> Group | None:
        """The default process group, when one with more than one rank is initialised; else None."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
            return None
        return cls(dist.get_rank(), dist.get_world_size(), str(dist.get_backend()))

    @property
    def writes(self) -> bool:
        """Whether this rank writes the store (rank 0)."""
        return self.rank == 0

    def __repr__(self) -> str:
        return f"Group(rank={self.rank}, world_size={self.world_size}, backend={self.backend!r})"

    # -- agreement ------------------------------------------------------------------------------------
    def _gather(self, value: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def share(self, value: Any = None) -> Any:
        """Rank 0's ``value`` on every rank."""
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def agree(self, what: str, detail: Any) -> None:
        """Check that every rank makes the same call (``what`` with ``detail``), before it starts collectives
        of its own.

        Raises:
            DistributedError: on every rank, naming the ranks and calls that differ.
        """
        self._compare(self._gather(("call", what, detail)), what)

    def agree_event(self, seq: int, event: DomainEvent, fingerprint: Fingerprint) -> None:
        """Check that every rank is about to record the same event (kind and payload) with the same state
        fingerprint, before rank 0 writes it.

        Raises:
            DistributedError: on every rank, naming the seq, the ranks and what differs (the call, or which
                part of the state); nothing is written.
        """
        payload = {k: v for k, v in event.to_payload().items() if k != "environment"}  # rank 0's is recorded
        mine = ("event", event.KIND, _digest(payload), fingerprint.digest)
        gathered = self._gather((*mine, payload, dict(fingerprint.groups)))
        self._compare(gathered, f"seq {seq}")

    def _compare(self, gathered: Sequence[tuple[Any, ...]], where: str) -> None:
        first = gathered[0]
        differ = [r for r, g in enumerate(gathered) if g[:4] != first[:4]]
        if not differ:
            return
        r = differ[0]
        other = gathered[r]
        if other[:3] != first[:3]:  # another call, or the same call with other arguments
            raise DistributedError(
                f"the ranks disagree at {where}: rank 0 {_describe(first)}, rank {r} {_describe(other)} "
                f"(ranks differing from rank 0: {differ}). Every rank must make the same calls with the same "
                "arguments (SPMD); nothing was recorded")
        parts = sorted(k for k, v in other[5].items() if first[5].get(k) != v)
        raise DistributedError(
            f"the ranks' states differ at {where} ({first[1]}): rank {r}'s fingerprint differs from rank 0's in "
            f"{', '.join(parts) or 'the whole state'} (ranks differing: {differ}). The ranks ran different code "
            "or data; nothing was recorded")

    # -- rank 0 writes, the others follow --------------------------------------------------------------
    def outcome(self, outcome: Outcome | None = None) -> Outcome:
        """Rank 0 passes what its write did; every rank gets it. A failure raises on the other ranks.

        Raises:
            StoreError: (ranks > 0) rank 0 could not write; the message is rank 0's.
        """
        got: Outcome = self.share(outcome if self.writes else None)
        if not self.writes and got.error is not None:
            raise StoreError(f"rank 0 could not write the event ({got.error}); every rank stops here")
        return got

    def open_store(self, store: Any) -> Store:
        """Rank 0 opens (or creates) the store first; then the other ranks open it read-only.

        Raises:
            StoreError: on every rank when rank 0 could not open it (rank 0's own error on rank 0).
        """
        if self.writes:
            try:
                opened = Store.open(store)
            except BaseException as e:
                self.share(f"{type(e).__name__}: {e}")
                raise
            self.share(None)
            return opened
        failed = self.share()
        if failed is not None:
            raise StoreError(f"rank 0 could not open the store ({failed}); every rank stops here")
        return Store.open(store, create=False, read_only=True)

    def barrier(self) -> None:
        dist.barrier()

    # -- the model ---------------------------------------------------------------------------------------
    def broadcast_module(self, model: torch.nn.Module) -> None:
        """Give every rank rank 0's parameters and buffers (a model built without a common seed)."""
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def wrap(self, rt: Runtime) -> None:
        """Make ``rt.forward`` a DDP wrapper of the model's current parameters (again after an edit or a
        restore changed them, their shapes or which of them train, on any rank: an edit that one rank rolled back
        may have replaced its parameters)."""
        signature = _signature(rt.model)
        same = self._signature is not None and len(signature) == len(self._signature) and all(
            a[0] is b[0] and a[1:] == b[1:] for a, b in zip(signature, self._signature))
        stale = torch.tensor([not same or rt.forward is rt.model], dtype=torch.int32,
                             device=rt.device if self.backend == "nccl" else "cpu")
        dist.all_reduce(stale, op=dist.ReduceOp.MAX)  # DDP's buckets must be built alike: re-wrap on every rank
        if not stale.item():
            return
        from torch.nn.parallel import DistributedDataParallel

        # The old wrapper is dropped as it is: its reducer's autograd hooks stay on accumulators that an edit
        # replaced, or (a freeze) on the same ones, where they do nothing: a reducer only reduces after its
        # own forward prepared it. (No gc.collect here: a full collection costs ~0.5 s with torch loaded.)
        rt.forward = rt.model
        ids = [rt.device.index] if rt.device.type == "cuda" and rt.device.index is not None else None
        # forward_sync_buffers=False: trigger counters and the age count per rank and are summed at the end of
        # each loop (sync_after_loop); init_sync=False: the ranks' states were verified equal at the last event
        rt.forward = DistributedDataParallel(rt.model, device_ids=ids, forward_sync_buffers=False, init_sync=False)
        self._signature = signature

    def counters(self, model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
        """The per-rank counting buffers (trigger and seen counts, the age), copied: call before a loop."""
        return [(name, buf.detach().clone()) for name, buf in model.named_buffers()
                if name.rpartition(".")[2] in _COUNTERS and name.rpartition(".")[2] != "model_age"]

    def sync_after_loop(self, model: torch.nn.Module, before: list[tuple[str, torch.Tensor]]) -> None:
        """After a loop: sum the ranks' trigger and seen counts since ``before`` (every rank counted its share
        of the batches), and take rank 0's floating buffers (BatchNorm's running statistics, as DDP does)."""
        buffers = dict(model.named_buffers())
        if before:
            deltas = torch.cat([(buffers[name] - old).reshape(-1) for name, old in before])
            dist.all_reduce(deltas)
            start = 0
            with torch.no_grad():
                for name, old in before:
                    n = old.numel()
                    buffers[name].copy_(old + deltas[start:start + n].view_as(old))
                    start += n
        floats = [b for name, b in buffers.items()
                  if b.is_floating_point() and name.rpartition(".")[2] not in _COUNTERS]
        if floats:
            flat = torch.cat([b.detach().reshape(-1) for b in floats])
            dist.broadcast(flat, src=0)
            start = 0
            with torch.no_grad():
                for b in floats:
                    b.copy_(flat[start:start + b.numel()].view_as(b))
                    start += b.numel()

    # -- statistics --------------------------------------------------------------------------------------
    def gather_batches(self, kept: list[Kept]) -> list[Kept]:
        """Every rank's shares of the same global batches, joined in rank order: the global batches, in
        the order one process would have seen them (each rank kept as many batches). One all-gather of
        four flat numpy arrays a rank (pickling numpy is ~10x cheaper than pickling tensors)."""
        sizes = np.array([len(b[0]) for b in kept], dtype=np.int64)
        ages = np.array([int(b[4]) for b in kept], dtype=np.int64)

        def flat(j: int) -> np.ndarray:
            parts = [b[j].detach().reshape(-1).cpu() for b in kept]
            if not parts:
                return np.zeros(0, np.float32 if j == 1 else np.int64)
            out = torch.cat(parts)
            return (out.float() if out.dtype in (torch.bfloat16, torch.float16) else out).numpy()

        everyone = self._gather((sizes, ages, flat(0), flat(1), flat(2), flat(3)))
        if len({len(e[0]) for e in everyone}) != 1:
            raise DistributedError(f"the ranks kept different numbers of batches ({[len(e[0]) for e in everyone]}): "
                                   "every rank must train and evaluate the same number of steps")
        starts = [np.concatenate([[0], np.cumsum(e[0])]) for e in everyone]
        out: list[Kept] = []
        for k in range(len(sizes)):
            columns = [torch.from_numpy(np.concatenate([e[j][s[k]:s[k + 1]] for e, s in zip(everyone, starts)]))
                       for j in (2, 3, 4, 5)]
            out.append((columns[0], columns[1], columns[2], columns[3], int(everyone[0][1][k])))
        return out


def _signature(model: torch.nn.Module) -> tuple[tuple[Any, ...], ...]:
    """What DDP's reducer depends on, per parameter: autograd's gradient accumulator (where its hooks are; an
    edit, or its rollback, gives a parameter new data and a new accumulator), the shape, whether it trains."""
    out = []
    for p in model.parameters():
        fn = p.view_as(p).grad_fn if p.requires_grad else None
        node = fn.next_functions[0][0] if fn is not None else None
        out.append((node, tuple(p.shape), p.requires_grad))
    return tuple(out)


def _describe(item: tuple[Any, ...]) -> str:
    if item[0] == "call":
        return f"called {item[1]}({str(item[2])[:300]})"
    payload = item[4]
    args = payload.get("args", payload) if isinstance(payload, dict) else payload
    text = json.dumps(args, sort_keys=True, default=str)
    return f"recorded {item[1]} {text[:200]}"
