"""Audit: a sound history verifies; each kind of tampering or damage is caught and named.

Histories are written with the Store API by ``tests/cli/store_builder.py``
(events with the Experiment's payload conventions, manifests, tensor blobs,
snapshots); tampering goes around WeightsLab, straight to the database or files.
"""

from __future__ import annotations

import json

import pytest
from cli.store_builder import NAME, Built, build_store, clone_experiment, payload_of, tamper

from weightslab.errors import UnknownExperimentError
from weightslab.history.audit import audit_experiment, audit_store, events_frame, experiments_frame


def _remove_blob(built: Built, digest: str) -> None:
    if built.store.blobs.in_file(digest):
        built.store.blobs.path_of(digest).unlink()
    else:
        tamper(built.store, "DELETE FROM blob_contents WHERE hash = :h", {"h": digest})


def _corrupt_blob(built: Built, digest: str) -> None:
    if built.store.blobs.in_file(digest):
        path = built.store.blobs.path_of(digest)
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        tamper(built.store, "UPDATE blob_contents SET data = :d WHERE hash = :h", {"d": b"WLT1 damaged", "h": digest})


def test_a_sound_history_passes_with_every_blob_checked(built):
    report = audit_experiment(built.store, NAME)
    assert report.ok and report.chain_ok, report.problems
    assert (report.events, report.checkpoints) == (16, 4)
    named = {built.initial_manifest, built.id_blob, *built.manifests.values(),
             *(h for t in built.tensors.values() for h in t.values())}
    assert report.blobs_checked >= len(named) + 4  # + the four sample_history snapshots
    assert report.first_bad_seq is None and report.bad_blob is None
    assert report.render_text().startswith("OK")
    assert json.loads(json.dumps(report.to_dict()))["ok"] is True


def test_an_edited_payload_is_named_by_its_seq(built):
    payload = payload_of(built.store, built.experiment_id, 6)
    payload["args"]["ids"] = [1, 2]
    tamper(built.store, "UPDATE events SET payload = :p WHERE experiment_id = :e AND seq = 6",
           {"p": json.dumps(payload), "e": built.experiment_id})
    report = audit_experiment(built.store, NAME)
    assert not report.ok and report.first_bad_seq == 6
    assert "seq 6" in report.render_text() and "edited" in report.problems[0]


def test_a_deleted_event_is_named_by_its_seq(built):
    tamper(built.store, "DELETE FROM events WHERE experiment_id = :e AND seq = 5", {"e": built.experiment_id})
    report = audit_experiment(built.store, NAME)
    assert not report.ok and report.first_bad_seq == 5 and "missing" in report.problems[0]


def test_reordered_events_are_named_by_the_first_seq_out_of_place(built):
    e = built.experiment_id
    five, six = (payload_of(built.store, e, s) for s in (5, 6))
    tamper(built.store, "UPDATE events SET kind = 'deny', payload = :p WHERE experiment_id = :e AND seq = 5",
           {"p": json.dumps(six), "e": e})
    tamper(built.store, "UPDATE events SET kind = 'prune', payload = :p WHERE experiment_id = :e AND seq = 6",
           {"p": json.dumps(five), "e": e})
    report = audit_experiment(built.store, NAME)
    assert not report.ok and report.first_bad_seq == 5


def test_a_payload_that_is_no_longer_json_is_named_not_a_crash(tmp_path):
    built = build_store(str(tmp_path / "store"))  # SQLite only: a JSONB column cannot hold text that is not JSON
    tamper(built.store, "UPDATE events SET payload = 'not json' WHERE experiment_id = :e AND seq = 3",
           {"e": built.experiment_id})
    report = audit_experiment(built.store, NAME)
    built.store.close()
    assert not report.ok and report.first_bad_seq == 3 and "cannot be decoded" in report.problems[0]


def test_a_corrupted_tensor_blob_is_named_with_its_checkpoint_and_tensor(built):
    digest = built.tensors[2]["model/layer1.weight"]
    _corrupt_blob(built, digest)
    report = audit_experiment(built.store, NAME)
    assert not report.ok and report.chain_ok and report.first_bad_seq is None
    assert report.bad_blob == digest
    assert report.bad_blob_role == "checkpoint 2 (seq 11): tensor model/layer1.weight"
    assert "damaged" in report.problems[0]


def test_a_missing_manifest_is_named_at_its_first_use(built):
    digest = built.manifests[1]
    _remove_blob(built, digest)
    report = audit_experiment(built.store, NAME)
    assert not report.ok and report.bad_blob == digest
    assert report.bad_blob_role == "checkpoint 1 (seq 7): manifest" and "missing" in report.problems[0]


def test_a_missing_blob_named_by_an_event_payload_is_caught(built):
    _remove_blob(built, built.id_blob)
    report = audit_experiment(built.store, NAME)
    assert not report.ok and report.bad_blob == built.id_blob and report.bad_blob_role == "seq 14 (deny): blob ids"


def test_a_missing_snapshot_is_caught(built):
    digest = built.store.query("SELECT blob_hash FROM snapshots WHERE event_seq = 15")["blob_hash"].iloc[0]
    _remove_blob(built, digest)
    report = audit_experiment(built.store, NAME)
    assert not report.ok and report.bad_blob_role.startswith("snapshot") and "seq 15" in report.bad_blob_role


def test_a_checkpoint_row_pointing_at_another_manifest_is_caught(built):
    tamper(built.store, "UPDATE checkpoints SET manifest_hash = :m WHERE experiment_id = :e AND checkpoint_id = 1",
           {"m": built.manifests[0], "e": built.experiment_id})
    report = audit_experiment(built.store, NAME)
    assert not report.ok and report.chain_ok
    assert "checkpoint 1 (seq 7)" in report.problems[0] and "disagrees with the dump event" in report.problems[0]


def test_audit_store_checks_every_experiment_and_names_the_bad_one(built):
    clone_experiment(built.store, "healthy")
    tamper(built.store, "UPDATE events SET kind = 'freeze' WHERE experiment_id = :e AND seq = 2",
           {"e": built.experiment_id})
    report = audit_store(built.store)
    assert not report.ok
    assert {r.experiment: r.ok for r in report.reports} == {NAME: False, "healthy": True}
    assert "1 of 2 experiment(s) fail the audit: 'x0'" in report.render_text()


def test_audit_of_an_unknown_experiment_lists_the_known_ones(built):
    with pytest.raises(UnknownExperimentError, match="'x0'"):
        audit_experiment(built.store, "nope")


def test_listings_give_counts_and_the_event_log(built):
    clone_experiment(built.store, "other")
    exps = experiments_frame(built.store)
    assert exps[["name", "events", "checkpoints"]].values.tolist() == [[NAME, 16, 4], ["other", 1, 0]]
    log = events_frame(built.store, NAME, 4, 6)
    assert log["seq"].tolist() == [4, 5, 6]
    assert log["summary"].tolist() == ["dump checkpoint 0", "prune layer 0 {0}", "deny 3 train samples (ids)"]
    assert set(log["code_version"]) == {"weightslab 0.1.0 git abc1234"} and log["actor"].str.contains("@").all()
