"""Replicas: a stored experiment rebuilt in this process for the replay tools, never written to.

``replica(store, name)`` builds the model and data from the recipe the experiment
recorded (``"package.module:function"``) or from the caller, checks they are the
ones it was recorded with, and returns a detached :class:`~weightslab.Experiment`;
``replay_to(rep, seq)`` rebuilds and verifies the state at any seq.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

import torch

from weightslab.errors import ReplayError
from weightslab.experiment.experiment import Experiment
from weightslab.experiment.replay import ReplayOutcome
from weightslab.history.store import Store

__all__ = ["load_recipe", "replay_to", "replica"]

_RECIPE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def load_recipe(recipe: str) -> tuple[Any, Any, Any]:
    """Import ``"package.module:function"`` and call it: it returns (model, train_dataset, eval_dataset).

    Raises:
        ReplayError: malformed name, import failure, or a function that returns something else.
    """
    if not isinstance(recipe, str) or not _RECIPE.match(recipe):
        raise ReplayError(f"recipe {recipe!r} is not of the form 'package.module:function'")
    module_name, func_name = recipe.split(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as e:
        raise ReplayError(f"cannot import recipe {recipe!r}: {e}. Install the package that defines it, "
                          "or pass --recipe with another one") from e
    built = func()
    if not (isinstance(built, tuple) and len(built) == 3):
        raise ReplayError(f"recipe {recipe!r} must return (model, train_dataset, eval_dataset), got {type(built)}")
    return built


def _optimizer_class(qualified: str) -> type[torch.optim.Optimizer]:
    module_name, _, cls_name = qualified.rpartition(".")
    if not module_name.startswith("torch.optim"):
        raise ReplayError(f"the experiment used optimizer {qualified}; pass optimizer_class= to replay it")
    cls = getattr(importlib.import_module(module_name), cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ReplayError(f"optimizer {qualified} is not available in this torch")
    return cls


def replica(store: Any, name: str, *, model: Any = None, train_dataset: Any = None, eval_dataset: Any = None,
            recipe: str | None = None, device: str = "cpu",
            optimizer_class: type[torch.optim.Optimizer] | None = None, force: bool = False,
            step: Any = None) -> Experiment:
    """A detached, read-only copy of a stored experiment's runtime, for replay.

    The model and datasets come from the caller, or from ``recipe`` (default: the recorded one). A store
    given by location is opened read-only, so a database role that may only read can replay, query
    (``rep.sql(...)``) and list a history; nothing is ever written through a replica. ``force``: replay
    events recorded with another torch version or device (see :class:`~weightslab.Experiment`). The
    training options (grad clipping, accumulation, amp, scheduler) are the recorded ones; ``step``: the
    function to use for a recorded custom step that cannot be imported here.

    Raises:
        UnknownExperimentError: no such experiment.
        ReplayError: no recipe recorded or given, or one that cannot be imported.
        ConfigurationError: data or optimizer other than those recorded.

    Example:
        >>> rep = replica("./store", "x0")
        >>> replay_to(rep).ok
        True
    """
    store = store if isinstance(store, Store) else Store.open(store, create=False, read_only=True)
    row = store.get_experiment(name)
    recorded = row.config
    if model is None:
        recipe = recipe or row.recipe
        if not recipe:
            raise ReplayError(f"experiment {name!r} recorded no recipe: pass the model and datasets, or a recipe "
                              "('package.module:function')")
        model, train_dataset, eval_dataset = load_recipe(recipe)
    cfg = recorded.get("config", {})
    exp = Experiment(
        model, optimizer_class or _optimizer_class(recorded["optimizer_class"]), train_dataset, eval_dataset,
        device=device, learning_rate=cfg["learning_rate"], batch_size=cfg["batch_size"], name=name, store=store,
        seed=cfg["seed"], eval_every=cfg.get("eval_every"), eval_batch_size=cfg.get("eval_batch_size"),
        num_workers=cfg.get("num_workers", 0), optimizer_kwargs=cfg.get("optimizer_kwargs"), progress=False,
        force=force, step=step if step is not None else cfg.get("step"), grad_clip=cfg.get("grad_clip"),
        accumulate=cfg.get("accumulate", 1), amp=cfg.get("amp"), scheduler=cfg.get("scheduler"),
        compile=cfg.get("compile") if cfg.get("compile") is not None else False, _replica=True,
    )
    return exp


def replay_to(exp: Experiment, seq: int | None = None, *, from_start: bool = False) -> ReplayOutcome:
    """Rebuild ``exp`` (a replica) at event ``seq`` (default: the last): nearest recorded state, then replay.

    Raises:
        ReplayError: ``seq`` outside the log (the message gives the range).
    """
    return exp.replay_to(seq, from_start=from_start)
