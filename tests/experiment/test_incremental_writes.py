"""What the experiment writes only when it changed, and reads a batch at a time, gives the same results."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset


class ItemByItem(Dataset):
    """The same items through a dataset with only __getitem__: the loader reads them one by one."""

    def __init__(self, ds) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        return self.ds[i]


def test_training_on_a_tensor_dataset_matches_item_by_item_reads_bit_for_bit(make_exp, digits):
    train_ds, eval_ds = digits
    fast = make_exp("fast")
    slow = make_exp("slow", train_dataset=ItemByItem(train_ds), eval_dataset=ItemByItem(eval_ds))
    for exp in (fast, slow):
        exp.train_n_steps(30)  # past the end of the first epoch (24 batches)
        exp.eval_n_steps(3)
    a, b = fast.model.state_dict(), slow.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for split in ("train_loader", "eval_loader"):
        pd.testing.assert_frame_equal(getattr(fast, split).dataset.get_dataframe(),
                                      getattr(slow, split).dataset.get_dataframe())


def _sql_rows(exp, split: str) -> pd.DataFrame:
    exp.flush()
    return exp.sql("SELECT sample_id, prediction_age, prediction_loss, exposure_amount, deny_listed, prediction, "
                   "label FROM sample_stats WHERE experiment_id = :experiment_id AND split = :s ORDER BY sample_id",
                   {"s": split}).set_index("sample_id")


def _assert_sql_matches_ledger(exp) -> None:
    for split, ds in (("train", exp.train_loader.dataset), ("eval", exp.eval_loader.dataset)):
        sql, mem = _sql_rows(exp, split), ds.get_dataframe()
        mem = mem.loc[sql.index]
        np.testing.assert_array_equal(sql["exposure_amount"], mem["exposure_amount"])
        np.testing.assert_array_equal(sql["deny_listed"].astype(bool), mem["deny_listed"])
        np.testing.assert_array_equal(sql["prediction_loss"].astype(float).isna(), mem["prediction_loss"].isna())
        seen = mem["exposure_amount"] > 0
        np.testing.assert_array_equal(sql.loc[seen, "prediction_loss"].astype(np.float32),
                                      mem.loc[seen, "prediction_loss"].astype(np.float32))
        np.testing.assert_array_equal(sql.loc[seen, "prediction_age"], mem.loc[seen, "prediction_age"])
        np.testing.assert_array_equal(sql.loc[seen, "prediction"].astype(int), mem.loc[seen, "prediction"].astype(int))
        # every sample seen or denied has its row
        touched = mem.index[seen | mem["deny_listed"]]
        assert set(touched) <= set(sql.index)


def test_load_rewrites_the_rows_the_restore_changed_and_sql_matches_the_restored_ledger(make_exp):
    exp = make_exp("reload")
    exp.train_n_steps(5)
    exp.dump()
    seen_at_dump = set(np.flatnonzero(exp.train_loader.dataset.stats.exposure_amount))
    exp.train_n_steps(12)  # samples the checkpoint never saw now have rows
    exp.train_loader.dataset.denylist_samples({1, 2, 3})
    exp.eval_full()
    exp.load(checkpoint_id=0)
    _assert_sql_matches_ledger(exp)
    train = _sql_rows(exp, "train")
    later = train.loc[[i for i in train.index if i not in seen_at_dump]]
    assert len(later) > 0 and (later["exposure_amount"] == 0).all() and later["prediction_loss"].isna().all()
    assert not train["deny_listed"].astype(bool).any()
    # loading the same state again changes nothing and leaves SQL as it is
    exp.load(checkpoint_id=0)
    pd.testing.assert_frame_equal(_sql_rows(exp, "train"), train)


def _snapshot_blobs(exp, seq: int) -> dict[str, str]:
    df = exp.sql("SELECT table_name, blob_hash FROM snapshots WHERE experiment_id = :experiment_id "
                 "AND event_seq = :q", {"q": int(seq)})
    return dict(zip(df["table_name"], df["blob_hash"], strict=True))


def test_a_dump_with_unchanged_statistics_registers_the_same_snapshot_blobs(make_exp):
    exp = make_exp("snapreuse")
    exp.train_n_steps(4)
    first = exp.dump()
    exp.load(checkpoint_id=first)
    exp.model.layers[1].set_per_neuron_learning_rate({0}, lr=0.5)  # the model changes, no statistics do
    exp.dump()
    seqs = exp.sql("SELECT event_seq FROM checkpoints WHERE experiment_id = :experiment_id "
                   "ORDER BY checkpoint_id")["event_seq"].tolist()
    a, b = _snapshot_blobs(exp, seqs[0]), _snapshot_blobs(exp, seqs[1])
    assert {"sample_stats", "neuron_stats"} <= b.keys()
    assert a["sample_stats"] == b["sample_stats"] and a["neuron_stats"] == b["neuron_stats"]
    exp.train_n_steps(1)
    exp.dump()
    c = _snapshot_blobs(exp, int(exp.sql("SELECT MAX(event_seq) AS s FROM checkpoints WHERE experiment_id = "
                                         ":experiment_id")["s"].iloc[0]))
    assert c["sample_stats"] != b["sample_stats"] and c["neuron_stats"] != b["neuron_stats"]
    # each snapshot reads back as the statistics it names
    ids = exp.sql("SELECT snapshot_id FROM snapshots WHERE experiment_id = :experiment_id AND blob_hash = :h",
                  {"h": c["sample_stats"]})["snapshot_id"].tolist()
    stats = exp.store.read_snapshot(ids[-1])
    train = stats[stats["split"] == "train"].set_index("sample_id").drop(columns="split")
    pd.testing.assert_frame_equal(train, exp.train_loader.dataset.get_dataframe(), check_index_type=False)


def test_after_a_whole_epoch_every_row_matches_the_ledger_and_unseen_rows_are_kept(make_exp):
    """An epoch's flush writes every allowed sample; rows of samples it did not see (denied ones)
    stay as they were."""
    exp = make_exp("whole")
    exp.train_loader.dataset.denylist_samples({0, 1, 2})  # rows with no pass yet
    exp.train_n_steps(3)
    exp.train_n_steps(len(exp.train_loader))  # every allowed sample
    _assert_sql_matches_ledger(exp)
    train = _sql_rows(exp, "train")
    assert set(train.index) == set(range(len(exp.train_loader.dataset)))
    assert train.loc[[0, 1, 2], "deny_listed"].astype(bool).all()
    assert (train.loc[[0, 1, 2], "exposure_amount"] == 0).all()
    exp.train_loader.dataset.allowlist_samples({1})
    exp.train_n_steps(2)
    _assert_sql_matches_ledger(exp)
    assert not bool(_sql_rows(exp, "train").loc[1, "deny_listed"])
