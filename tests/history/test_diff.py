"""Diff of two checkpoints: the events between them, tensors, architecture and deny lists."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli.store_builder import NAME
from sqlalchemy import text

from weightslab.errors import ConfigurationError, IntegrityError
from weightslab.events.domain import (
    CheckpointDumped,
    ExperimentCreated,
    ExperimentResumed,
    NeuronsPruned,
    StepsTrained,
)
from weightslab.history.checkpoints import CheckpointRow
from weightslab.history.diff import decode_numpy, diff_checkpoints
from weightslab.history.tensorcodec import decode_array, encode_tensor


def _changed(built, a: int, b: int) -> list[str]:
    ta, tb = built.tensors[a], built.tensors[b]
    return sorted(k for k in set(ta) & set(tb) if ta[k] != tb[k])


def test_sibling_branches_meet_at_their_parent(built):
    d = diff_checkpoints(built.store, NAME, 1, 2)
    assert d.ancestor == 0
    assert [e.seq for e in d.events_to_a] == [5, 6, 7]
    assert [e.seq for e in d.events_to_b] == [8, 9, 10, 11]
    assert [e.kind for e in d.events_to_b] == ["load", "add_neurons", "deny", "dump"]
    assert (d.architecture_a, d.architecture_b) == ([1, 4], [2, 6])
    assert d.tensors_changed == _changed(built, 1, 2) and "model/layer1.weight" in d.tensors_changed
    assert d.tensors_added == d.tensors_removed == []
    ledger = {c.split: c for c in d.ledger}
    assert ledger["train"].newly_denied == [5] and ledger["train"].newly_allowed == [1, 2, 3]
    assert (ledger["train"].denied_a, ledger["train"].denied_b) == (3, 1)
    assert ledger["eval"].newly_denied == ledger["eval"].newly_allowed == []


def test_a_descendant_is_reached_through_every_checkpoint_on_the_way(built):
    d = diff_checkpoints(built.store, NAME, 0, 3)
    assert d.ancestor == 0 and d.events_to_a == []
    assert [e.seq for e in d.events_to_b] == [5, 6, 7, 12, 13, 14, 15]
    assert "model/layer1.weight" in d.tensors_changed and "model/layer1.bias" not in d.tensors_changed
    assert {c.split: c.newly_denied for c in d.ledger}["train"] == [1, 3, 10, 11, 12, 13, 14]
    text_ = d.render_text()
    assert "Events from checkpoint 0 to checkpoint 3: 7" in text_ and "layer 0: 2 → 1 neurons (-1)" in text_


def test_the_reverse_diff_swaps_denied_and_allowed(built):
    forward = {c.split: c for c in diff_checkpoints(built.store, NAME, 1, 3).ledger}["train"]
    back = {c.split: c for c in diff_checkpoints(built.store, NAME, 3, 1).ledger}["train"]
    assert forward.newly_denied == back.newly_allowed == [10, 11, 12, 13, 14]
    assert forward.newly_allowed == back.newly_denied == [2]


def test_a_checkpoint_against_itself_has_no_differences(built):
    d = diff_checkpoints(built.store, NAME, 2, 2)
    assert d.ancestor == 2 and d.events_to_a == d.events_to_b == []
    assert d.tensors_changed == [] and d.tensors_unchanged == len(built.tensors[2])
    assert "Architecture: unchanged [2, 6]" in d.render_text()


def test_unknown_checkpoints_are_refused_listing_the_existing_ones(built):
    with pytest.raises(ConfigurationError, match=r"checkpoint 7 does not exist .* checkpoints: 0, 1, 2, 3"):
        diff_checkpoints(built.store, NAME, 0, 7)
    with pytest.raises(ConfigurationError, match="checkpoint '1' does not exist"):
        diff_checkpoints(built.store, NAME, "1", 2)


def test_the_json_form_is_serialisable_and_complete(built):
    d = json.loads(json.dumps(diff_checkpoints(built.store, NAME, 1, 2).to_dict()))
    assert d["ancestor"] == 0 and d["architecture"] == {"a": [1, 4], "b": [2, 6]}
    assert d["events_to_a"][0] == {"seq": 5, "kind": "prune", "summary": "prune layer 0 {0}"}


def test_a_resume_counts_the_events_it_replayed(built):
    """After a crash, a resume restores checkpoint 0 and replays seq 3: both lead to checkpoint 1."""
    store = built.store
    exp = store.create_experiment("crashed").experiment_id

    def add(event, seq, conn=None):
        store.append_event(exp, event.KIND, event.to_payload(), expected_last_seq=seq - 1, conn=conn)

    def dump(cid, parent, manifest, seq):
        with store.transaction() as conn:
            add(CheckpointDumped(checkpoint_id=cid, parent_id=parent, manifest=manifest), seq, conn)
            store.add_checkpoint(conn, exp, CheckpointRow(cid, parent, seq, manifest, 0))

    add(ExperimentCreated(name="crashed", initial=built.initial_manifest), 1)
    dump(0, None, built.manifests[0], 2)
    add(StepsTrained(steps=1, age_before=0, age_after=4), 3)
    add(ExperimentResumed(checkpoint_id=0, manifest=built.manifests[0], base_seq=2, replayed=(3,)), 4)
    add(NeuronsPruned(layer_index=0, neuron_indices=(0,)), 5)
    dump(1, 0, built.manifests[1], 6)
    d = diff_checkpoints(store, "crashed", 0, 1)
    assert [e.seq for e in d.events_to_b] == [3, 4, 5, 6]


@pytest.mark.parametrize("tensor", [
    torch.arange(6, dtype=torch.float32).reshape(2, 3), torch.tensor([True, False, True]),
    torch.arange(5, dtype=torch.int64), torch.zeros((0, 3), dtype=torch.float16), torch.tensor(7, dtype=torch.uint8),
])
def test_numpy_decoding_matches_the_torch_decoder(tensor):
    blob = encode_tensor(tensor)
    ours = decode_numpy(blob)
    assert ours.dtype == decode_array(blob).dtype and np.array_equal(ours, decode_array(blob))


def test_truncated_tensor_bytes_are_refused():
    blob = encode_tensor(torch.arange(10, dtype=torch.int64))
    with pytest.raises(IntegrityError, match="truncated"):
        decode_numpy(blob[:-3])
    with pytest.raises(IntegrityError, match="bad magic"):
        decode_numpy(b"XXXX" + blob[4:])


def test_a_damaged_manifest_is_refused_by_name(built):
    if not built.store.blobs.in_file(built.manifests[1]):
        with built.store.transaction() as conn:
            conn.execute(text("UPDATE blob_contents SET data = :d WHERE hash = :h"),
                         {"d": b"{}", "h": built.manifests[1]})
    else:
        built.store.blobs.path_of(built.manifests[1]).write_bytes(b"{}")
    with pytest.raises(IntegrityError, match=built.manifests[1]):
        diff_checkpoints(built.store, NAME, 1, 2)
