"""What a store must satisfy at any moment, even right after a SIGKILL."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from weightslab.events.codec import canonical_json
from weightslab.experiment.state import tensor_hashes
from weightslab.history.manifest import FORMATS
from weightslab.history.schema import Blob, BlobContent, Checkpoint, Snapshot
from weightslab.history.store import Store
from weightslab.history.tensorcodec import decode_tensor

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class StoreFacts:
    """What one check saw (for the test's figures)."""

    events: int = 0
    checkpoints: int = 0
    snapshots: int = 0
    blobs: int = 0
    temp_files: list[str] = field(default_factory=list)


def check_blob_files(root: Path) -> tuple[int, list[str]]:
    """Every file under ``blobs/`` but ``blobs/tmp`` is named by the SHA-256 of its bytes, in its fan-out folder.

    Returns (number of final files, names of leftover temporary files).
    """
    blobs = root / "blobs"
    finals, temps = 0, []
    if not blobs.exists():
        return 0, []
    for path in blobs.rglob("*"):
        if path.is_dir():
            continue
        rel = path.relative_to(blobs)
        if rel.parts[0] == "tmp":
            assert path.name.endswith(".part"), f"unexpected file in blobs/tmp: {rel}"
            temps.append(path.name)
            continue
        assert len(rel.parts) == 2 and _HEX64.match(rel.parts[1]) and rel.parts[0] == rel.parts[1][:2], (
            f"a file under a name that is not a blob's: {rel}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest == path.name, f"blob file {rel} holds bytes hashing to {digest}: half-written or damaged"
        finals += 1
    return finals, temps


def check_store(target: str, name: str, committed: tuple[int, str] | None, verified: set[str]) -> StoreFacts:
    """Assert the invariants of a store that a process was just killed writing to.

    ``committed`` is the (seq, hash) of the last event the killed process saw
    committed; ``verified`` caches blob hashes whose bytes were checked already
    (a blob's name is its content, so one check is enough for the registry).
    """
    facts = StoreFacts()
    with Store.open(target) as store:
        row = store.find_experiment(name)
        if row is None:
            assert committed is None, f"experiment {name!r} vanished after seq {committed}"
            return facts
        exp_id = row.experiment_id
        report = store.verify_chain(exp_id)
        assert report.ok, f"hash chain broken: {report}"
        events = store.events(exp_id)
        facts.events = len(events)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        if committed is not None:
            seq, digest = committed
            assert len(events) >= seq, f"event {seq} was reported committed but the log ends at {len(events)}"
            assert events[seq - 1].hash == digest, f"event {seq} changed after it was committed"

        def blob(h: str) -> bytes | None:
            if h in verified:
                return None
            data = store.blobs.get(h)  # verifies the bytes against the name
            verified.add(h)
            return data

        def manifest(h: str) -> None:
            raw = store.blobs.get(h)
            doc = json.loads(raw)
            assert doc["format"] in FORMATS  # /1, or /2 with its per-sample state compact (WLC1)
            for th in doc["tensors"].values():
                data = blob(th)
                if data is not None:
                    decode_tensor(data)

        with store.reading() as conn:
            chk = conn.execute(select(Checkpoint.checkpoint_id, Checkpoint.event_seq, Checkpoint.manifest_hash)
                               .where(Checkpoint.experiment_id == exp_id)).all()
            snaps = conn.execute(select(Snapshot.snapshot_id, Snapshot.rows)
                                 .where(Snapshot.experiment_id == exp_id)).all()
            registered = list(conn.scalars(select(Blob.hash)))
        facts.blobs = len(registered)
        with store.reading() as conn:
            rows = set(conn.scalars(select(BlobContent.hash)))
        # a registered blob always has its bytes: a row (database mode, small blobs) or a file
        missing = [h for h in registered if h not in rows
                   and (store.location.root is None or not store.blobs.path_of(h).exists())]
        assert not missing, f"registered blobs without their bytes: {missing[:3]}"
        facts.checkpoints, facts.snapshots = len(chk), len(snaps)
        dumps = {e.payload["checkpoint_id"]: e for e in events if e.kind == "dump"}
        assert sorted(dumps) == sorted(c.checkpoint_id for c in chk), "dump events and checkpoint rows disagree"
        for c in chk:
            ev = dumps[c.checkpoint_id]
            assert (ev.seq, ev.payload["manifest"]) == (c.event_seq, c.manifest_hash)
            manifest(c.manifest_hash)
        for e in events:
            if e.kind == "create":
                manifest(e.payload["initial"])
            elif e.kind in ("load", "resume"):
                manifest(e.payload["manifest"])
            for h in e.payload.get("blobs", {}).values():
                data = blob(h)
                if data is not None:
                    decode_tensor(data)
        for s in snaps:
            frame = store.read_snapshot(s.snapshot_id)
            assert len(frame) == s.rows
        root = store.location.root
    if root is not None:
        _, facts.temp_files = check_blob_files(root)
    return facts


TABLES = {
    "sample_stats": "split, sample_id",
    "neuron_stats": "layer_index, neuron_index, split",
    "checkpoints": "checkpoint_id",
    "snapshots": "snapshot_id",
}


def fingerprint(exp: Any) -> dict[str, Any]:
    """Everything a refused operation must leave as it was: state tensors, settings, log and tables."""
    exp.flush()
    tensors, meta = exp.capture()
    events = exp.store.events(exp.experiment_id)
    out: dict[str, Any] = {
        "tensors": tensor_hashes(tensors),
        "meta": canonical_json(meta),
        "trainable": [p.requires_grad for p in exp.model.parameters()],
        "head": exp.chkpt_manager.head,
        "events": (len(events), events[-1].hash),
    }
    for table, order in TABLES.items():
        frame = exp.sql(f"SELECT * FROM {table} WHERE experiment_id = :experiment_id ORDER BY {order}")
        out[table] = hashlib.sha256(frame.to_csv().encode()).hexdigest()
    out["experiments"] = exp.sql("SELECT experiment_id, name FROM experiments ORDER BY 1").values.tolist()
    out["blobs"] = exp.sql("SELECT COUNT(*) AS n, SUM(size) AS s FROM blobs").values.tolist()
    return out


def changed_parts(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Names of what differs between two fingerprints (tensor names included)."""
    changed = sorted(k for k in before if before[k] != after[k])
    if "tensors" in changed:
        changed += sorted(n for n in set(before["tensors"]) | set(after["tensors"])
                          if before["tensors"].get(n) != after["tensors"].get(n))
    return changed
