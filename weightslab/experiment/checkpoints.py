"""Checkpoints: content-addressed manifests of the whole state, and their tree.

``dump()`` writes every state tensor as a blob (an unchanged tensor hashes to
a blob the store already has, so it is not written again), then a manifest
blob naming them, then the ``dump`` event and the ``checkpoints`` row, in one
transaction. ``load(k)`` reads the manifest, verifies every blob, and restores
the state exactly (rebuilding layer widths), keeping the same optimizer.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import torch
from sqlalchemy import Connection, select

from weightslab.errors import ConfigurationError, IntegrityError
from weightslab.events.codec import canonical_json
from weightslab.experiment.capture import capture
from weightslab.experiment.state import group_hashes, state_hash
from weightslab.history.blobs import check_hash
from weightslab.history.lineage import Lineage, build_lineage
from weightslab.history.schema import Checkpoint
from weightslab.history.tensorcodec import decode_tensor, encode_tensor_parts

if TYPE_CHECKING:
    from weightslab.experiment.experiment import Experiment

__all__ = ["CheckpointManager", "parse_manifest", "read_manifest", "snapshot_frames", "write_state"]

MANIFEST_FORMAT = "weightslab.state/1"


def write_state(exp: Experiment, conn: Connection) -> tuple[str, str, dict[str, str], int]:
    """Store the current state's blobs and manifest; returns (manifest hash, state hash, parts, bytes new)."""
    tensors, meta = capture(exp)
    names = sorted(tensors)
    store = exp.store
    encoded = [encode_tensor_parts(tensors[n]) for n in names]
    hashes = dict(zip(names, store.blobs.put_many(conn, encoded)))
    manifest = canonical_json({"format": MANIFEST_FORMAT, "tensors": hashes, "meta": meta}).encode()
    (manifest_hash,) = store.blobs.put_many(conn, [manifest])
    return manifest_hash, state_hash(hashes), group_hashes(hashes), sum(len(h) + len(d) for h, d in encoded)


def manifest_fingerprint(exp: Experiment, manifest_hash: str) -> tuple[str, dict[str, str]]:
    """The state hash (and per-group hashes) of the state a manifest describes, without its tensors."""
    manifest = _manifest(exp, manifest_hash)
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
    manifest = _manifest(exp, manifest_hash)
    names = list(manifest["tensors"])
    datas = exp.store.blobs.get_many([check_hash(manifest["tensors"][n]) for n in names])
    tensors = {name: decode_tensor(data) for name, data in zip(names, datas)}
    return tensors, manifest["meta"]


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
        existing = self.ids()
        cid = (max(existing) + 1) if existing else 0
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
        tensors, meta = read_manifest(exp, manifest_hash)  # verify everything before changing anything
        exp._restore(tensors, meta)
        self.head = checkpoint_id
        # the restored state is exactly the manifest's: its fingerprint needs no second pass over the tensors
        exp._recorder.append("load", {"checkpoint_id": checkpoint_id, "manifest": manifest_hash},
                             flush_all=True, fingerprint=manifest_fingerprint(exp, manifest_hash))

    def lineage(self) -> Lineage:
        return build_lineage(self._exp.name, self._exp.store.events(self._exp._experiment_id))

    def __str__(self) -> str:
        return self.lineage().render_text()

    def __repr__(self) -> str:
        return f"<CheckpointManager of {self._exp.name!r}: checkpoints {self.ids()}>"


def snapshot_frames(exp: Experiment) -> dict[str, Any]:
    """DataFrames for the Parquet snapshots: sample stats, neuron stats, sample history."""
    import pandas as pd

    frames = {}
    parts = []
    for split, ds, _ in exp._splits():
        df = ds.get_dataframe().reset_index()
        df.insert(0, "split", split)
        parts.append(df)
    frames["sample_stats"] = pd.concat(parts, ignore_index=True)
    frames["neuron_stats"] = exp._neuron_frame()
    return frames

