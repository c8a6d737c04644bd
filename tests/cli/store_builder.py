"""A realistic recorded history, written with the Store API alone (no Experiment, no training).

The history of experiment ``x0`` (seq: event):

     1 create (initial state)        9 add 2 neurons to layer 1
     2 train                        10 deny train {5}
     3 eval                         11 dump checkpoint 2 (parent 0)
     4 dump checkpoint 0            12 load checkpoint 1
     5 prune layer 0 {0}            13 allow train {2}
     6 deny train {1, 2, 3}         14 deny train {10..14} (ids in a blob)
     7 dump checkpoint 1 (parent 0) 15 dump checkpoint 3 (parent 1)
     8 load checkpoint 0            16 train

so checkpoints 1 and 2 branch from 0, and 3 continues 1. Payloads follow the
Experiment's conventions (state group hashes, manifests of WLT1 tensor blobs,
``args``/``result`` for edits), with sample_history snapshots at each dump and
rows in the statistics tables.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import text

from weightslab.events.codec import canonical_json
from weightslab.history.schema import Checkpoint
from weightslab.history.stats import upsert_neuron_stats, upsert_sample_stats
from weightslab.history.store import Store
from weightslab.history.tensorcodec import encode_array

NAME = "x0"
TRAIN_N, EVAL_N = 20, 10
CODE_VERSION = "weightslab 0.1.0 git abc1234"


def state_hash(hashes: dict[str, str]) -> str:
    return hashlib.sha256(canonical_json(hashes).encode()).hexdigest()


def _state(widths: tuple[int, int], seed: int, denied: set[int]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w0, w1 = widths
    deny = np.zeros(TRAIN_N, dtype=bool)
    deny[sorted(denied)] = True
    return {
        "model/layer0.weight": rng.standard_normal((w0, 1, 3, 3)).astype(np.float32),
        "model/layer0.bias": np.zeros(w0, np.float32),
        "model/layer1.weight": rng.standard_normal((w1, w0, 3, 3)).astype(np.float32),
        "model/layer1.bias": np.zeros(w1, np.float32),
        "optim/0/exp_avg": np.zeros((w0, 1, 3, 3), np.float32),
        "ledger/train/deny_listed": deny,
        "ledger/train/prediction_loss": rng.random(TRAIN_N).astype(np.float32),
        "ledger/eval/deny_listed": np.zeros(EVAL_N, dtype=bool),
        "sampler/train/permutation": rng.permutation(TRAIN_N).astype(np.int64),
        "rng/torch": rng.integers(0, 255, 32).astype(np.uint8),
    }


@dataclass
class Built:
    """What the builder wrote, for tests to compare against."""

    store: Store
    experiment_id: int
    target: str
    manifests: dict[int, str] = field(default_factory=dict)  # checkpoint id -> manifest hash
    tensors: dict[int, dict[str, str]] = field(default_factory=dict)  # checkpoint id -> {tensor name: hash}
    initial_manifest: str = ""
    id_blob: str = ""


class _Writer:
    def __init__(self, store: Store, name: str) -> None:
        self.store = store
        self.exp = store.create_experiment(name, config={"batch_size": 4})
        self.seq = 0

    def append(self, kind: str, payload: dict[str, Any], *, digest: str | None = None,
               conn: Any = None) -> int:
        body = dict(payload)
        body.setdefault("state", {"model": "0" * 64, "ledger": "1" * 64})
        row = self.store.append_event(self.exp.experiment_id, kind, body, expected_last_seq=self.seq,
                                      conn=conn, state_hash=digest, code_version=CODE_VERSION)
        self.seq = row.seq
        return row.seq

    def write_state(self, conn: Any, arrays: dict[str, np.ndarray]) -> tuple[str, dict[str, str], str]:
        names = sorted(arrays)
        hashes = dict(zip(names, self.store.blobs.put_many(conn, [encode_array(arrays[n]) for n in names])))
        meta = {"optimizer": {"class": "Adam"}, "architecture": [int(arrays["model/layer0.weight"].shape[0]),
                                                                  int(arrays["model/layer1.weight"].shape[0])],
                "model_age": 60}
        manifest = canonical_json({"format": "weightslab.state/1", "tensors": hashes, "meta": meta}).encode()
        (mhash,) = self.store.blobs.put_many(conn, [manifest])
        return mhash, hashes, state_hash(hashes)


def build_store(target: str, name: str = NAME) -> Built:
    """Write the history described in the module docstring into the store at ``target``."""
    store = Store.open(target)
    w = _Writer(store, name)
    built = Built(store, w.exp.experiment_id, target)
    states = {
        "init": _state((2, 4), 0, set()),
        0: _state((2, 4), 1, set()),
        1: _state((1, 4), 2, {1, 2, 3}),
        2: _state((2, 6), 3, {5}),
        3: _state((1, 4), 4, {1, 3, 10, 11, 12, 13, 14}),
    }
    # checkpoint 3 continues checkpoint 1: layer 1 unchanged since then
    states[3]["model/layer1.weight"] = states[1]["model/layer1.weight"]

    with store.transaction() as conn:
        m, _, digest = w.write_state(conn, states["init"])
        built.initial_manifest = m
        w.append("create", {"name": name, "initial": m, "config": {"batch_size": 4},
                            "train_fingerprint": "f" * 64}, digest=digest, conn=conn)
    w.append("train", {"steps": 3, "age_before": 0, "age_after": 60})
    w.append("eval", {"full": True, "steps": 3, "loss": 0.5, "accuracy": 0.8})

    def dump(cid: int, parent: int | None) -> None:
        with store.transaction() as conn:
            m, hashes, digest = w.write_state(conn, states[cid])
            arch = [int(states[cid]["model/layer0.weight"].shape[0]), int(states[cid]["model/layer1.weight"].shape[0])]
            seq = w.append("dump", {"checkpoint_id": cid, "parent_id": parent, "manifest": m, "model_age": 60,
                                    "architecture": arch}, digest=digest, conn=conn)
            conn.execute(Checkpoint.__table__.insert().values(
                experiment_id=w.exp.experiment_id, checkpoint_id=cid, parent_id=parent, event_seq=seq,
                manifest_hash=m, model_age=60, created_at=datetime.now(UTC)))
            history = pd.DataFrame({"split": "train", "sample_id": np.arange(4, dtype=np.int64),
                                    "prediction_loss": np.full(4, 0.1 * (cid + 1)), "model_age": 60})
            store.write_snapshot(w.exp.experiment_id, "sample_history", seq, history, conn=conn)
        built.manifests[cid], built.tensors[cid] = m, hashes

    dump(0, None)
    w.append("prune", {"args": {"layer_index": 0, "neuron_indices": [0]}, "result": {"widths": [1, 4]}})
    w.append("deny", {"args": {"ids": [1, 2, 3], "mode": "ids"}, "result": {"changed": 3}, "split": "train"})
    dump(1, 0)
    w.append("load", {"checkpoint_id": 0, "manifest": built.manifests[0]})
    w.append("add_neurons", {"args": {"layer_index": 1, "neuron_count": 2}, "result": {"widths": [2, 6]}})
    w.append("deny", {"args": {"ids": [5], "mode": "ids"}, "result": {"changed": 1}, "split": "train"})
    dump(2, 0)
    w.append("load", {"checkpoint_id": 1, "manifest": built.manifests[1]})
    w.append("allow", {"args": {"ids": [2], "mode": "ids"}, "result": {"changed": 1}, "split": "train"})
    built.id_blob = store.blobs.put(encode_array(np.arange(10, 15, dtype=np.int64)))
    w.append("deny", {"args": {"mode": "predicate"}, "blobs": {"ids": built.id_blob},
                      "result": {"changed": 5}, "split": "train"})
    dump(3, 1)
    w.append("train", {"steps": 2, "age_before": 60, "age_after": 100})

    with store.transaction() as conn:
        ids = np.arange(TRAIN_N)
        loss = np.linspace(0.1, 2.0, TRAIN_N)
        loss[-2:] = np.nan  # never seen
        upsert_sample_stats(conn, w.exp.experiment_id, "train", {
            "sample_id": ids, "prediction_age": np.where(np.isnan(loss), np.nan, 60.0), "prediction_loss": loss,
            "exposure_amount": (~np.isnan(loss)).astype(np.int64), "deny_listed": states[3]["ledger/train/deny_listed"],
            "prediction": np.where(np.isnan(loss), np.nan, 1.0), "label": np.where(np.isnan(loss), np.nan, 2.0)})
        upsert_neuron_stats(conn, w.exp.experiment_id, [(0, 0, "train", "layer0", 7, 60), (1, 0, "train", "layer1", 3, 60)])
    return built


def clone_experiment(store: Store, name: str) -> None:
    """A second, small, healthy experiment in the same store."""
    exp = store.create_experiment(name)
    store.append_event(exp.experiment_id, "train", {"steps": 1, "age_before": 0, "age_after": 4},
                       expected_last_seq=0)


def tamper(store: Store, sql: str, params: dict[str, Any] | None = None) -> None:
    """Change the database behind WeightsLab's back (foreign keys and checks off), like an attacker would."""
    raw = store.engine.raw_connection()
    try:
        cur = raw.cursor()
        sqlite = store.engine.dialect.name == "sqlite"
        cur.execute("PRAGMA foreign_keys = OFF" if sqlite else "SET session_replication_role = replica")
        compiled = text(sql).compile(dialect=store.engine.dialect)
        values = compiled.construct_params(params or {})
        if sqlite:
            cur.execute(str(compiled), [values[k] for k in compiled.positiontup])
        else:
            cur.execute(str(compiled), values)
        raw.commit()
        cur.execute("PRAGMA foreign_keys = ON" if sqlite else "SET session_replication_role = DEFAULT")
        raw.commit()
    finally:
        raw.close()


def payload_of(store: Store, experiment_id: int, seq: int) -> dict[str, Any]:
    return copy.deepcopy(store.events(experiment_id, seq, seq)[0].payload)
