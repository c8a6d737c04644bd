"""Deny and allow: predicates, ids, queries, sampled deny, records for observers, re-execution."""

from __future__ import annotations

import secrets

import numpy as np
import pytest
import torch
from ledger_helpers import SEEN, SYNTH_SIZE, train_epochs
from torch.utils.data import DataLoader

from weightslab.events.record import OperationRecord
from weightslab.ledger import LedgeredDataset, LedgerSampler

TUTORIAL_FN = lambda id, age, loss, times, denied, pred, label: loss <= 1.5  # noqa: E731 - the tutorial's


@pytest.fixture
def records(synth_seen) -> list[OperationRecord]:
    out: list[OperationRecord] = []
    synth_seen.add_observer(out.append)
    return out


def test_tutorial_predicate_denies_low_loss_samples_and_never_seen_ones_do_not_match(synth_seen):
    loss = synth_seen.stats.prediction_loss
    expected = np.flatnonzero(loss <= 1.5)  # NaN (never seen) compares False
    assert 0 < len(expected) < SEEN
    changed = synth_seen.deny_samples_with_predicate(TUTORIAL_FN)
    assert changed == len(expected)
    np.testing.assert_array_equal(np.flatnonzero(synth_seen.stats.deny_listed), expected)
    assert not synth_seen.stats.deny_listed[SEEN:].any()


def test_predicate_receives_python_scalars_with_nan_for_never_seen(synth_seen):
    calls = {}

    def fn(id, age, loss, times, denied, pred, label):
        if id in (0, SYNTH_SIZE - 1):
            calls[id] = (age, loss, times, denied, pred, label)
        return False

    synth_seen.deny_samples_with_predicate(fn)
    age, loss, times, denied, pred, label = calls[0]
    assert (type(age), type(loss), type(times), type(denied), type(pred), type(label)) == (
        float,
        float,
        int,
        bool,
        int,
        int,
    )
    assert loss == float(synth_seen.stats.prediction_loss[0]) and times == 1 and denied is False
    assert label == int(synth_seen.wrapped.tensors[1][0])
    age, loss, times, denied, pred, label = calls[SYNTH_SIZE - 1]
    assert all(np.isnan(v) for v in (age, loss, pred, label)) and times == 0


def test_deny_accumulates_and_counts_only_newly_denied(synth_seen):
    assert synth_seen.denylist_samples({1, 2, 3}) == 3
    assert synth_seen.denylist_samples([3, 4]) == 1
    assert np.flatnonzero(synth_seen.stats.deny_listed).tolist() == [1, 2, 3, 4]
    assert synth_seen.deny_samples_with_predicate(lambda *a: a[0] in (4, 5)) == 1
    assert np.flatnonzero(synth_seen.stats.deny_listed).tolist() == [1, 2, 3, 4, 5]


def test_allowlist_ids_and_none_readmit_and_count_changes(synth_seen):
    synth_seen.denylist_samples(range(10))
    assert synth_seen.allowlist_samples({1, 2, 500}) == 2
    assert np.flatnonzero(synth_seen.stats.deny_listed).tolist() == [0, 3, 4, 5, 6, 7, 8, 9]
    assert synth_seen.allowlist_samples(None) == 8
    assert not synth_seen.stats.deny_listed.any()
    assert synth_seen.allowlist_samples(None) == 0


def test_deny_where_query_matches_the_predicate_on_60000_samples(synth_seen):
    other = LedgeredDataset(synth_seen.wrapped, "train")
    other.load_state_arrays(synth_seen.state_arrays())
    fn = lambda id, age, loss, times, denied, pred, label: loss <= 1.5 and times >= 1 and pred != label  # noqa: E731
    n_pred = synth_seen.deny_samples_with_predicate(fn)
    n_query = other.deny_samples_where(
        "prediction_loss <= 1.5 and exposure_amount >= 1 and prediction != label"
    )
    assert n_pred == n_query > 0
    np.testing.assert_array_equal(synth_seen.stats.deny_listed, other.stats.deny_listed)


def test_deny_where_can_use_the_sample_id_index(synth_seen):
    assert synth_seen.deny_samples_where("sample_id >= 59990") == 10
    assert np.flatnonzero(synth_seen.stats.deny_listed).tolist() == list(range(59990, 60000))


def test_allow_where_readmits_matching_denied_samples(synth_seen):
    synth_seen.denylist_samples(range(100))
    assert synth_seen.allow_samples_where("sample_id < 40") == 40
    assert np.flatnonzero(synth_seen.stats.deny_listed).tolist() == list(range(40, 100))


def test_each_operation_notifies_once_with_ids_and_mode(synth_seen, records):
    synth_seen.denylist_samples({5, 3})
    synth_seen.deny_samples_with_predicate(lambda *a: a[0] in (3, 8))
    synth_seen.deny_samples_where("sample_id == 9")
    synth_seen.allowlist_samples({3})
    synth_seen.allowlist_samples(None)
    assert [(r.kind, r.args["mode"], r.args["ids"], r.result["changed"]) for r in records] == [
        ("deny", "ids", [3, 5], 2),
        ("deny", "predicate", [8], 1),
        ("deny", "where", [9], 1),
        ("allow", "ids", [3], 1),
        ("allow", "all", [5, 8, 9], 3),
    ]
    assert records[2].args["query"] == "sample_id == 9"


def test_sampled_deny_keeps_factor_times_non_matching_allowed_with_recorded_seed(synth_seen, records):
    fn = lambda id, age, loss, times, denied, pred, label: id < 1000  # noqa: E731 - 1,000 match, 59,000 do not
    changed = synth_seen.deny_samples_and_sample_allowed_with_predicate(
        fn, allow_to_denied_factor=0.01, seed=42
    )
    kept = int(0.01 * 59_000)  # 590 of the 1,000 matching stay allowed
    assert changed == 1000 - kept
    assert synth_seen.stats.deny_listed[1000:].sum() == 0
    assert synth_seen.stats.deny_listed[:1000].sum() == 1000 - kept
    (r,) = records
    assert r.kind == "deny" and r.args["mode"] == "sampled"
    assert r.args["seed"] == 42 and r.args["allow_to_denied_factor"] == 0.01
    assert r.args["ids"] == np.flatnonzero(synth_seen.stats.deny_listed).tolist()
    assert r.result["kept_allowed"] == kept


def test_sampled_deny_keeps_all_matching_when_factor_is_large(synth_seen):
    fn = lambda id, *rest: id < 1000  # noqa: E731
    assert synth_seen.deny_samples_and_sample_allowed_with_predicate(fn, allow_to_denied_factor=3) == 0
    assert not synth_seen.stats.deny_listed.any()


def test_sampled_deny_with_the_same_seed_chooses_the_same_samples(synth_seen):
    other = LedgeredDataset(synth_seen.wrapped, "train")
    fn = lambda id, age, loss, times, denied, pred, label: id % 7 == 0  # noqa: E731
    synth_seen.deny_samples_and_sample_allowed_with_predicate(fn, allow_to_denied_factor=0.1, seed=7)
    other.deny_samples_and_sample_allowed_with_predicate(fn, allow_to_denied_factor=0.1, seed=7)
    np.testing.assert_array_equal(synth_seen.stats.deny_listed, other.stats.deny_listed)
    third = LedgeredDataset(synth_seen.wrapped, "train")
    third.deny_samples_and_sample_allowed_with_predicate(fn, allow_to_denied_factor=0.1, seed=8)
    assert synth_seen.stats.deny_listed.sum() == third.stats.deny_listed.sum()
    assert not np.array_equal(synth_seen.stats.deny_listed, third.stats.deny_listed)


def test_sampled_deny_without_seed_draws_one_from_secrets_and_leaves_global_rngs_alone(
    synth_seen, records, monkeypatch
):
    monkeypatch.setattr(secrets, "randbits", lambda k: 123456789)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    synth_seen.deny_samples_and_sample_allowed_with_predicate(
        lambda id, *r: id < 500, allow_to_denied_factor=0.005
    )
    assert records[0].args["seed"] == 123456789
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state[1])


def test_recorded_ids_re_execute_every_operation_to_the_same_state(synth_seen, records):
    fn = lambda id, age, loss, times, denied, pred, label: loss > 2.5  # noqa: E731
    synth_seen.deny_samples_with_predicate(TUTORIAL_FN)
    synth_seen.deny_samples_and_sample_allowed_with_predicate(fn, allow_to_denied_factor=0.5)
    synth_seen.allowlist_samples(range(0, 60_000, 3))
    synth_seen.deny_samples_where("prediction_loss > 2.9")
    synth_seen.allowlist_samples(None)
    synth_seen.denylist_samples({17, 19})
    replayed = LedgeredDataset(synth_seen.wrapped, "train")
    for r in records:
        assert replayed.apply_recorded(r.kind, r.args) == r.result["changed"]
    np.testing.assert_array_equal(replayed.stats.deny_listed, synth_seen.stats.deny_listed)
    assert np.flatnonzero(replayed.stats.deny_listed).tolist() == [17, 19]


def test_apply_deny_and_allow_ids_notify_like_any_operation(synth_seen, records):
    assert synth_seen.apply_deny_ids([4, 2]) == 2
    assert synth_seen.apply_allow_ids([2]) == 1
    assert [(r.kind, r.args["ids"]) for r in records] == [("deny", [2, 4]), ("allow", [2])]


def test_removed_observer_is_not_notified(synth_seen, records):
    synth_seen.remove_observer(records.append)
    synth_seen.denylist_samples({1})
    assert records == []


def test_eval_split_may_deny_every_sample():
    ds = LedgeredDataset(torch.utils.data.TensorDataset(torch.zeros(6, 1), torch.zeros(6)), "eval")
    assert ds.denylist_samples(range(6)) == 6


def test_digits_deny_after_a_real_training_pass(digits_tensors):
    ds = LedgeredDataset(digits_tensors, "train")
    loader = DataLoader(ds, batch_size=64, sampler=LedgerSampler(ds, seed=0))
    train_epochs(loader, epochs=1, ledger=ds)
    df = ds.get_dataframe()
    assert (df["exposure_amount"] == 1).all()
    assert (df["label"].to_numpy() == digits_tensors.tensors[1].numpy()).all()
    assert df["prediction_age"].max() >= len(ds) - 64
    n = ds.deny_samples_with_predicate(TUTORIAL_FN)
    assert n == int((df["prediction_loss"] <= 1.5).sum()) > 0
    assert len(loader) == -(-(len(ds) - n) // 64)


def test_is_denied_reports_the_mask_for_given_ids_in_order(synth_seen):
    synth_seen.denylist_samples({7, 9})
    assert synth_seen.is_denied([9, 8, 7]).tolist() == [True, False, True]
    assert synth_seen.is_denied(torch.tensor([7])).tolist() == [True]


def test_sampled_deny_leaves_an_earlier_denied_kept_sample_denied(synth_seen):
    synth_seen.denylist_samples(range(10))
    fn = lambda id, *rest: id < 10  # noqa: E731 - all ten already denied; a huge factor keeps all "allowed"
    assert (
        synth_seen.deny_samples_and_sample_allowed_with_predicate(fn, allow_to_denied_factor=100, seed=0) == 0
    )
    assert synth_seen.stats.deny_listed[:10].all()
