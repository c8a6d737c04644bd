"""Per-sample statistics: batch updates, the DataFrame, the pass history and dirty ids."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from ledger_helpers import SEEN, SYNTH_SIZE

from weightslab.errors import ConfigurationError, LedgerError
from weightslab.ledger import PASS_LOG_COLUMNS, LedgeredDataset


def test_never_seen_samples_have_zero_exposure_and_null_stats_in_the_dataframe(synth):
    df = synth.get_dataframe()
    assert len(df) == SYNTH_SIZE
    assert df.index.name == "sample_id"
    assert list(df.columns) == [
        "prediction_age",
        "prediction_loss",
        "exposure_amount",
        "deny_listed",
        "prediction",
        "label",
    ]
    assert (df["exposure_amount"] == 0).all()
    assert df["prediction_age"].isna().all() and df["prediction_loss"].isna().all()
    assert df["prediction"].isna().all() and df["label"].isna().all()
    assert not df["deny_listed"].any()


def test_update_batch_writes_loss_prediction_label_age_and_exposure():
    ds = LedgeredDataset(torch.utils.data.TensorDataset(torch.zeros(10, 2), torch.arange(10)), "eval")
    ds.update_batch(
        torch.tensor([3, 7]),
        torch.tensor([0.5, 2.25]),
        torch.tensor([1, 4]),
        torch.tensor([3, 7]),
        model_age=512,
    )
    df = ds.get_dataframe()
    row3, row7 = df.loc[3], df.loc[7]
    assert (row3["prediction_loss"], row3["prediction"], row3["label"], row3["prediction_age"]) == (
        0.5,
        1,
        3,
        512.0,
    )
    assert (row7["prediction_loss"], row7["prediction"], row7["label"], row7["exposure_amount"]) == (
        2.25,
        4,
        7,
        1,
    )
    assert df["exposure_amount"].sum() == 2
    assert df["prediction_loss"].isna().sum() == 8


def test_update_batch_counts_a_duplicate_id_twice_and_keeps_its_last_loss():
    ds = LedgeredDataset(torch.utils.data.TensorDataset(torch.zeros(5, 2), torch.arange(5)), "train")
    ds.update_batch(
        torch.tensor([1, 1, 2]),
        torch.tensor([0.1, 0.2, 0.3]),
        torch.tensor([0, 0, 0]),
        torch.tensor([1, 1, 2]),
        model_age=0,
    )
    assert ds.stats.exposure_amount.tolist() == [0, 2, 1, 0, 0]
    assert ds.stats.prediction_loss[1] == np.float32(0.2)


def test_exposure_grows_by_one_per_pass_and_age_follows_the_model(synth_seen):
    ids = torch.arange(100)
    synth_seen.update_batch(
        ids,
        torch.zeros(100),
        torch.zeros(100, dtype=torch.long),
        torch.zeros(100, dtype=torch.long),
        model_age=123_456,
    )
    df = synth_seen.get_dataframe()
    assert (df["exposure_amount"].iloc[:100] == 2).all()
    assert (df["exposure_amount"].iloc[100:SEEN] == 1).all()
    assert (df["prediction_age"].iloc[:100] == 123_456.0).all()
    assert (df["prediction_loss"].iloc[:100] == 0.0).all()


def test_update_batch_accepts_tensors_that_require_grad(synth):
    losses = torch.rand(4, requires_grad=True) * 2
    synth.update_batch(
        torch.arange(4), losses, torch.ones(4, dtype=torch.long), torch.ones(4, dtype=torch.long), 0
    )
    np.testing.assert_allclose(synth.stats.prediction_loss[:4], losses.detach().numpy())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_update_batch_accepts_cuda_tensors(synth):
    dev = torch.device("cuda")
    synth.update_batch(
        torch.arange(3, device=dev),
        torch.tensor([1.0, 2.0, 3.0], device=dev),
        torch.tensor([4, 5, 6], device=dev),
        torch.tensor([7, 8, 9], device=dev),
        10,
    )
    assert synth.stats.prediction_loss[:3].tolist() == [1.0, 2.0, 3.0]
    assert synth.stats.prediction[:3].tolist() == [4, 5, 6]
    assert synth.stats.label[:3].tolist() == [7, 8, 9]


def test_update_batch_refuses_ids_outside_the_dataset_and_changes_nothing(synth):
    before = synth.state_arrays()
    with pytest.raises(LedgerError, match=r"0\.\.59999"):
        synth.update_batch(torch.tensor([1, SYNTH_SIZE]), torch.zeros(2), torch.zeros(2), torch.zeros(2), 0)
    with pytest.raises(LedgerError):
        synth.update_batch(torch.tensor([-1]), torch.zeros(1), torch.zeros(1), torch.zeros(1), 0)
    for k, v in synth.state_arrays().items():
        np.testing.assert_array_equal(v, before[k])


def test_update_batch_refuses_a_batch_mean_loss(synth):
    with pytest.raises(ConfigurationError, match="reduction='none'"):
        synth.update_batch(torch.arange(4), torch.tensor(0.3), torch.zeros(4), torch.zeros(4), 0)


def test_drain_history_returns_every_pass_row_in_order_then_empties():
    ds = LedgeredDataset(torch.utils.data.TensorDataset(torch.zeros(70_000, 1), torch.zeros(70_000)), "train")
    ids = torch.arange(70_000).flip(0)
    for start in range(0, 70_000, 1000):  # crosses the log's chunk boundaries
        b = ids[start : start + 1000]
        ds.update_batch(b, b.float() / 10, b % 10, b % 10, model_age=start)
    hist = ds.drain_history()
    assert tuple(hist) == PASS_LOG_COLUMNS
    np.testing.assert_array_equal(hist["sample_id"], ids.numpy())
    np.testing.assert_array_equal(hist["model_age"], np.repeat(np.arange(0, 70_000, 1000), 1000))
    np.testing.assert_array_equal(hist["loss"], (ids.float() / 10).numpy())
    np.testing.assert_array_equal(hist["prediction"], (ids % 10).numpy())
    assert all(len(v) == 0 for v in ds.drain_history().values())


def test_take_dirty_ids_returns_ids_updated_or_denied_since_the_last_call(synth):
    assert len(synth.take_dirty_ids()) == 0
    synth.update_batch(torch.tensor([9, 4]), torch.zeros(2), torch.zeros(2), torch.zeros(2), 0)
    synth.denylist_samples({100})
    assert synth.take_dirty_ids().tolist() == [4, 9, 100]
    assert synth.take_dirty_ids().tolist() == []


def test_dataframe_dtypes_are_float_with_nan_and_nullable_ints(synth_seen):
    df = synth_seen.get_dataframe()
    assert df["prediction_age"].dtype == np.float64
    assert df["prediction_loss"].dtype == np.float64
    assert df["exposure_amount"].dtype == np.int64
    assert df["deny_listed"].dtype == np.bool_
    assert df["prediction"].dtype == pd.Int64Dtype() and df["label"].dtype == pd.Int64Dtype()
    assert df["label"].iloc[:SEEN].notna().all() and df["label"].iloc[SEEN:].isna().all()
    assert math.isnan(df["prediction_age"].iloc[-1])
    assert (df["label"].iloc[:SEEN].to_numpy() == synth_seen.wrapped.tensors[1][:SEEN].numpy()).all()


def test_dataframe_is_a_copy_that_does_not_write_back(synth_seen):
    df = synth_seen.get_dataframe()
    df.loc[0, "prediction_loss"] = 99.0
    df.loc[0, "deny_listed"] = True
    assert synth_seen.stats.prediction_loss[0] != 99.0
    assert not synth_seen.stats.deny_listed[0]


def test_memory_stays_under_64_bytes_per_sample_with_one_pass_of_history():
    n = 200_000
    ds = LedgeredDataset(torch.utils.data.TensorDataset(torch.zeros(n, 1), torch.zeros(n)), "train")
    ids = torch.arange(n)
    for start in range(0, n, 4096):
        b = ids[start : start + 4096]
        ds.update_batch(b, torch.zeros(len(b)), b % 10, b % 10, start)
    assert ds.stats.nbytes() / n <= 64


def test_update_batch_takes_one_age_per_sample_and_logs_it():
    ds = LedgeredDataset(torch.utils.data.TensorDataset(torch.zeros(6, 2), torch.arange(6)), "train")
    ds.update_batch(torch.tensor([4, 1, 4]), torch.tensor([0.5, 1.5, 2.5]), torch.tensor([0, 1, 2]),
                    torch.tensor([4, 1, 4]), model_age=np.array([10, 10, 13]))
    df = ds.get_dataframe()
    assert df.loc[4, "prediction_age"] == 13 and df.loc[1, "prediction_age"] == 10  # 4's last occurrence
    assert df.loc[4, "exposure_amount"] == 2
    np.testing.assert_array_equal(ds.drain_history()["model_age"], [10, 10, 13])


def test_update_batch_refuses_ages_of_another_length_and_changes_nothing(synth):
    before = synth.state_arrays()
    with pytest.raises(ConfigurationError, match="one per sample"):
        synth.update_batch(torch.arange(3), torch.zeros(3), torch.zeros(3), torch.zeros(3), np.array([1, 2]))
    for k, v in synth.state_arrays().items():
        np.testing.assert_array_equal(v, before[k])
    assert len(synth.drain_history()["sample_id"]) == 0
