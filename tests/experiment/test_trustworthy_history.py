"""The history is the experiment: the same script gives the same history, the environment is recorded and
pinned, the log's head is anchored, every sample has a row, and a reader needs no write access."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability.reliability_checks import changed_parts, fingerprint
from torch import optim

from weightslab import Experiment
from weightslab.demo import MNISTModel
from weightslab.errors import IntegrityError, ReplayError, StoreError
from weightslab.events.domain import ExperimentCreated, ExperimentResumed
from weightslab.experiment import environment
from weightslab.experiment.replica import replay_to, replica
from weightslab.experiment.state import tensor_hashes
from weightslab.history.audit import audit_experiment
from weightslab.history.log import walk
from weightslab.history.store import Store
from weightslab.history.tensorcodec import decode_tensor


def _tamper(store: Store, sql: str, **params) -> None:
    """Change the database behind WeightsLab's back (foreign keys off), as an attacker would."""
    from cli.store_builder import tamper

    tamper(store, sql, params)


# -- the same script gives the same history ------------------------------------------------------------------

def _events(store_dir: Path, name: str) -> list[tuple]:
    with Store.open(str(store_dir), read_only=True) as store:
        row = store.get_experiment(name)
        return [(e.seq, e.kind, json.dumps(e.payload, sort_keys=True), e.state_hash, e.code_version)
                for e in store.events(row.experiment_id)]


def test_the_demo_run_twice_in_fresh_processes_records_the_same_history(tmp_path):
    for run in ("a", "b"):
        done = subprocess.run([sys.executable, "-m", "weightslab.demo", "--store", str(tmp_path / run),
                               "--name", "twice"], capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr
    a, b = _events(tmp_path / "a", "twice"), _events(tmp_path / "b", "twice")
    assert len(a) > 40 and a == b  # payloads (seeds of add/reinit included) and state hashes; only times differ
    kinds = [k for _, k, _, _, _ in a]
    assert {"add_neurons", "reinit_neurons"} <= set(kinds)
    with Store.open(str(tmp_path / "a"), read_only=True) as store:  # the demo unfreezes every layer it froze
        log = walk(store, "twice")
        unfreeze = next(e for e in log if e.kind == "unfreeze")
        assert unfreeze.event.from_index == 0
        dump1 = log.dumps()[1].event
        flag = store.read_manifest(dump1.manifest).tensors["model/layer0.frozen"]
        assert not bool(decode_tensor(store.blobs.get(flag)))


def test_the_seed_of_a_random_edit_comes_from_the_experiment_seed_and_the_seq(make_exp):
    seeds = []
    for name, seed in (("s1", 5), ("s2", 5), ("s3", 6)):
        exp = make_exp(name, seed=seed)
        exp.model.add_neurons(layer_index=0, neuron_count=1)
        exp.model.reinit_neurons(layer_index=0, neuron_indices={0})
        exp.train_loader.dataset.deny_samples_and_sample_allowed_with_predicate(
            lambda id, age, loss, times, denied, pred, label: id % 2 == 0, allow_to_denied_factor=0.5)
        seeds.append([e["args"]["seed"] for e in exp.events()["payload"][1:4]])
    assert seeds[0] == seeds[1] and len(set(seeds[0])) == 3  # same seed and seqs: same draws
    assert not set(seeds[0]) & set(seeds[2])


# -- the environment --------------------------------------------------------------------------------------

def test_creation_and_every_resume_record_the_environment(make_exp, digits):
    exp = make_exp("env")
    exp.train_n_steps(2)
    exp.close()
    train_ds, eval_ds = digits
    again = Experiment(MNISTModel(), optim.Adam, train_ds, eval_ds, learning_rate=1e-2, batch_size=64, name="env",
                       store=exp.store, tensorboard_dir=str(exp.tensorboard_dir))
    log = walk(exp.store, "env")
    created, resumed = log.entries[0].event, log.entries[-1].event
    assert isinstance(created, ExperimentCreated) and isinstance(resumed, ExperimentResumed)
    for recorded in (created.environment, resumed.environment):
        assert recorded["torch"] == torch.__version__ and recorded["threads"] == torch.get_num_threads()
        assert recorded["device_type"] == "cpu" and recorded["world_size"] == 1
        assert {"deterministic", "matmul_precision", "cudnn_deterministic", "numpy", "python"} <= set(recorded)
    assert resumed.restored_seq == 2 and resumed.forced == ()
    again.close()


_RECORD = textwrap.dedent("""
    import sys, torch
    from torch import optim
    from weightslab import Experiment
    from weightslab.demo import MNISTModel, digits_datasets

    torch.set_num_threads(int(sys.argv[2]))
    train_ds, eval_ds = digits_datasets()
    exp = Experiment(MNISTModel(), optim.Adam, train_ds, eval_ds, learning_rate=1e-2, batch_size=64,
                     name="threads", store=sys.argv[1], recipe="weightslab.demo:recipe", progress=False)
    exp.train_n_steps(8)
    exp.eval_full()
    report = exp.resume_report
    print("RESUMED", report if report is None else (report.replayed, report.not_restored))
    print("THREADS", torch.get_num_threads())
    exp.close()
""")


def test_a_run_recorded_on_one_thread_reopens_and_replays_on_two(tmp_path):
    store = str(tmp_path / "store")

    def run(threads: int) -> str:
        done = subprocess.run([sys.executable, "-c", _RECORD, store, str(threads)], capture_output=True, text=True,
                              timeout=300, check=False)
        assert done.returncode == 0, done.stderr
        assert "could not be re-applied" not in done.stderr, done.stderr
        return done.stdout

    run(1)
    out = run(2)  # reopens: the 1-thread events are re-executed on 1 thread, then it trains on 2
    assert "RESUMED ([2, 3], [])" in out and "THREADS 2" in out
    with Store.open(store, read_only=True) as s:
        log = walk(s, "threads")
        assert [e.environment["threads"] for e in log] == [1, 1, 1, 1, 2, 2]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        outcome = replay_to(replica(store, "threads"), from_start=True)
        assert torch.get_num_threads() == 2  # the caller's setting is back
    finally:
        torch.set_num_threads(before)
    assert outcome.ok and outcome.replayed == [2, 3, 4, 5, 6], outcome


def test_events_recorded_with_another_torch_are_refused_unless_forced(make_exp, digits, monkeypatch):
    real = environment.current
    monkeypatch.setattr(environment, "current", lambda device: {**real(device), "torch": "1.0.0"})  # elsewhere
    exp = make_exp("elsewhere")
    exp.train_n_steps(3)
    exp.close()
    monkeypatch.setattr(environment, "current", real)
    train_ds, eval_ds = digits
    kwargs = dict(learning_rate=1e-2, batch_size=64, name="elsewhere", store=exp.store,
                  tensorboard_dir=str(exp.tensorboard_dir))
    seqs = exp.store.last_seq(exp.experiment_id)
    with pytest.raises(ReplayError, match=r"torch 1\.0\.0 \(here .*\) for seqs 2\.\.2.*force=True"):
        Experiment(MNISTModel(), optim.Adam, train_ds, eval_ds, **kwargs)
    assert exp.store.last_seq(exp.experiment_id) == seqs  # refused before anything was written
    forced = Experiment(MNISTModel(), optim.Adam, train_ds, eval_ds, force=True, **kwargs)
    resumed = walk(exp.store, "elsewhere").entries[-1].event
    assert isinstance(resumed, ExperimentResumed)
    assert resumed.forced == (f"torch 1.0.0 (here {torch.__version__})",) and resumed.not_restored == ()
    forced.close()


def test_a_reexecution_that_diverges_goes_back_to_the_last_verified_state_and_the_log_stays_replayable(
        make_exp, digits):
    exp = make_exp("diverges")
    exp.train_n_steps(2)
    exp.model.prune(layer_index=1, neuron_indices={0})
    exp.train_n_steps(2)
    exp.close()
    train_ds, eval_ds = digits

    model = MNISTModel()

    def drifting(output, labels):  # the recorded loss up to model age 128 (seq 2), then another one
        loss = torch.nn.functional.nll_loss(output, labels, reduction="none")
        return loss * 2 if model.age > 128 else loss

    with pytest.warns(UserWarning, match=r"events \[4\] could not be re-applied"):
        again = Experiment(model, optim.Adam, train_ds, eval_ds, learning_rate=1e-2, batch_size=64,
                           name="diverges", store=exp.store, criterion=drifting,
                           tensorboard_dir=str(exp.tensorboard_dir))
    resumed = walk(exp.store, "diverges").entries[-1].event
    assert isinstance(resumed, ExperimentResumed)
    assert resumed.replayed == (2, 3) and resumed.not_restored == (4,) and resumed.restored_seq == 3
    assert [layer.neuron_count for layer in again.model.layers][1] == 3  # the prune (seq 3) is there
    again.close()
    outcome = replay_to(replica(exp.store, "diverges", model=MNISTModel(), train_dataset=train_ds,
                                eval_dataset=eval_ds), from_start=True)
    assert outcome.ok, outcome  # the resume's state is its manifest plus the events it says it replayed


# -- the head ----------------------------------------------------------------------------------------------

def test_deleting_the_newest_event_is_caught_by_audit_and_reopen(make_exp, digits):
    exp = make_exp("cut")
    exp.train_n_steps(2)
    exp.eval_full()
    exp.close()
    last = exp.store.last_seq(exp.experiment_id)
    _tamper(exp.store, "DELETE FROM events WHERE experiment_id = :e AND seq = :s", e=exp.experiment_id, s=last)
    report = audit_experiment(exp.store, "cut")
    assert not report.ok and report.first_bad_seq == last
    assert "events were deleted from its end" in report.render_text()
    train_ds, eval_ds = digits
    with pytest.raises(IntegrityError, match=f"fails verification at seq {last}"):
        Experiment(MNISTModel(), optim.Adam, train_ds, eval_ds, name="cut", store=exp.store)


def test_an_expected_head_proves_nothing_up_to_it_was_cut_even_when_the_head_row_was_rewritten(make_exp):
    exp = make_exp("anchored")
    exp.train_n_steps(2)
    report = audit_experiment(exp.store, "anchored")
    assert report.ok and report.head_seq == exp.last_seq and report.head_hash in report.render_text()
    kept = report.head_hash
    exp.train_n_steps(1)
    exp.eval_full()
    exp.close()
    assert audit_experiment(exp.store, "anchored", expect_head=kept).ok  # the log grew past it: fine
    seq, eid = report.head_seq, exp.experiment_id
    # cut the log back before the kept head, and rewrite the head row to match what is left
    _tamper(exp.store, "DELETE FROM events WHERE experiment_id = :e AND seq >= :s", e=eid, s=seq)
    prev = exp.store.events(eid)[-1]
    _tamper(exp.store, "UPDATE experiments SET head_seq = :s, head_hash = :h WHERE experiment_id = :e",
            s=prev.seq, h=prev.hash, e=eid)
    assert audit_experiment(exp.store, "anchored").ok  # undetectable without an anchor kept elsewhere
    cut = audit_experiment(exp.store, "anchored", expect_head=kept)
    assert not cut.ok and "no event with the expected head hash" in cut.render_text()


def test_a_session_opened_before_its_log_was_cut_refuses_to_load_and_changes_nothing(make_exp):
    exp = make_exp("session")
    exp.train_n_steps(2)
    exp.dump()
    exp.train_n_steps(2)
    exp.dump()
    exp.train_n_steps(1)
    before = fingerprint(exp)
    dump_seq = int(exp.events().query("kind == 'dump'")["seq"].iloc[-1])
    _tamper(exp.store, "DELETE FROM events WHERE experiment_id = :e AND seq >= :s",
            e=exp.experiment_id, s=dump_seq)
    with pytest.raises(IntegrityError, match="no longer ends at this session's last event"):
        exp.load(checkpoint_id=0)
    # the store changed under the session (that is the point); its live state did not
    assert tensor_hashes(exp.capture()[0]) == before["tensors"] and exp.chkpt_manager.head == before["head"]


# -- every sample has a row ----------------------------------------------------------------------------------

def test_every_sample_has_a_row_from_creation_and_sql_counts_agree_with_the_dataset(make_exp, digits):
    exp = make_exp("rows")
    train_ds, eval_ds = digits
    counts = exp.sql("SELECT split, COUNT(*) AS n, SUM(exposure_amount) AS seen FROM sample_stats "
                     "WHERE experiment_id = :experiment_id GROUP BY split ORDER BY split")
    assert counts.values.tolist() == [["eval", len(eval_ds), 0], ["train", len(train_ds), 0]]
    balance = exp.sql("SELECT label, COUNT(*) AS n FROM sample_stats WHERE experiment_id = :experiment_id "
                      "AND split = 'train' GROUP BY label ORDER BY label")
    assert balance["n"].tolist() == np.bincount(train_ds.tensors[1].numpy()).tolist()  # the class balance
    assert exp.sql("SELECT COUNT(*) AS n FROM sample_stats WHERE experiment_id = :experiment_id AND "
                   "(prediction_loss IS NOT NULL OR prediction_age IS NOT NULL)")["n"].iloc[0] == 0
    frame = exp.train_loader.dataset.get_dataframe()
    assert frame["label"].notna().all() and frame["prediction_loss"].isna().all()
    exp.train_loader.dataset.denylist_samples(range(0, len(train_ds), 7))
    exp.train_n_steps(5)
    rows = exp.sql("SELECT COUNT(*) AS n, SUM(CASE WHEN deny_listed THEN 1 ELSE 0 END) AS denied FROM sample_stats "
                   "WHERE experiment_id = :experiment_id AND split = 'train'")
    assert rows.values.tolist() == [[len(train_ds), len(range(0, len(train_ds), 7))]]


# -- reading needs no write access -----------------------------------------------------------------------------

@pytest.mark.postgres
def test_a_read_only_postgresql_role_replays_and_queries_but_cannot_write(pg_url, digits):
    import psycopg
    from sqlalchemy.engine import make_url

    train_ds, eval_ds = digits
    torch.manual_seed(0)
    exp = Experiment(MNISTModel(), optim.Adam, train_ds, eval_ds, learning_rate=1e-2, batch_size=64, name="ro",
                     store=pg_url, recipe="weightslab.demo:recipe", tensorboard_dir=None)
    exp.train_n_steps(3)
    exp.close()
    exp.store.close()
    url = make_url(pg_url)
    schema = url.query["options"].split("search_path=")[1]
    role = f"wl_reader_{uuid.uuid4().hex[:8]}"
    admin = dict(host=url.host, port=url.port or 5432, user=url.username, dbname=url.database)
    with psycopg.connect(**admin, autocommit=True) as c:
        c.execute(f'CREATE ROLE "{role}" LOGIN')
        c.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
        c.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"')
    reader_url = url.set(username=role).render_as_string(hide_password=False)
    try:
        rep = replica(reader_url, "ro")
        assert replay_to(rep).ok
        assert rep.sql("SELECT COUNT(*) AS n FROM sample_stats WHERE experiment_id = :experiment_id")["n"].iloc[0] \
            == len(train_ds) + len(eval_ds)
        with pytest.raises(ReplayError, match="read-only replica"):
            rep.train_n_steps(1)
        with pytest.raises(StoreError, match="read-only|cannot write|permission"):
            Experiment(MNISTModel(), optim.Adam, train_ds, eval_ds, learning_rate=1e-2, batch_size=64, name="ro",
                       store=reader_url)
        rep.store.close()
    finally:
        with psycopg.connect(**admin, autocommit=True) as c:
            c.execute(f'DROP OWNED BY "{role}"')
            c.execute(f'DROP ROLE "{role}"')


def test_replay_to_is_refused_on_a_live_experiment(make_exp):
    exp = make_exp("live")
    exp.train_n_steps(2)
    before = fingerprint(exp)
    with pytest.raises(ReplayError, match="replay_to rebuilds a replica"):
        exp.replay_to(1)
    assert changed_parts(before, fingerprint(exp)) == []


def test_a_creation_whose_event_cannot_be_written_leaves_no_experiment_behind(store_target, digits):
    from experiment.test_failed_writes import events_refused

    train_ds, eval_ds = digits
    with Store.open(store_target) as store, events_refused(store):
        with pytest.raises(StoreError, match="injected"):
            Experiment(MNISTModel(), optim.Adam, train_ds, eval_ds, name="atomic", store=store)
        assert store.find_experiment("atomic") is None
        assert store.query("SELECT COUNT(*) AS n FROM sample_stats")["n"].iloc[0] == 0


def test_audit_recomputes_a_dumps_fast_fingerprint_from_its_blobs_and_flags_one_recorded_wrong(make_exp,
                                                                                                 monkeypatch):
    exp = make_exp("fast")
    exp.train_n_steps(2)
    exp.dump()
    assert audit_experiment(exp.store, "fast").ok  # version 2: fast digests recomputed from the tensor blobs
    from weightslab.experiment import runtime

    real = runtime.fast_digests

    def one_wrong(tensors, views=None):  # a writer whose fingerprint disagrees with what it stored (one off)
        out = real(tensors, views)
        name = sorted(out)[0]
        out[name] = out[name][:-1] + ("0" if out[name][-1] != "0" else "1")
        return out

    monkeypatch.setattr(runtime, "fast_digests", one_wrong)
    exp.train_n_steps(1)
    exp.dump()
    monkeypatch.undo()
    report = audit_experiment(exp.store, "fast")
    assert not report.ok and report.chain_ok  # the chain is intact: only the state check can catch it
    assert "its tensors do not hash to the state hash recorded with the event" in report.render_text()


def test_a_load_records_the_same_fingerprint_whether_this_process_dumped_the_checkpoint_or_not(make_exp):
    """A load takes the fingerprint of a checkpoint this process dumped (or loaded) from memory; computed
    afresh from the blobs in a process that did not, it is the same, and both equal the dump's."""
    exp = make_exp("twice")
    exp.train_n_steps(2)
    cid = exp.dump()
    exp.train_n_steps(1)
    exp.load(checkpoint_id=cid)  # this process dumped it: no pass over the tensors
    exp.close()
    reopened = make_exp("twice", store=exp.store)
    reopened.train_n_steps(1)
    reopened.load(checkpoint_id=cid)  # a fresh process: digests of the decoded blobs
    events = reopened.events()
    hashes = {kind: list(events.state_hash[events.kind == kind]) for kind in ("dump", "load")}
    assert len(hashes["load"]) == 2 and hashes["load"][0] == hashes["load"][1] == hashes["dump"][0]
    assert audit_experiment(reopened.store, "twice").ok
