"""Bad input, table-driven: a clear error from the WeightsLabError tree, and nothing changes.

Every case of ``reliability_cases.CASES`` runs against one recorded experiment
per backend. Before and after, the whole state is fingerprinted: every state
tensor (model, optimizer, ledger, sampler, RNG), the optimizer's hyper-parameters,
which parameters train, the event log (count and last hash), and the contents
of the statistics, checkpoint, snapshot, experiment and blob tables.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from reliability_cases import CASES, Case, CliRefusal, Victim
from reliability_checks import changed_parts, fingerprint
from torch import optim

from weightslab import Experiment
from weightslab.demo import MNISTModel, digits_datasets
from weightslab.errors import WeightsLabError


@pytest.fixture(scope="module")
def victim(module_store_target, tmp_path_factory) -> Any:
    tmp = tmp_path_factory.mktemp("victim")
    train_ds, eval_ds = digits_datasets()
    torch.manual_seed(0)
    exp = Experiment(model=MNISTModel(), optimizer_class=optim.Adam, train_dataset=train_ds, eval_dataset=eval_ds,
                     device="cpu", learning_rate=1e-2, batch_size=64, name="victim", store=module_store_target,
                     tensorboard_dir=str(tmp / "tb"), progress=False)
    exp.train_n_steps(3)
    exp.eval_n_steps(1)
    exp.train_loader.dataset.deny_samples_with_predicate(lambda id, *a: id % 100 == 0)
    exp.model.layers[1].set_per_neuron_learning_rate({0}, lr=0.5)
    exp.dump()
    exp.snapshot()
    exp.train_n_steps(1)
    a_file = tmp / "a-file"
    a_file.write_text("not a store")
    v = Victim(exp, module_store_target, (train_ds, eval_ds), tmp, {"a_file": a_file})
    yield v
    exp.close()
    exp.store.close()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_clearly_and_changes_nothing(victim: Victim, case: Case) -> None:
    prepared = case.setup(victim) if case.setup else None
    before = fingerprint(victim.exp)
    with pytest.raises(Exception) as info:  # noqa: B017,PT011 - the class is checked below, with the message
        case.act(victim, prepared)
    error = info.value
    assert isinstance(error, case.error), f"expected {case.error.__name__}, got {type(error).__name__}: {error}"
    if not isinstance(error, CliRefusal):
        assert isinstance(error, WeightsLabError)
    message = str(error)
    assert re.search(case.hint, message), f"the message does not say what to do ({case.hint!r}): {message}"
    assert "Traceback" not in message
    changed = changed_parts(before, fingerprint(victim.exp))
    assert not changed, f"a refused operation changed: {changed}"


def test_the_victim_still_trains_after_every_refusal(victim: Victim) -> None:
    exp = victim.exp
    seq = exp.last_seq
    exp.train_n_steps(1)
    assert exp.last_seq == seq + 1 and exp.verify()
    assert not Path("/tmp/weightslab-pwned").exists()  # the query "injection" case ran nothing


def test_the_table_covers_every_public_surface() -> None:
    surfaces = {c.id.split("/")[0].split(".")[0] for c in CASES}
    assert surfaces == {"model", "dataset", "experiment", "store", "replay", "cli"}
    assert len(CASES) >= 150, len(CASES)


def test_a_diverging_run_is_still_recorded_and_reopens(store_target, tmp_path) -> None:
    """A learning rate that blows the loss up to NaN/inf: the events are written (loss null), replay agrees."""
    train_ds, eval_ds = digits_datasets()

    def open_it() -> Experiment:
        torch.manual_seed(0)
        return Experiment(model=MNISTModel(), optimizer_class=optim.SGD, train_dataset=train_ds,
                          eval_dataset=eval_ds, learning_rate=1e8, batch_size=64, name="diverged",
                          store=store_target, tensorboard_dir=str(tmp_path / "tb"), progress=False)

    exp = open_it()
    try:
        exp.dump()
        losses = [exp.train_n_steps(2)[0] for _ in range(3)]
        assert not all(map(np.isfinite, losses))
        exp.eval_full()
        kinds = exp.events()[["kind", "payload"]].values.tolist()
        trains = [p for k, p in kinds if k == "train"]
        assert len(trains) == 3 and any(p["loss"] is None for p in trains) and exp.verify()
    finally:
        exp.close()
        exp.store.close()
    again = open_it()
    try:
        assert again.resume_report.not_restored == [] and len(again.resume_report.replayed) == 4
    finally:
        again.close()
        again.store.close()
