"""Property: any sequence of deny/allow operations is re-created exactly from its records."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ledger_helpers import assert_same_state

from weightslab.errors import LedgerError
from weightslab.ledger import LedgeredDataset

N = 300
ids_st = st.sets(st.integers(0, N - 1), max_size=N)
op_st = st.one_of(
    st.tuples(st.just("deny_ids"), ids_st),
    st.tuples(st.just("allow_ids"), ids_st),
    st.tuples(st.just("allow_all"), st.none()),
    st.tuples(st.just("deny_where"), st.floats(0, 3)),
    st.tuples(st.just("deny_predicate"), st.floats(0, 3)),
    st.tuples(st.just("sampled"), st.tuples(st.floats(0, 3), st.floats(0, 2), st.integers(0, 2**62))),
)


def _ledger() -> LedgeredDataset:
    g = torch.Generator().manual_seed(0)
    ds = LedgeredDataset(
        torch.utils.data.TensorDataset(torch.zeros(N, 1), torch.randint(0, 3, (N,), generator=g)), "train"
    )
    ids = torch.arange(N - 50)  # the last 50 never seen
    ds.update_batch(ids, torch.rand(len(ids), generator=g) * 3, ids % 3, ds.wrapped.tensors[1][ids], 0)
    return ds


def _apply(ds: LedgeredDataset, op: str, arg) -> None:
    if op == "deny_ids":
        ds.denylist_samples(arg)
    elif op == "allow_ids":
        ds.allowlist_samples(arg)
    elif op == "allow_all":
        ds.allowlist_samples(None)
    elif op == "deny_where":
        ds.deny_samples_where(f"prediction_loss <= {arg!r}")
    elif op == "deny_predicate":
        ds.deny_samples_with_predicate(lambda id, age, loss, times, denied, pred, label: loss <= arg)
    else:
        threshold, factor, seed = arg
        ds.deny_samples_and_sample_allowed_with_predicate(
            lambda id, age, loss, times, denied, pred, label: loss <= threshold,
            allow_to_denied_factor=factor,
            seed=seed,
        )


@settings(max_examples=60, deadline=None)
@given(st.lists(op_st, max_size=8))
def test_replaying_recorded_ids_recreates_the_deny_mask_and_refusals_change_nothing(ops):
    ds = _ledger()
    records: list = []
    ds.add_observer(records.append)
    for op, arg in ops:
        before, n_records = ds.state_arrays(), len(records)
        try:
            _apply(ds, op, arg)
        except LedgerError:
            assert_same_state(before, ds.state_arrays())
            assert len(records) == n_records
        else:
            assert len(records) == n_records + 1
            assert records[-1].result["changed"] == int((before["deny_listed"] != ds.stats.deny_listed).sum())
        assert not ds.stats.deny_listed.all()
    replayed = _ledger()
    for r in records:
        replayed.apply_recorded(r.kind, r.args)
    np.testing.assert_array_equal(replayed.stats.deny_listed, ds.stats.deny_listed)
