"""Capture and restore an experiment's whole state as named tensors (+ a little JSON).

Names: ``model/<state_dict key>``, ``optim/<param index>/<key>``,
``ledger/<split>/<column>``, ``sampler/<split>/<key>``, ``rng/<key>``.
The JSON part holds what is not a tensor: optimizer hyper-parameters and
non-tensor state values, the architecture, the model age.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from weightslab.errors import IntegrityError, WeightsLabError
from weightslab.events.codec import normalise
from weightslab.experiment.rng import capture_rng, restore_rng
from weightslab.experiment.state import to_tensor

if TYPE_CHECKING:
    from weightslab.experiment.runtime import Runtime

__all__ = ["capture", "restore"]


def capture(rt: Runtime, *, rng: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """All state tensors of the runtime (live references, not copies) and the JSON part."""
    tensors: dict[str, torch.Tensor] = {}
    for k, v in rt.model.state_dict(keep_vars=False).items():
        tensors[f"model/{k}"] = v
    sd = rt.optimizer.state_dict()
    scalars: dict[str, Any] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim/{idx}/{k}"] = v
            else:
                scalars[f"{idx}/{k}"] = v
    groups, tuple_keys = [], set()
    for g in sd["param_groups"]:
        clean = {}
        for k, v in g.items():
            if isinstance(v, tuple):
                tuple_keys.add(k)
                v = list(v)
            clean[k] = v
        groups.append(clean)
    tensors.update(_data_tensors(rt, rng=rng))
    meta = {
        "optimizer": {"class": type(rt.optimizer).__name__, "param_groups": groups,
                      "tuple_keys": sorted(tuple_keys), "scalars": scalars},
        "architecture": rt.widths(),
        "model_age": rt.model_age,
    }
    if rt.fingerprint_version >= 2:  # the JSON part a version-2 fingerprint covers (history/manifest.py)
        meta.update(fingerprint=rt.fingerprint_version, **_training_meta(rt))
    return tensors, meta


def _data_tensors(rt: Runtime, *, rng: bool = True) -> dict[str, torch.Tensor]:
    """The ledger, sampler and RNG parts of the state (fresh arrays, not views of the live ones)."""
    tensors: dict[str, torch.Tensor] = {}
    for split in rt.splits:
        for k, v in split.ledger.state_arrays().items():
            tensors[f"ledger/{split.name}/{k}"] = to_tensor(v)
        for k, v in split.sampler.state_arrays().items():
            tensors[f"sampler/{split.name}/{k}"] = to_tensor(v)
    if rng:
        for k, v in capture_rng().items():
            tensors[f"rng/{k}"] = v
    return tensors


def _training_meta(rt: Runtime) -> dict[str, Any]:
    """The batch size and the scheduler's and grad scaler's states (what :func:`_apply_training` restores)."""
    return {"batch_size": rt.config.batch_size,
            "scheduler": normalise(rt.scheduler.state_dict(), "scheduler") if rt.scheduler else None,
            "scaler": dict(rt.scaler.state_dict()) if rt.scaler is not None else None}


def restore(rt: Runtime, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Put the runtime into the captured state: widths, weights, optimizer, ledgers, samplers, RNG.

    The optimizer object and the Parameter objects stay the same. All or nothing: a
    state that cannot be restored (tensors that do not fit together, e.g. a damaged or
    forged checkpoint) raises IntegrityError and leaves it as it was.

    What the undo keeps costs little: loading an optimizer state replaces its tensors
    (the old ones are kept by reference), ledger, sampler and RNG states are small
    copies. Only the model's values are overwritten in place, so they are copied, and
    the model checked to run, just when some shape changes; when every shape is the
    same the model goes last, after everything that could fail, and cannot fail itself.
    """
    opt_meta = meta["optimizer"]
    if opt_meta["class"] != type(rt.optimizer).__name__:
        raise IntegrityError(
            f"the state was recorded with optimizer {opt_meta['class']}, this experiment uses "
            f"{type(rt.optimizer).__name__}; reopen it with optimizer_class={opt_meta['class']}"
        )
    model_sd = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    live = rt.model.state_dict()
    reshaping = live.keys() != model_sd.keys() or any(
        tuple(live[k].shape) != tuple(v.shape) for k, v in model_sd.items())
    saved_model = {k: v.detach().clone() for k, v in live.items()} if reshaping else None
    saved_optimizer = rt.optimizer.state_dict()  # load_state_dict swaps these tensors out, never writes them
    saved_rest, saved_meta = _data_tensors(rt), _training_meta(rt)  # fresh copies
    try:
        optimizer_sd = _optimizer_state_dict(tensors, opt_meta)
        if reshaping:
            _apply_model(rt, model_sd)
            rt.optimizer.load_state_dict(optimizer_sd)
            _apply_data(rt, tensors)
            _apply_training(rt, meta)
            rt.probe_criterion()  # the resized model must still run: widths that do not chain fail here
        else:
            rt.optimizer.load_state_dict(optimizer_sd)
            _apply_data(rt, tensors)
            _apply_training(rt, meta)
            _apply_model(rt, model_sd)  # same keys and shapes: an in-place copy that cannot fail
    except Exception as error:  # noqa: BLE001 - whatever failed, put the previous state back, then say so
        if saved_model is not None:
            _apply_model(rt, saved_model)
        rt.optimizer.load_state_dict(saved_optimizer)
        _apply_data(rt, saved_rest)
        _apply_training(rt, saved_meta)
        if isinstance(error, WeightsLabError):
            raise
        raise IntegrityError(
            f"the recorded state cannot be restored ({type(error).__name__}: {error}); nothing was changed. "
            "The checkpoint is damaged or belongs to another model: load another one"
        ) from error


def _apply_model(rt: Runtime, model_sd: dict[str, torch.Tensor]) -> None:
    rt.model.load_state_resizing({k: v.to(rt.device) for k, v in model_sd.items()})


def _optimizer_state_dict(tensors: dict[str, torch.Tensor], opt_meta: dict[str, Any]) -> dict[str, Any]:
    """The optimizer's ``state_dict`` from its tensors and JSON part (pure: nothing is changed)."""
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim/"):
            _, idx, key = k.split("/", 2)
            state.setdefault(int(idx), {})[key] = v
    for k, v in opt_meta["scalars"].items():
        idx, key = k.split("/", 1)
        state.setdefault(int(idx), {})[key] = v
    groups = []
    for g in opt_meta["param_groups"]:
        groups.append({k: tuple(v) if k in opt_meta["tuple_keys"] else v for k, v in g.items()})
    return {"state": state, "param_groups": groups}


def _apply_training(rt: Runtime, meta: dict[str, Any]) -> None:
    """The scheduler's and the grad scaler's state, and the batch size (states recorded before fingerprint
    version 2 hold none of them: what is live stays)."""
    if meta.get("scheduler") is not None and rt.scheduler is not None:
        rt.scheduler.load_state_dict(meta["scheduler"])
    if meta.get("scaler") is not None and rt.scaler is not None:
        rt.scaler.load_state_dict(meta["scaler"])
    if meta.get("batch_size") is not None and meta["batch_size"] != rt.config.batch_size:
        rt.set_batch_size(int(meta["batch_size"]))


def _apply_data(rt: Runtime, tensors: dict[str, torch.Tensor]) -> None:
    """Ledgers, samplers and RNG (each loader checks its input before it changes anything)."""
    for split in rt.splits:
        ledger = {k.split("/", 2)[2]: v.numpy() for k, v in tensors.items()
                  if k.startswith(f"ledger/{split.name}/")}
        split.ledger.load_state_arrays(ledger)
        samp = {k.split("/", 2)[2]: np.asarray(v.numpy()) for k, v in tensors.items()
                if k.startswith(f"sampler/{split.name}/")}
        split.sampler.load_state_arrays(samp)
    rng = {k[len("rng/"):]: v for k, v in tensors.items() if k.startswith("rng/")}
    if rng:
        restore_rng(rng)
