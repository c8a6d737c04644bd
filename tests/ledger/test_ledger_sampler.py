"""The sampler: only allowed samples, reproducible order, exact save/restore, DataLoader workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ledger_helpers import record_pass, synthetic_tensors, train_epochs
from torch.utils.data import DataLoader, RandomSampler, Subset

from weightslab.errors import ConfigurationError, LedgerError
from weightslab.ledger import LedgeredDataset, LedgerSampler


def epoch_ids(sampler: LedgerSampler) -> list[int]:
    return list(iter(sampler))


def test_sampler_draws_only_allowed_ids_once_each_per_epoch(synth):
    synth.denylist_samples(range(0, 60_000, 2))
    sampler = LedgerSampler(synth, seed=3)
    ids = epoch_ids(sampler)
    assert len(ids) == 30_000 == len(sampler)
    assert sorted(ids) == list(range(1, 60_000, 2))
    assert ids != sorted(ids)


def test_loader_length_reflects_the_allowed_count(synth):
    loader = DataLoader(synth, batch_size=256, sampler=LedgerSampler(synth, seed=0))
    assert len(loader) == 235  # ceil(60000 / 256)
    synth.denylist_samples(range(10_000))
    assert len(loader) == 196  # ceil(50000 / 256)


def test_denied_sample_appears_in_no_batch_after_a_mid_epoch_deny(synth):
    loader = DataLoader(synth, batch_size=256, sampler=LedgerSampler(synth, seed=0))
    it = iter(loader)
    first = torch.cat([next(it)[2] for _ in range(10)])
    denied = set(range(0, 60_000, 3))
    synth.denylist_samples(denied)
    rest = torch.cat([b[2] for b in it])
    assert denied.isdisjoint(rest.tolist())
    assert len(set(first.tolist()) | set(rest.tolist())) == len(first) + len(rest)
    assert set(first.tolist()) | set(rest.tolist()) | denied == set(range(60_000))


def test_sample_allowed_mid_epoch_joins_the_next_epoch(synth):
    synth.denylist_samples({5})
    sampler = LedgerSampler(synth, seed=0)
    it = iter(sampler)
    next(it)
    synth.allowlist_samples({5})
    assert 5 not in list(it)
    assert 5 in epoch_ids(sampler)


def test_same_seed_gives_the_same_order_and_epochs_differ(synth):
    a, b = LedgerSampler(synth, seed=11), LedgerSampler(synth, seed=11)
    a1, a2 = epoch_ids(a), epoch_ids(a)
    assert a1 == epoch_ids(b) and a2 == epoch_ids(b)
    assert a1 != a2
    assert a.epoch == 2


def test_first_epoch_matches_torch_random_sampler_on_the_dataset_with_denied_removed(synth):
    denied = np.arange(0, 60_000, 7)
    synth.denylist_samples(denied)
    kept = synth.allowed_ids()
    reference = RandomSampler(
        Subset(synth.wrapped, kept.tolist()), generator=torch.Generator().manual_seed(5)
    )
    assert epoch_ids(LedgerSampler(synth, seed=5)) == kept[list(reference)].tolist()


def test_no_shuffle_yields_allowed_ids_in_ascending_order(synth):
    synth.denylist_samples({0, 2})
    assert epoch_ids(LedgerSampler(synth, seed=0, shuffle=False))[:4] == [1, 3, 4, 5]


def test_training_with_samples_denied_is_bit_identical_to_training_without_them(digits_tensors):
    full = LedgeredDataset(digits_tensors, "train")
    denied = set(range(0, len(full), 5)) | set(range(100, 300))
    full.denylist_samples(denied)
    kept = full.allowed_ids().tolist()
    removed = LedgeredDataset(Subset(digits_tensors, kept), "train")

    model_a, labels_a = train_epochs(DataLoader(full, batch_size=64, sampler=LedgerSampler(full, seed=9)), 3)
    model_b, labels_b = train_epochs(
        DataLoader(removed, batch_size=64, sampler=LedgerSampler(removed, seed=9)), 3
    )

    assert len(labels_a) == len(labels_b) == 3 * -(-len(kept) // 64)
    assert all(torch.equal(a, b) for a, b in zip(labels_a, labels_b))
    for (name, pa), pb in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_state_restored_mid_epoch_continues_with_the_same_remaining_order(synth):
    synth.denylist_samples(range(50))
    sampler = LedgerSampler(synth, seed=1)
    epoch_ids(sampler)  # one full epoch first, so the generator has moved
    it = iter(sampler)
    head = [next(it) for _ in range(1234)]
    state = sampler.state_arrays()
    tail, next_epoch = list(it), epoch_ids(sampler)

    restored = LedgerSampler(synth, seed=999)
    restored.load_state_arrays(state)
    assert restored.epoch == 2 and restored.consumed == 1234
    assert list(iter(restored)) == tail
    assert epoch_ids(restored) == next_epoch
    assert set(head).isdisjoint(tail)


def test_state_arrays_are_numeric_arrays_only(synth):
    sampler = LedgerSampler(synth, seed=1)
    next(iter(sampler))
    state = sampler.state_arrays()
    assert set(state) == {
        "seed",
        "shuffle",
        "generator_state",
        "permutation",
        "in_epoch",
        "consumed",
        "epoch",
    }
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in state.values())
    assert state["generator_state"].dtype == np.uint8 and state["permutation"].shape == (60_000,)


def test_the_permutation_handed_out_in_the_state_cannot_change_the_sampler(synth):
    """state_arrays shares the epoch's permutation without a copy, so it is read-only, and a
    loaded permutation is the sampler's own copy."""
    sampler = LedgerSampler(synth, seed=1)
    it = iter(sampler)
    head = [next(it) for _ in range(10)]
    state = sampler.state_arrays()
    with pytest.raises(ValueError, match="read-only"):
        state["permutation"][10] = -1
    assert head == state["permutation"][:10].tolist()

    given = {k: np.array(v) for k, v in state.items()}  # writable copies
    restored = LedgerSampler(synth, seed=2)
    restored.load_state_arrays(given)
    given["permutation"][:] = 0
    assert list(iter(restored)) == state["permutation"][10:].tolist() == list(it)


def test_state_saved_between_epochs_restores_the_next_epoch(synth):
    sampler = LedgerSampler(synth, seed=4)
    epoch_ids(sampler)
    state = sampler.state_arrays()
    assert not state["in_epoch"]
    expected = epoch_ids(sampler)
    restored = LedgerSampler(synth, seed=0)
    restored.load_state_arrays(state)
    assert epoch_ids(restored) == expected


def test_iterator_from_before_a_restore_refuses_to_continue(synth):
    sampler = LedgerSampler(synth, seed=4)
    state = sampler.state_arrays()
    it = iter(sampler)
    next(it)
    sampler.load_state_arrays(state)
    with pytest.raises(LedgerError, match="start a new iterator"):
        next(it)


def test_malformed_sampler_state_is_refused_and_changes_nothing(synth):
    sampler = LedgerSampler(synth, seed=4)
    next(iter(sampler))
    good = sampler.state_arrays()
    for bad in (
        {k: v for k, v in good.items() if k != "epoch"},
        {**good, "generator_state": np.zeros(3, np.uint8)},
        {**good, "permutation": np.array([0, 70_000])},
        {**good, "consumed": np.array(60_001)},
    ):
        with pytest.raises(LedgerError):
            sampler.load_state_arrays(bad)
        for k, v in sampler.state_arrays().items():
            np.testing.assert_array_equal(v, good[k])


def test_seek_sets_the_position_the_caller_trained_up_to(synth):
    sampler = LedgerSampler(synth, seed=2)
    it = iter(sampler)
    order = [next(it) for _ in range(600)]  # a prefetching loader ran ahead...
    trained_last = order[255]  # ...but training used only the first batch of 256
    sampler.seek(sampler.position_after(trained_last))
    assert next(iter(sampler)) == order[256]


def test_seek_outside_the_epoch_is_refused(synth):
    sampler = LedgerSampler(synth, seed=2)
    with pytest.raises(LedgerError, match="no epoch"):
        sampler.seek(0)
    next(iter(sampler))
    with pytest.raises(LedgerError, match=r"0\.\.60000"):
        sampler.seek(60_001)
    with pytest.raises(LedgerError, match="not in the current epoch"):
        sampler.position_after(10**9)


def test_sampler_needs_a_ledgered_dataset_and_an_integer_seed(synth):
    with pytest.raises(ConfigurationError, match="LedgeredDataset"):
        LedgerSampler(synth.wrapped, seed=0)
    with pytest.raises(ConfigurationError, match="seed"):
        LedgerSampler(synth, seed="0")


def test_workers_deliver_ids_with_the_batch_and_stats_update_in_the_main_process(synth):
    synth.denylist_samples(range(1000))
    sampler = LedgerSampler(synth, seed=0)
    loader = DataLoader(synth, batch_size=512, sampler=sampler, num_workers=2)
    seen = []
    for x, y, ids in loader:
        assert torch.equal(x, synth.wrapped.tensors[0][ids]) and torch.equal(y, synth.wrapped.tensors[1][ids])
        synth.update_batch(ids, torch.ones(len(ids)), y, y, model_age=len(seen))
        seen.append(ids)
    ids = torch.cat(seen)
    assert sorted(ids.tolist()) == list(range(1000, 60_000))
    exposure = synth.stats.exposure_amount
    assert (exposure[1000:] == 1).all() and (exposure[:1000] == 0).all()


@pytest.mark.slow
def test_spawned_workers_get_a_picklable_copy_without_statistics():
    ds = LedgeredDataset(synthetic_tensors(size=2000), "train")
    record_pass(ds, np.arange(100), model_age=0)
    loader = DataLoader(
        ds, batch_size=500, sampler=LedgerSampler(ds, seed=0), num_workers=2, multiprocessing_context="spawn"
    )
    ids = torch.cat([b[2] for b in loader])
    assert sorted(ids.tolist()) == list(range(2000))
    assert ds.stats.exposure_amount[:100].sum() == 100


def test_worker_restore_via_seek_resumes_exactly_after_the_trained_batches(synth):
    sampler = LedgerSampler(synth, seed=6)
    loader = DataLoader(synth, batch_size=256, sampler=sampler, num_workers=2)
    it = iter(loader)
    trained = [next(it)[2] for _ in range(3)]
    del it  # the workers had prefetched more batches than were trained on
    assert sampler.consumed > 3 * 256
    sampler.seek(sampler.position_after(int(trained[-1][-1])))
    state = sampler.state_arrays()
    rest = torch.cat([b[2] for b in DataLoader(synth, batch_size=256, sampler=sampler)])

    restored = LedgerSampler(synth, seed=0)
    restored.load_state_arrays(state)
    again = torch.cat([b[2] for b in DataLoader(synth, batch_size=256, sampler=restored)])
    assert torch.equal(rest, again)
    assert sorted(torch.cat([*trained, rest]).tolist()) == list(range(60_000))
