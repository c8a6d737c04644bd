"""glibc's malloc thresholds, set once per process so CPU training steps reuse their memory.

PyTorch's CPU tensors come straight from ``malloc``. glibc serves a request above its
*mmap threshold* with a fresh ``mmap`` and gives the heap's free top back to the kernel
once it exceeds the *trim threshold*; both thresholds adapt upwards, to at most 32 / 64 MiB,
as large blocks are freed. A training step allocates and frees the same activations,
gradients and optimizer temporaries every time, so whether it reuses that memory or
faults it back in page by page (~20k pages a step on a ResNet-18 at batch 64: 10–15 %
of the step on a 2-core CPU) depends on where earlier allocations happened to land.

:func:`tune_malloc` raises both thresholds (``mallopt``) so the memory a step frees is
kept for the next one: blocks of up to :data:`MMAP_THRESHOLD` come from the heap, and
its top is trimmed only when more than :data:`TRIM_THRESHOLD` are free. The process
then keeps its peak heap instead of returning it between steps; nothing else changes
(results are bit-identical). PyTorch's own CPU launcher (``torch.backends.xeon.run_cpu``)
changes the allocator for the same reason.

It is opt-in: a process-wide change is the user's to make (``weightslab.tune_malloc()``, or
``WEIGHTSLAB_TUNE_MALLOC=1`` for every Experiment). Even then it does nothing, and says why,
where the choice is not WeightsLab's to make: not glibc, another allocator preloaded, malloc
thresholds already set in the environment, or ``WEIGHTSLAB_TUNE_MALLOC=0``.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["MMAP_THRESHOLD", "OPT_OUT", "TRIM_THRESHOLD", "MallocTuning", "decide", "for_experiment", "tune_malloc"]

#: Requests up to this size are served from the heap (glibc's adaptive ceiling is 32 MiB).
MMAP_THRESHOLD = 128 << 20
#: The heap's free top is given back to the kernel only above this (twice the mmap threshold, as glibc does).
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD
#: ``1`` makes every Experiment call :func:`tune_malloc`; ``0`` makes :func:`tune_malloc` leave malloc alone.
OPT_OUT = "WEIGHTSLAB_TUNE_MALLOC"
_YES, _NO = ("1", "true", "yes", "on"), ("0", "false", "no", "off")

_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_MMAP_THRESHOLD = -3
_GLIBC_CAP = 32 << 20  # the most an older glibc accepts as mmap threshold

# What the user may already have chosen: any of these turns glibc's adaptive thresholds off.
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_MALLOC_TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold", "glibc.malloc.top_pad",
                    "glibc.malloc.mmap_max")
_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc", "hoard", "snmalloc")


@dataclass(frozen=True)
class MallocTuning:
    """What :func:`tune_malloc` did: ``applied``, and in ``reason`` what or why not."""

    applied: bool
    reason: str


_lock = threading.Lock()
_done: MallocTuning | None = None


def _glibc_version() -> str | None:
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.36"; absent or None elsewhere
    except (AttributeError, ValueError, OSError):
        return None
    return text.split()[-1] if text and text.startswith("glibc") else None


def _mallopt() -> Callable[[int, int], int]:
    return ctypes.CDLL(None).mallopt  # the process's malloc: glibc's, checked before


def decide(environ: Mapping[str, str], glibc: str | None) -> str | None:
    """Why the allocator must be left alone (``None``: it may be tuned). Pure, for the tests."""
    if environ.get(OPT_OUT, "").strip().lower() in _NO:
        return f"{OPT_OUT}={environ[OPT_OUT]}: left as it is"
    if glibc is None:
        return "not glibc's malloc: left as it is"
    preload = environ.get("LD_PRELOAD", "").lower()
    other = next((name for name in _OTHER_ALLOCATORS if name in preload), None)
    if other is not None:
        return f"{other} is preloaded (LD_PRELOAD): left as it is"
    chosen = [name for name in _MALLOC_ENV if name in environ]
    tunables = environ.get("GLIBC_TUNABLES", "")
    chosen += [name for name in _MALLOC_TUNABLES if name in tunables]
    if chosen:
        return f"the environment sets {', '.join(chosen)}: left as it is"
    return None


def tune_malloc() -> MallocTuning:
    """Raise glibc's mmap and trim thresholds for this process, once (see the module's text).

    A process-wide change, so a library does not make it on its own: call it at the start of a
    training script (``weightslab.tune_malloc()``), or set ``WEIGHTSLAB_TUNE_MALLOC=1`` and every
    :class:`~weightslab.Experiment` calls it. Later calls return the first call's result.

    Example:
        >>> weightslab.tune_malloc().applied
        True
    """
    global _done
    with _lock:
        if _done is None:
            _done = _tune(os.environ, _glibc_version(), _mallopt)
        return _done


def for_experiment(environ: Mapping[str, str] | None = None) -> MallocTuning:
    """What an Experiment reports as ``exp.allocator``: it tunes malloc only when ``WEIGHTSLAB_TUNE_MALLOC=1``,
    else it reports what an earlier :func:`tune_malloc` call did, or that nobody asked."""
    env = os.environ if environ is None else environ
    if env.get(OPT_OUT, "").strip().lower() in _YES:
        return tune_malloc()
    with _lock:
        if _done is not None:
            return _done
    return MallocTuning(False, f"not requested: call weightslab.tune_malloc() or set {OPT_OUT}=1")


def _tune(environ: Mapping[str, str], glibc: str | None,
          mallopt: Callable[[], Callable[[int, int], int]]) -> MallocTuning:
    why_not = decide(environ, glibc)
    if why_not is not None:
        return MallocTuning(False, why_not)
    try:
        fn = mallopt()
        # The mmap threshold first (older glibc caps it at 32 MiB and refuses more, changing
        # nothing); once it is set glibc's adaptive thresholds are off, so the trim threshold follows.
        mmap = next((v for v in (MMAP_THRESHOLD, _GLIBC_CAP) if fn(_M_MMAP_THRESHOLD, v) == 1), None)
        if mmap is None:
            return MallocTuning(False, f"glibc {glibc} refused mallopt: left as it is")
        trim = 2 * mmap
        if fn(_M_TRIM_THRESHOLD, trim) != 1:
            return MallocTuning(False, f"glibc {glibc} refused the trim threshold (mmap threshold set to "
                                       f"{mmap >> 20} MiB)")
    except (OSError, AttributeError) as e:
        return MallocTuning(False, f"mallopt is not available ({e}): left as it is")
    return MallocTuning(True, f"glibc {glibc}: mmap threshold {mmap >> 20} MiB, trim threshold {trim >> 20} MiB")
