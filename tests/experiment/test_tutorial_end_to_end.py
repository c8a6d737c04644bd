"""Every snippet of the tutorial, in order, then what the store recorded."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from weightslab.errors import IndexSelectionError

TUTORIAL_KINDS = [
    "create", "train", "eval", "train", "eval", "train", "eval", "train", "eval",  # 1 epoch, 4 evals
    "train", "eval", "eval",  # train_n_steps(25), eval_n_steps(20), eval_full()
    "add_neurons", "prune", "set_neuron_lr", "freeze", "unfreeze", "deny", "deny", "allow", "allow",
    "dump", "load",
]


def run_tutorial(exp, capsys):
    exp.train_n_steps_with_eval_full(len(exp.train_loader))
    exp.train_n_steps(25)
    exp.eval_n_steps(20)
    exp.eval_full()
    exp.display_stats()
    report = capsys.readouterr().out
    assert "Neuron 00000:  train:" in report and ":  eval :" in report
    df = exp.train_loader.dataset.get_dataframe()
    assert list(df.columns[:4]) == ["prediction_age", "prediction_loss", "exposure_amount", "deny_listed"]

    exp.model.add_neurons(layer_index=0, neuron_count=4)  # 2 -> 6 neurons
    exp.model.prune(layer_index=0, neuron_indices={0, 2, 4})  # 6 -> 3
    # the tutorial names neurons 5, 6 that the prune just removed: a clear index error, nothing recorded
    for kw in ({}, {"perturbation_ratio": 0.2}):
        with pytest.raises(IndexSelectionError, match="0..2|0, 2|range"):
            exp.model.reinit_neurons(layer_index=0, neuron_indices={5, 6}, **kw)
    exp.model.layers[0].set_per_neuron_learning_rate(set(range(0, 2)), lr=0.0)
    # layer 0 has a single incoming channel (the image): neuron 1 does not exist
    with pytest.raises(IndexSelectionError):
        exp.model.layers[0].set_per_incoming_neuron_learning_rate(set(range(0, 2)), lr=0.0)
    exp.model.freeze_layers_up_to_idx(1)
    exp.model.unfreeze_layers_from_idx(1)

    denylist_fn = lambda id, age, loss, times, denied, pred, label: loss <= 1.5  # noqa: E731
    ds = exp.train_loader.dataset
    ds.deny_samples_with_predicate(denylist_fn)
    ds.allowlist_samples(None)
    ds.deny_samples_and_sample_allowed_with_predicate(denylist_fn, allow_to_denied_factor=3)
    ds.allowlist_samples({1, 2})
    ds.allowlist_samples(None)
    cid = exp.dump()
    print(exp.chkpt_manager)
    exp.load(checkpoint_id=0)
    return cid


def test_tutorial_runs_and_every_operation_is_an_event(make_exp, capsys):
    exp = make_exp("tutorial")
    cid = run_tutorial(exp, capsys)
    assert cid == 0
    lineage = capsys.readouterr().out
    assert "checkpoint 0" in lineage and "prune layer 0 {0, 2, 4}" in lineage
    kinds = exp.events()["kind"].tolist()
    expected = list(TUTORIAL_KINDS)
    # deny/allow counts depend on the data; the sequence of kinds does not
    expected[expected.index("deny"):expected.index("dump")] = ["deny", "allow", "deny", "allow", "allow"]
    assert kinds == expected
    assert exp.verify()


def test_sql_statistics_match_the_ledger_after_each_event(make_exp):
    exp = make_exp("sqlstats")
    exp.train_n_steps(10)
    exp.eval_full()
    exp.train_loader.dataset.denylist_samples({3, 4, 5})
    for split, ds in (("train", exp.train_loader.dataset), ("eval", exp.eval_loader.dataset)):
        sql = exp.sql("SELECT * FROM sample_stats WHERE experiment_id = :experiment_id AND split = :s "
                      "ORDER BY sample_id", {"s": split}).set_index("sample_id")
        mem = ds.get_dataframe()
        seen = mem.index[mem["exposure_amount"] > 0]
        assert set(sql.index) >= set(seen)
        np.testing.assert_array_equal(sql.loc[seen, "exposure_amount"], mem.loc[seen, "exposure_amount"])
        np.testing.assert_allclose(sql.loc[seen, "prediction_loss"].astype(float),
                                   mem.loc[seen, "prediction_loss"], rtol=1e-6)
        np.testing.assert_array_equal(sql.loc[seen, "prediction_age"].astype(float), mem.loc[seen, "prediction_age"])
    denied = exp.sql("SELECT sample_id FROM sample_stats WHERE experiment_id = :experiment_id "
                     "AND split = 'train' AND deny_listed ORDER BY sample_id")
    assert denied["sample_id"].tolist() == [3, 4, 5]
    neurons = exp.sql("SELECT layer_index, COUNT(*) AS n FROM neuron_stats WHERE experiment_id = :experiment_id "
                      "AND split = 'train' GROUP BY layer_index ORDER BY layer_index")
    assert neurons["n"].tolist() == [2, 4, 10, 10]


def test_dump_writes_parquet_snapshots_readable_with_pandas(make_exp):
    exp = make_exp("snap")
    exp.train_n_steps(5)
    exp.dump()
    snaps = exp.sql("SELECT snapshot_id, table_name, rows FROM snapshots WHERE experiment_id = :experiment_id")
    assert set(snaps["table_name"]) == {"sample_stats", "neuron_stats", "sample_history"}
    hist_id = int(snaps.loc[snaps["table_name"] == "sample_history", "snapshot_id"].iloc[0])
    history = exp.store.read_snapshot(hist_id)
    assert len(history) == 5 * 64
    assert set(history.columns) >= {"sample_id", "model_age", "loss", "prediction"}
    stats = exp.store.read_snapshot(int(snaps.loc[snaps["table_name"] == "sample_stats", "snapshot_id"].iloc[0]))
    assert len(stats) == len(exp.train_loader.dataset) + len(exp.eval_loader.dataset)


def test_second_dump_after_one_layer_edit_stores_only_changed_tensors(make_exp):
    exp = make_exp("dedup")
    exp.train_n_steps(3)
    exp.dump()
    first = exp.chkpt_manager.last_dump_bytes
    exp.model.layers[2].set_per_neuron_learning_rate({0}, lr=0.5)
    exp.dump()
    second = exp.chkpt_manager.last_dump_bytes
    assert 0 < second < first / 4
    # the only tensor that changed is layer2's row multiplier (plus the manifest)
    m0 = exp.sql("SELECT manifest_hash FROM checkpoints WHERE experiment_id = :experiment_id ORDER BY checkpoint_id")
    assert m0["manifest_hash"].nunique() == 2


def test_load_restores_model_optimizer_and_ledger_exactly(make_exp):
    exp = make_exp("exact")
    exp.train_n_steps(7)
    before = {k: v.clone() for k, v in exp.model.state_dict().items()}
    opt_before = {i: {k: v.clone() for k, v in s.items() if torch.is_tensor(v)}
                  for i, s in exp.optimizer.state_dict()["state"].items()}
    ledger_before = exp.train_loader.dataset.get_dataframe()
    exp.dump()
    exp.model.add_neurons(layer_index=1, neuron_count=3)
    exp.train_loader.dataset.denylist_samples({0, 1})
    exp.train_n_steps(4)
    opt = exp.optimizer
    exp.load(checkpoint_id=0)
    assert exp.optimizer is opt
    after = exp.model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    for i, s in exp.optimizer.state_dict()["state"].items():
        for k, v in opt_before[i].items():
            assert torch.equal(s[k], v), (i, k)
    import pandas as pd

    pd.testing.assert_frame_equal(exp.train_loader.dataset.get_dataframe(), ledger_before)


def test_branching_load_makes_next_dump_a_child_of_the_loaded_checkpoint(make_exp):
    exp = make_exp("branch")
    exp.train_n_steps(2)
    assert exp.dump() == 0
    exp.train_n_steps(2)
    assert exp.dump() == 1
    exp.load(checkpoint_id=0)
    exp.train_n_steps(1)
    assert exp.dump() == 2
    rows = exp.sql("SELECT checkpoint_id, parent_id FROM checkpoints WHERE experiment_id = :experiment_id "
                   "ORDER BY checkpoint_id")
    assert rows["parent_id"].tolist()[1:] == [0, 0]
    text = str(exp.chkpt_manager)
    assert text.count("● checkpoint") == 3 and "├──" in text and "└──" in text


REOPEN = textwrap.dedent("""
    import sys, torch
    from torch import optim
    from weightslab import Experiment
    from weightslab.demo import MNISTModel, digits_datasets
    tr, ev = digits_datasets()
    torch.manual_seed(123)  # a different initialisation: the store must win
    exp = Experiment(model=MNISTModel(), optimizer_class=optim.Adam, train_dataset=tr, eval_dataset=ev,
                     device="cpu", learning_rate=1e-2, batch_size=64, name=sys.argv[2], store=sys.argv[1])
    print("REPORT", exp.resume_report)
    print("AGE", exp.model_age)
    print("WIDTHS", [l.neuron_count for l in exp.model.layers])
    print("W0", float(exp.model.layers[0].weight.detach().double().sum()))
    exp.train_n_steps(2)
    print("OK", exp.verify())
""")


def test_reopen_in_a_fresh_process_continues_from_the_recorded_state(make_exp, store_target, tmp_path):
    exp = make_exp("reopen")
    exp.train_n_steps(6)
    exp.dump()
    exp.model.add_neurons(layer_index=0, neuron_count=2)
    exp.train_n_steps(3)
    age, w0 = exp.model_age, float(exp.model.layers[0].weight.detach().double().sum())
    out = subprocess.run([sys.executable, "-c", REOPEN, store_target, "reopen"], capture_output=True, text=True,
                         check=True, cwd=tmp_path).stdout  # its TensorBoard logs land under tmp_path
    lines = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    assert int(lines["AGE"]) == age
    assert lines["WIDTHS"] == "[4, 4, 10, 10]"
    assert float(lines["W0"]) == w0
    assert lines["OK"] == "True"
    kinds = exp.store.events(exp.experiment_id)
    assert [e.kind for e in kinds][-2:] == ["resume", "train"]


def test_reopen_refuses_a_tampered_event_log(make_exp, store_target):
    from sqlalchemy import text

    from weightslab.errors import IntegrityError

    exp = make_exp("tampered")
    exp.train_n_steps(2)
    exp.model.prune(layer_index=1, neuron_indices={0})
    with exp.store.engine.begin() as conn:
        conn.execute(text("UPDATE events SET kind = 'eval' WHERE experiment_id = :e AND seq = 2"),
                     {"e": exp.experiment_id})
    n = len(exp.events())
    with pytest.raises(IntegrityError, match="fails verification at seq 2.*weightslab audit"):
        make_exp("tampered")
    assert len(exp.events()) == n
