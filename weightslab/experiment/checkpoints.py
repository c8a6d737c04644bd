"""Checkpoints: content-addressed manifests of the whole state, and their tree.

``dump()`` writes every state tensor as a blob (an unchanged tensor hashes to
a blob the store already has, so it is not written again), a manifest blob
naming them, the ``dump`` event, the ``checkpoints`` row and the statistics
snapshots in one transaction: a checkpoint never exists without its blobs, and
a dump that fails leaves nothing in the tables. ``load(k)`` reads the manifest, verifies every blob, and restores
the state exactly (rebuilding layer widths), keeping the same optimizer.

The per-sample state (``ledger/…`` columns, ``sampler/…`` arrays) of an experiment with fingerprint
version 2 is written compact (``WLC1`` blobs under a ``weightslab.state/2`` manifest: narrowed,
compressed columns; the sampler's order as the generator state it was drawn from); everything else,
and every state of a version-1 experiment (whose blob hashes are its fingerprint), as ``WLT1``.
The tensors a blob decodes to are the same either way, and so is the fingerprint. See docs/dumps.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch

from weightslab.errors import ConfigurationError
from weightslab.events.domain import CheckpointDumped, CheckpointLoaded
from weightslab.experiment.recorder import Recorder
from weightslab.experiment.runtime import Fingerprint, Runtime
from weightslab.experiment.state import fast_digests
from weightslab.experiment.statistics import Statistics
from weightslab.history.blobs import blob_hash, check_hash
from weightslab.history.checkpoints import CheckpointRow
from weightslab.history.hashing import sha256_many
from weightslab.history.lineage import Lineage
from weightslab.history.log import walk
from weightslab.history.manifest import FORMAT, FORMAT_COMPACT, Manifest, encode_manifest, uses_fast_digests
from weightslab.history.store import Store
from weightslab.history.tensorcodec import (
    COMPACT_MIN_BYTES,
    decode_tensor,
    encode_compact,
    encode_tensor_parts,
)

__all__ = ["COMPACT_DATA", "CheckpointManager", "read_state", "state_fingerprint", "write_state"]

#: Write the per-sample state compact (``WLC1``) in experiments with fingerprint version 2. False writes every
#: tensor as ``WLT1`` under a ``weightslab.state/1`` manifest, as before (tools/bench_dump_size.py compares them).
COMPACT_DATA = True
#: ...from this many bytes a tensor: below it the compact codecs cost more time than the bytes they save
#: (a 60k-sample experiment's dump + load took 2.2x as long compact); at 10^6 samples they save 26 B a sample.
COMPACT_FROM_BYTES = 1 << 20
_PER_SAMPLE = ("ledger/", "sampler/")


def _encode(rt: Runtime, tensors: dict[str, torch.Tensor], names: list[str]) -> tuple[list[Any], str]:
    """Each tensor's blob parts, in ``names`` order (a ``WLT1`` blob's: header and a view of the values), and
    the manifest format they need."""
    if not COMPACT_DATA or rt.fingerprint_version < 2:
        return [encode_tensor_parts(tensors[n]) for n in names], FORMAT
    samplers = {f"sampler/{split.name}/permutation": split.sampler for split in rt.splits}
    encoded: list[Any] = []
    for n in names:
        t = tensors[n]
        parts = None
        if n.startswith(_PER_SAMPLE) and t.nbytes >= max(COMPACT_MIN_BYTES, COMPACT_FROM_BYTES) and t.device.type == "cpu":
            sampler = samplers.get(n)
            source = getattr(sampler, "order_source", None)
            parts = encode_compact(t.numpy(), order=sampler is not None,
                                   order_source=source() if callable(source) else None)
        encoded.append(parts if parts is not None else encode_tensor_parts(t))
    return encoded, FORMAT_COMPACT


def write_state(rt: Runtime, conn: Any) -> tuple[str, Fingerprint]:
    """Store the live state's blobs and manifest in ``conn``'s transaction; returns (manifest hash, fingerprint)."""
    tensors, meta = rt.capture()
    names = sorted(tensors)
    encoded, manifest_format = _encode(rt, tensors, names)
    digests = sha256_many(encoded)
    # the values of each WLT1-encoded CPU tensor are at hand: the fingerprint reads them from there
    views = {n: parts[1] for n, parts in zip(names, encoded)
             if isinstance(parts[1], memoryview) and tensors[n].is_cpu and tensors[n].numel()}
    hashes = dict(zip(names, digests))
    manifest = encode_manifest(hashes, meta, manifest_format)
    # the tensors and their manifest in one write (one lookup of the blobs the store already has)
    if conn is None:  # a rank of torch.distributed that does not write: the same hashes, nothing stored
        manifest_hash = blob_hash(manifest)
    else:
        *_, manifest_hash = rt.store.blobs.put_many(conn, [*encoded, manifest],
                                                    hashes=[*digests, blob_hash(manifest)])
    return manifest_hash, Fingerprint.of_state(
        hashes if rt.fingerprint_version < 2 else rt.tensor_digests(tensors, views), meta)


def state_fingerprint(manifest: Manifest, tensors: dict[str, torch.Tensor]) -> Fingerprint:
    """The fingerprint of the state ``manifest`` describes, whose decoded tensors are ``tensors``."""
    return Fingerprint(*manifest.fingerprint(fast_digests(tensors) if uses_fast_digests(manifest.meta) else None))


def read_state(store: Store, manifest_hash: str) -> tuple[Manifest, dict[str, torch.Tensor]]:
    """A manifest and its verified, decoded tensors (no pickle anywhere).

    Raises:
        BlobNotFoundError / IntegrityError: a blob is missing or damaged, or the manifest malformed.
    """
    manifest = store.read_manifest(manifest_hash).check_restorable(manifest_hash)
    names = list(manifest.tensors)
    datas = store.blobs.get_many([check_hash(manifest.tensors[n]) for n in names])
    return manifest, {name: decode_tensor(data) for name, data in zip(names, datas)}


class CheckpointManager:
    """The checkpoints of one experiment; ``print()`` it to see the lineage tree."""

    def __init__(self, rt: Runtime, recorder: Recorder, statistics: Statistics) -> None:
        self._rt = rt
        self._recorder = recorder
        self._statistics = statistics
        self.head: int | None = None  # the checkpoint the live state descends from
        self.last_dump_bytes = 0  # new blob bytes the last dump wrote (unchanged tensors excluded)
        # manifest hash -> the fingerprint of its state, for the checkpoints this process dumped or loaded: a
        # manifest (SHA-256 of the tensors' hashes and the JSON part) fixes its state, so a load of one of
        # them needs no second pass over the tensors
        self._fingerprints: dict[str, Fingerprint] = {}
        #: Wraps a load: the Experiment's write-ahead guard (rebuild the last recorded state if the load's
        #: event cannot be written).
        self.guard: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext

    def ids(self) -> list[int]:
        """Checkpoint ids of this experiment, ascending."""
        return [r.checkpoint_id for r in self._rt.store.checkpoints(self._rt.experiment_id)]

    def manifest_of(self, checkpoint_id: int) -> str:
        """The manifest hash of checkpoint ``checkpoint_id``.

        Raises:
            ConfigurationError: no such checkpoint (the message lists those that exist).
        """
        rows = {r.checkpoint_id: r for r in self._rt.store.checkpoints(self._rt.experiment_id)}
        row = rows.get(checkpoint_id)
        if row is None:
            raise ConfigurationError(
                f"checkpoint {checkpoint_id!r} does not exist in experiment {self._rt.name!r}; "
                f"existing checkpoints: {sorted(rows) or 'none (call exp.dump() first)'}"
            )
        return row.manifest_hash

    def dump(self) -> int:
        """Save a checkpoint of the whole state; returns its id (0, 1, 2, ...)."""
        rt, store = self._rt, self._rt.store
        self._recorder.check_writable()
        cid = store.next_checkpoint_id(rt.experiment_id)
        parent = self.head
        self._recorder.wait()
        self._statistics.keep_history()
        before = store.blobs.bytes_written
        age = rt.model_age
        # One transaction: the blobs and manifest, the dump event, the checkpoint row and the snapshots are
        # committed together or not at all (a refused event leaves no trace in the tables; blob files
        # written for it stay as unreferenced, complete files).
        with self._recorder.transaction() as conn:  # under torch.distributed: rank 0's (conn None elsewhere)
            manifest_hash, fingerprint = write_state(rt, conn)

            def register(conn: Any, seq: int) -> None:
                store.add_checkpoint(conn, rt.experiment_id, CheckpointRow(cid, parent, seq, manifest_hash, age))
                self._statistics.write_snapshots(conn, seq)

            self._recorder.append(
                CheckpointDumped(checkpoint_id=cid, parent_id=parent, manifest=manifest_hash, model_age=age,
                                 architecture=tuple(rt.widths())),
                in_transaction=register, fingerprint=fingerprint, conn=conn,
            )
        self.last_dump_bytes = store.blobs.bytes_written - before
        self._fingerprints[manifest_hash] = fingerprint
        self._statistics.snapshots_committed()
        self.head = cid
        return cid

    def load(self, checkpoint_id: int) -> None:
        """Restore checkpoint ``checkpoint_id`` exactly; the next dump branches from it.

        Everything is checked before anything changes: the id, the checkpoint's manifest and every blob,
        and that the store's log still ends where this session left it.

        Raises:
            ConfigurationError: no such checkpoint.
            BlobNotFoundError / IntegrityError: a damaged checkpoint, or a log cut short behind this session.
            ConcurrencyError: another process appended to the experiment.
        """
        if isinstance(checkpoint_id, bool) or not isinstance(checkpoint_id, int):
            raise ConfigurationError(f"checkpoint_id must be an integer, got {checkpoint_id!r}")
        self._recorder.check_writable()
        manifest_hash = self.manifest_of(checkpoint_id)
        manifest, tensors = read_state(self._rt.store, manifest_hash)  # verify everything before changing anything
        self._recorder.check_head()
        with self.guard():
            self._restore_and_record(checkpoint_id, manifest_hash, manifest, tensors)

    def _restore_and_record(self, checkpoint_id: int, manifest_hash: str, manifest: Manifest,
                            tensors: dict[str, torch.Tensor]) -> None:
        self._statistics.keep_history()  # the passes made so far happened: keep them for the next snapshot
        self._rt.restore(tensors, manifest.meta)
        self.head = checkpoint_id
        # The restored state is exactly the manifest's: its fingerprint is the manifest's (computed once per
        # manifest in this process). The ledger marked the samples whose statistics the restore changed:
        # only their rows are written again.
        fingerprint = self._fingerprints.get(manifest_hash) or state_fingerprint(manifest, tensors)
        self._recorder.append(CheckpointLoaded(checkpoint_id=checkpoint_id, manifest=manifest_hash),
                              fingerprint=fingerprint)
        self._fingerprints[manifest_hash] = fingerprint

    def lineage(self) -> Lineage:
        """The checkpoint tree, from the event log."""
        return Lineage.of(walk(self._rt.store, self._rt.store.get_experiment(self._rt.name)))

    def __str__(self) -> str:
        return self.lineage().render_text()

    def __repr__(self) -> str:
        return f"<CheckpointManager of {self._rt.name!r}: checkpoints {self.ids()}>"
