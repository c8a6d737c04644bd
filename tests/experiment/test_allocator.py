"""glibc's malloc thresholds are raised once per process when the user asks (``weightslab.tune_malloc()`` or
``WEIGHTSLAB_TUNE_MALLOC=1``), unless that is not WeightsLab's choice; an Experiment alone leaves malloc alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from weightslab.experiment.allocator import (
    MMAP_THRESHOLD,
    OPT_OUT,
    TRIM_THRESHOLD,
    _glibc_version,
    _tune,
    decide,
)

GLIBC = "2.36"

# A fresh process builds a small Experiment, then allocates and frees a 48 MiB tensor again and again
# and counts the page faults of the last four times. 48 MiB is above glibc's adaptive mmap ceiling
# (32 MiB), so by default every request is a fresh mapping that faults all its 12,288 pages in again.
# Tuned, the heap serves it: it grows for the first few requests (each 64-byte-aligned request needs a
# little more than the exact hole the last one left) until the holes join, then reuses them.
_PROBE = textwrap.dedent("""
    import json, resource, sys
    import torch
    from torch import optim
    from torch.utils.data import TensorDataset
    import weightslab
    from weightslab import Experiment
    from weightslab.demo import MNISTModel

    if sys.argv[2] == "call":
        weightslab.tune_malloc()
    ds = TensorDataset(torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,)))
    exp = Experiment(model=MNISTModel(), optimizer_class=optim.Adam, train_dataset=ds, eval_dataset=ds,
                     batch_size=32, name="alloc", store=sys.argv[1], progress=False)
    exp.train_n_steps(1)

    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    for _ in range(12):
        x = torch.ones(12 << 20)
        del x
    before = faults()
    for _ in range(4):
        x = torch.ones(12 << 20)
        del x
    print(json.dumps({"applied": exp.allocator.applied, "reason": exp.allocator.reason,
                      "faults": faults() - before}))
    exp.close()
""")


needs_glibc = pytest.mark.skipif(_glibc_version() is None, reason="glibc's malloc only (this C library is not glibc)")


def _probe(tmp_path: Path, *, call: bool = False, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "LD_PRELOAD", OPT_OUT)}
    done = subprocess.run([sys.executable, "-c", _PROBE, str(tmp_path / "store"), "call" if call else "no"],
                          capture_output=True, text=True,
                          env={**clean, **env}, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@needs_glibc
def test_an_experiment_alone_leaves_malloc_alone(tmp_path: Path) -> None:
    default = _probe(tmp_path)
    assert not default["applied"]
    assert "tune_malloc" in default["reason"] and OPT_OUT in default["reason"]  # says how to ask for it
    assert default["faults"] > 4 * 12_288 * 0.9  # glibc maps and faults in every page of every request


@needs_glibc
@pytest.mark.parametrize("how", ["call", "environment"])
def test_asked_for_it_makes_freed_tensor_memory_reusable_without_faulting_it_back_in(tmp_path: Path,
                                                                                     how: str) -> None:
    tuned = _probe(tmp_path, call=True) if how == "call" else _probe(tmp_path, **{OPT_OUT: "1"})
    assert tuned["applied"], tuned["reason"]
    assert f"mmap threshold {MMAP_THRESHOLD >> 20} MiB" in tuned["reason"]
    assert tuned["faults"] < 2_000  # four 48 MiB tensors reuse the heap: next to no new pages


@needs_glibc
def test_opting_out_wins_over_an_explicit_call(tmp_path: Path) -> None:
    default = _probe(tmp_path, call=True, **{OPT_OUT: "0"})
    assert not default["applied"]
    assert OPT_OUT in default["reason"]
    assert default["faults"] > 4 * 12_288 * 0.9  # every page of every request faulted in again


@needs_glibc
def test_thresholds_the_user_set_in_the_environment_are_kept(tmp_path: Path) -> None:
    mine = _probe(tmp_path, call=True, MALLOC_TRIM_THRESHOLD_="131072", MALLOC_MMAP_THRESHOLD_="131072")
    assert not mine["applied"]
    assert "MALLOC_MMAP_THRESHOLD_" in mine["reason"] and "MALLOC_TRIM_THRESHOLD_" in mine["reason"]
    assert mine["faults"] > 4 * 12_288 * 0.9  # the user's 128 KiB threshold still maps every request


@pytest.mark.parametrize(("environ", "glibc", "says"), [
    ({OPT_OUT: "0"}, GLIBC, OPT_OUT),
    ({OPT_OUT: "off"}, GLIBC, OPT_OUT),
    ({}, None, "not glibc"),
    ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, GLIBC, "jemalloc is preloaded"),
    ({"LD_PRELOAD": "libtcmalloc_minimal.so.4"}, GLIBC, "tcmalloc is preloaded"),
    ({"MALLOC_TOP_PAD_": "0"}, GLIBC, "MALLOC_TOP_PAD_"),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, GLIBC, "glibc.malloc.trim_threshold"),
])
def test_the_allocator_is_left_alone_where_the_choice_is_not_weightslabs(environ: dict, glibc: str | None,
                                                                         says: str) -> None:
    calls: list[tuple[int, int]] = []
    result = _tune(environ, glibc, lambda: lambda option, value: calls.append((option, value)) or 1)
    assert not result.applied
    assert says in result.reason
    assert calls == []  # mallopt never called


def test_other_environment_settings_do_not_stop_the_tuning() -> None:
    assert decide({OPT_OUT: "1", "MALLOC_ARENA_MAX": "2", "LD_PRELOAD": "libfoo.so",
                   "GLIBC_TUNABLES": "glibc.pthread.rseq=0"}, GLIBC) is None


def test_an_older_glibc_that_caps_the_mmap_threshold_gets_its_cap_and_twice_that_as_trim_threshold() -> None:
    calls: list[tuple[int, int]] = []

    def capped(option: int, value: int) -> int:
        calls.append((option, value))
        return 0 if option == -3 and value > 32 << 20 else 1

    result = _tune({}, "2.31", lambda: capped)
    assert result.applied
    assert calls == [(-3, MMAP_THRESHOLD), (-3, 32 << 20), (-1, 64 << 20)]
    assert "mmap threshold 32 MiB, trim threshold 64 MiB" in result.reason


def test_a_refused_mmap_threshold_changes_nothing_else() -> None:
    calls: list[tuple[int, int]] = []
    result = _tune({}, GLIBC, lambda: lambda option, value: calls.append((option, value)) and 0)
    assert not result.applied
    assert "refused" in result.reason
    assert all(option == -3 for option, _ in calls)  # the trim threshold was never touched


def test_the_default_thresholds_follow_glibcs_own_ratio() -> None:
    assert TRIM_THRESHOLD == 2 * MMAP_THRESHOLD > 32 << 20
