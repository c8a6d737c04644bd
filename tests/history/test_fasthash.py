"""The fast state digest: one definition, the same on numpy and in torch ops, every single-bit change seen."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from weightslab.experiment.state import _device_lanes, fast_digest, fast_digests
from weightslab.history import fasthash
from weightslab.history.tensorcodec import encode_tensor

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int8,
          torch.uint8, torch.bool]


def _tensor(dtype: torch.dtype, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(n, generator=g) > 0.5
    if dtype.is_floating_point:
        return torch.randn(n, generator=g).to(dtype)
    return torch.randint(-100 if dtype.is_signed else 0, 100, (n,), generator=g, dtype=dtype)


def test_the_algorithm_is_fixed_for_good_stores_depend_on_these_values():
    # Recorded fingerprints are compared with digests computed later, by later versions: never change these.
    assert fasthash.digest_bytes(np.arange(3000, dtype=np.int32)) == "ac6b06dd58e8da01ac3caf66dbb6ff49"
    assert fasthash.digest_bytes(b"weightslab") == "1aaaeca8bd220fbfc6583b83d56f3929"
    assert fasthash.digest_bytes(b"") == "0" * 32


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from(DTYPES), n=st.integers(0, 3 * fasthash.BLOCK + 7), seed=st.integers(0, 2**16))
def test_torch_ops_on_a_device_give_the_digest_numpy_gives_on_the_host(dtype, n, seed):
    t = _tensor(dtype, n, seed)
    host = fasthash.lanes(t.reshape(-1).view(torch.uint8).numpy()) if n else (0, 0)
    assert _device_lanes(t) == host


@settings(max_examples=200, deadline=None)
@given(dtype=st.sampled_from(DTYPES), n=st.integers(1, 2 * fasthash.BLOCK + 3), seed=st.integers(0, 2**16),
       where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_any_single_flipped_bit_changes_both_lanes(dtype, n, seed, where, bit):
    t = _tensor(dtype, n, seed)
    raw = t.reshape(-1).view(torch.uint8).numpy()
    flipped = raw.copy()
    flipped[int(where * len(raw))] ^= 1 << bit
    a, b = fasthash.lanes(raw), fasthash.lanes(flipped)
    assert a[0] != b[0] and a[1] != b[1]


def test_dtype_shape_and_length_are_part_of_the_digest():
    zeros = [torch.zeros(4), torch.zeros(4, dtype=torch.int32), torch.zeros(2, 2), torch.zeros(5), torch.zeros(0),
             torch.zeros(8, dtype=torch.float16)]
    digests = [fast_digest(t) for t in zeros]
    assert len(set(digests)) == len(zeros)  # all-zero bytes everywhere: only the description differs


def test_a_tensor_blob_digests_like_the_live_tensor_whatever_its_layout():
    t = torch.randn(37, 129)
    for view in (t, t.t(), t[:, 3:90:2], t.to(torch.bfloat16)):
        assert fasthash.encoded_tensor_digest(encode_tensor(view)) == fast_digest(view)


def test_many_tensors_on_threads_digest_like_one_at_a_time():
    tensors = {f"t{i}": torch.randn(1000 * (i + 1)) for i in range(40)}
    tensors["big"] = torch.randn(3_000_000)  # past the threshold where the work is spread over threads
    assert fast_digests(tensors) == {k: fast_digest(v) for k, v in tensors.items()}


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(0, fasthash.SMALL), min_size=1, max_size=12), seed=st.integers(0, 2**16))
def test_small_items_in_one_vectorised_pass_have_the_lanes_of_one_at_a_time(lengths, seed):
    rng = np.random.default_rng(seed)
    items = [rng.integers(0, 256, n, dtype=np.uint8) for n in lengths]
    assert fasthash.lanes_of_small(items) == [fasthash.lanes(x) for x in items]


def test_a_state_of_small_tensors_of_every_dtype_and_layout_digests_like_one_at_a_time():
    base = torch.randn(6, 7)
    tensors = {f"{dtype}": _tensor(dtype, 300, 1) for dtype in DTYPES}
    tensors.update(scalar=torch.tensor(3.5), empty=torch.zeros(0), strided=base.t(), step=base[:, 2:5:2],
                   one_of_two=torch.arange(4.0)[::2][:1], full_block=torch.randn(fasthash.BLOCK * 2),
                   past_a_block=torch.randn(fasthash.BLOCK * 2 + 1))
    assert list(fast_digests(tensors)) == list(tensors)  # the state's order is kept
    assert fast_digests(tensors) == {k: fast_digest(v) for k, v in tensors.items()}


def test_small_items_past_one_block_are_refused():
    with pytest.raises(ValueError, match="at most"):
        fasthash.lanes_of_small([np.zeros(fasthash.SMALL + 1, np.uint8)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_on_cuda_the_digest_is_computed_there_and_equals_the_cpu_one():
    t = torch.randn(3, 5000, dtype=torch.float32)
    assert fast_digest(t.cuda()) == fast_digest(t)
