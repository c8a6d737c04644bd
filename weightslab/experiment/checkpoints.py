"""Checkpoints: content-addressed manifests of the whole state, and their tree.

``dump()`` writes every state tensor as a blob (an unchanged tensor hashes to
a blob the store already has, so it is not written again) and a manifest
blob naming them, in one transaction; then the ``dump`` event, the
``checkpoints`` row and the statistics snapshots in a second one. A crash
between the two leaves only blobs that nothing names yet: a checkpoint never
exists without its blobs. ``load(k)`` reads the manifest, verifies every blob, and restores
the state exactly (rebuilding layer widths), keeping the same optimizer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sqlalchemy import Connection, func, select

from weightslab.errors import ConfigurationError, IntegrityError
from weightslab.events.codec import canonical_json
from weightslab.experiment.capture import capture
from weightslab.experiment.state import group_hashes, state_hash
from weightslab.history.blobs import blob_hash, check_hash
from weightslab.history.hashing import sha256_many
from weightslab.history.lineage import Lineage, build_lineage
from weightslab.history.schema import Checkpoint
from weightslab.history.tensorcodec import decode_tensor, encode_tensor_parts
from weightslab.ledger.stats import STAT_COLUMNS

if TYPE_CHECKING:
    from weightslab.experiment.experiment import Experiment

__all__ = ["CheckpointManager", "parse_manifest", "read_manifest", "snapshot_sources", "write_state"]

MANIFEST_FORMAT = "weightslab.state/1"


def write_state(exp: Experiment, conn: Connection) -> tuple[str, str, dict[str, str], int]:
    """Store the current state's blobs and manifest; returns (manifest hash, state hash, parts, bytes new)."""
    tensors, meta = capture(exp)
    names = sorted(tensors)
    store = exp.store
    encoded = [encode_tensor_parts(tensors[n]) for n in names]
    digests = sha256_many(encoded)
    hashes = dict(zip(names, digests))
    manifest = canonical_json({"format": MANIFEST_FORMAT, "tensors": hashes, "meta": meta}).encode()
    # the tensors and their manifest in one write (one lookup of the blobs the store already has)
    *_, manifest_hash = store.blobs.put_many(conn, [*encoded, manifest], hashes=[*digests, blob_hash(manifest)])
    return manifest_hash, state_hash(hashes), group_hashes(hashes), sum(len(h) + len(d) for h, d in encoded)


def _fingerprint(manifest: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """The state hash (and per-group hashes) of the state a manifest describes, without its tensors."""
    return state_hash(manifest["tensors"]), group_hashes(manifest["tensors"])


def _manifest(exp: Experiment, manifest_hash: str) -> dict[str, Any]:
    return parse_manifest(exp.store.blobs.get(check_hash(manifest_hash)), manifest_hash)


_TENSOR_GROUPS = ("model/", "optim/", "ledger/", "sampler/", "rng/")


def parse_manifest(raw: bytes, name: str = "manifest") -> dict[str, Any]:
    """Parse and check a manifest's bytes (pure: JSON only, nothing is imported or unpickled).

    Returns the manifest dict: ``format``, ``tensors`` ({tensor name: blob hash}) and
    ``meta`` (optimizer hyper-parameters, architecture, model age), each of the shape
    :func:`write_state` writes, so that restoring it cannot fail on a missing key or a
    wrong type.

    Raises:
        IntegrityError: not UTF-8 JSON, another format, or any part of the wrong shape
            (a tensor name outside the known groups, a hash that is not one).
    """
    def bad(what: str) -> IntegrityError:
        return IntegrityError(f"blob {name} is not a WeightsLab state manifest ({MANIFEST_FORMAT}): {what}; "
                              "the store is damaged or was tampered with")

    try:
        manifest = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise IntegrityError(f"manifest {name} is not JSON: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise bad("no 'format' of that name")
    tensors, meta = manifest.get("tensors"), manifest.get("meta")
    if not isinstance(tensors, dict) or not isinstance(meta, dict):
        raise bad("'tensors' and 'meta' must be objects")
    for tensor, digest in tensors.items():
        if not tensor.startswith(_TENSOR_GROUPS):
            raise bad(f"tensor name {tensor[:80]!r} is outside {', '.join(_TENSOR_GROUPS)}")
        check_hash(digest)
    opt = meta.get("optimizer")
    if not (isinstance(opt, dict) and isinstance(opt.get("class"), str)
            and isinstance(opt.get("param_groups"), list) and all(isinstance(g, dict) for g in opt["param_groups"])
            and isinstance(opt.get("tuple_keys"), list) and all(isinstance(k, str) for k in opt["tuple_keys"])
            and isinstance(opt.get("scalars"), dict)):
        raise bad("meta.optimizer must hold class, param_groups, tuple_keys and scalars")
    arch, age = meta.get("architecture"), meta.get("model_age")
    if not (isinstance(arch, list) and all(type(w) is int for w in arch)) or type(age) is not int:
        raise bad("meta.architecture must be a list of widths and meta.model_age an integer")
    return manifest


def read_manifest(exp: Experiment, manifest_hash: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load and verify a manifest and every tensor it names (no pickle anywhere)."""
    manifest, tensors = _read_state(exp, manifest_hash)
    return tensors, manifest["meta"]


def _read_state(exp: Experiment, manifest_hash: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The parsed manifest and its verified, decoded tensors."""
    manifest = _manifest(exp, manifest_hash)
    names = list(manifest["tensors"])
    datas = exp.store.blobs.get_many([check_hash(manifest["tensors"][n]) for n in names])
    return manifest, {name: decode_tensor(data) for name, data in zip(names, datas)}


class CheckpointManager:
    """The checkpoints of one experiment; ``print()`` it to see the lineage tree."""

    def __init__(self, exp: Experiment) -> None:
        self._exp = exp
        self.head: int | None = None  # the checkpoint the live state descends from
        self.last_dump_bytes = 0  # new blob bytes the last dump wrote (unchanged tensors excluded)

    def ids(self) -> list[int]:
        """Checkpoint ids of this experiment, ascending."""
        with self._exp.store.reading() as conn:
            return list(conn.scalars(select(Checkpoint.checkpoint_id)
                                     .where(Checkpoint.experiment_id == self._exp._experiment_id)
                                     .order_by(Checkpoint.checkpoint_id)))

    def manifest_of(self, checkpoint_id: int) -> str:
        with self._exp.store.reading() as conn:
            h = conn.scalar(select(Checkpoint.manifest_hash).where(
                Checkpoint.experiment_id == self._exp._experiment_id,
                Checkpoint.checkpoint_id == checkpoint_id))
        if h is None:
            existing = self.ids()
            raise ConfigurationError(
                f"checkpoint {checkpoint_id!r} does not exist in experiment {self._exp.name!r}; "
                f"existing checkpoints: {existing or 'none (call exp.dump() first)'}"
            )
        return h

    def dump(self) -> int:
        """Save a checkpoint of the whole state; returns its id (0, 1, 2, ...)."""
        exp = self._exp
        with exp.store.reading() as conn:
            last = conn.scalar(select(func.max(Checkpoint.checkpoint_id))
                               .where(Checkpoint.experiment_id == exp._experiment_id))
        cid = 0 if last is None else last + 1
        parent = self.head
        exp._recorder.wait()
        exp._flush_pending_history()
        before = exp.store.blobs.bytes_written
        with exp.store.transaction() as conn:
            manifest_hash, digest, parts, _ = write_state(exp, conn)
        self.last_dump_bytes = exp.store.blobs.bytes_written - before

        def register(conn: Connection, seq: int) -> None:
            from datetime import UTC, datetime

            conn.execute(Checkpoint.__table__.insert().values(
                experiment_id=exp._experiment_id, checkpoint_id=cid, parent_id=parent, event_seq=seq,
                manifest_hash=manifest_hash, model_age=exp.model_age, created_at=datetime.now(UTC)))
            exp._write_snapshots(conn, seq)

        exp._recorder.append(
            "dump",
            {"checkpoint_id": cid, "parent_id": parent, "manifest": manifest_hash, "model_age": exp.model_age,
             "architecture": exp._widths()},
            in_transaction=register, fingerprint=(digest, parts),
        )
        self.head = cid
        return cid

    def load(self, checkpoint_id: int) -> None:
        """Restore checkpoint ``checkpoint_id`` exactly; the next dump branches from it."""
        exp = self._exp
        if isinstance(checkpoint_id, bool) or not isinstance(checkpoint_id, int):
            raise ConfigurationError(f"checkpoint_id must be an integer, got {checkpoint_id!r}")
        manifest_hash = self.manifest_of(checkpoint_id)
        manifest, tensors = _read_state(exp, manifest_hash)  # verify everything before changing anything
        exp._restore(tensors, manifest["meta"])
        self.head = checkpoint_id
        # The restored state is exactly the manifest's: its fingerprint needs no second pass over the
        # tensors. The ledger marked the samples whose statistics the restore changed: only their rows
        # are written again.
        exp._recorder.append("load", {"checkpoint_id": checkpoint_id, "manifest": manifest_hash},
                             fingerprint=_fingerprint(manifest))

    def lineage(self) -> Lineage:
        return build_lineage(self._exp.name, self._exp.store.events(self._exp._experiment_id))

    def __str__(self) -> str:
        return self.lineage().render_text()

    def __repr__(self) -> str:
        return f"<CheckpointManager of {self._exp.name!r}: checkpoints {self.ids()}>"


def snapshot_sources(exp: Experiment) -> dict[str, tuple[str, Callable[[], Any]]]:
    """Per snapshot table (``sample_stats``, ``neuron_stats``): a digest of the arrays its rows are
    built from (SHA-256; equal digests mean equal rows) and the function that builds its DataFrame."""
    import pandas as pd

    splits = exp._splits()
    rows = hashlib.sha256(b"weightslab.snapshot/sample_stats/1")
    for split, ds, _ in splits:
        rows.update(f"\0{split}\0{len(ds)}".encode())
        for name in STAT_COLUMNS:
            rows.update(np.ascontiguousarray(getattr(ds.stats, name)))

    def samples() -> Any:
        parts = []
        for split, ds, _ in splits:
            df = ds.get_dataframe().reset_index()
            df.insert(0, "split", split)
            parts.append(df)
        return pd.concat(parts, ignore_index=True)

    counters = exp._neuron_counters()
    neurons = hashlib.sha256(b"weightslab.snapshot/neuron_stats/1")
    for li, lname, split, trig, seen in counters:
        neurons.update(f"\0{li}\0{lname}\0{split}\0{len(trig)}\0".encode())
        neurons.update(np.ascontiguousarray(trig, dtype=np.int64))
        neurons.update(np.ascontiguousarray(seen, dtype=np.int64))
    return {"sample_stats": (rows.hexdigest(), samples),
            "neuron_stats": (neurons.hexdigest(), lambda: exp._neuron_frame(counters))}
