"""Training the way researchers do — a custom step, mixed precision, clipping, accumulation, schedulers,
hyper-parameters set between calls, a hand-written loop — recorded, and replayed bit-exactly from the start."""

from __future__ import annotations

import pytest
import torch
from reliability.reliability_checks import changed_parts, fingerprint
from torch import optim

from weightslab.demo import MNISTModel
from weightslab.errors import ConfigurationError
from weightslab.events.domain import HyperparametersSet, StepsTrained
from weightslab.experiment.replica import replay_to, replica
from weightslab.experiment.state import tensor_hashes
from weightslab.history.lineage import Lineage
from weightslab.history.log import walk


def _session(exp) -> None:
    """Training around every kind of edit, a dump, a load and more training."""
    exp.train_n_steps(3)
    exp.model.prune(layer_index=1, neuron_indices={0})
    exp.model.add_neurons(layer_index=0, neuron_count=2)
    exp.model.reinit_neurons(layer_index=0, neuron_indices={1}, perturbation_ratio=0.2)
    exp.train_loader.dataset.deny_samples_where("sample_id % 5 == 0")
    exp.train_n_steps(3)
    cid = exp.dump()
    exp.train_n_steps(2)
    exp.eval_n_steps(1)
    exp.load(checkpoint_id=cid)
    exp.train_n_steps(3)


def _replays_to_the_live_state(exp, digits) -> None:
    train_ds, eval_ds = digits
    rep = replica(exp.store, exp.name, model=MNISTModel(), train_dataset=train_ds, eval_dataset=eval_ds)
    outcome = replay_to(rep, from_start=True)
    assert outcome.ok, outcome
    assert tensor_hashes(rep.capture()[0]) == tensor_hashes(exp.capture()[0])


OPTIONS = {
    "bf16": dict(amp="bf16"),
    "fp16+scaler": dict(amp="fp16"),
    "clip-norm": dict(grad_clip=0.5),
    "clip-value": dict(grad_clip=("value", 0.01)),
    "accumulate-3": dict(accumulate=3),
    "steplr-per-epoch": dict(scheduler=(optim.lr_scheduler.StepLR, {"step_size": 1, "gamma": 0.5}, "epoch"),
                             batch_size=256),
    "onecycle-per-batch": dict(scheduler=(optim.lr_scheduler.OneCycleLR, {"max_lr": 0.05, "total_steps": 40},
                                          "batch")),
    "custom-step": dict(step="custom_steps:label_smoothing_step"),
}


@pytest.mark.parametrize("store_target", ["sqlite"], indirect=True)  # the options do not touch the store
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_each_option_trains_survives_edits_and_replays_bit_exactly(option, make_exp, digits):
    exp = make_exp(f"opt-{option}", **OPTIONS[option])
    _session(exp)
    _replays_to_the_live_state(exp, digits)


def test_all_options_together_on_both_backends(make_exp, digits):
    exp = make_exp("all-options", amp="fp16", grad_clip=1.0, accumulate=2, step="custom_steps:label_smoothing_step",
                   scheduler=(optim.lr_scheduler.OneCycleLR, {"max_lr": 0.05, "total_steps": 40}, "batch"))
    _session(exp)
    _replays_to_the_live_state(exp, digits)


def test_the_scaler_and_scheduler_state_live_in_checkpoints_and_fingerprints(make_exp):
    exp = make_exp("states", amp="fp16",
                   scheduler=(optim.lr_scheduler.StepLR, {"step_size": 2, "gamma": 0.5}, "batch"))
    exp.train_n_steps(5)
    cid = exp.dump()
    lr, scale = exp.optimizer.param_groups[0]["lr"], exp.capture()[1]["scaler"]["scale"]
    meta_digest = exp.events()["payload"].iloc[-1]["state"]["meta"]
    exp.train_n_steps(5)
    assert exp.optimizer.param_groups[0]["lr"] < lr  # the scheduler stepped
    assert exp.events()["payload"].iloc[-1]["state"]["meta"] != meta_digest  # and the fingerprint says so
    exp.load(checkpoint_id=cid)
    assert exp.optimizer.param_groups[0]["lr"] == lr and exp.capture()[1]["scaler"]["scale"] == scale


def test_hyperparameters_set_between_calls_are_events_and_replay(make_exp, digits):
    exp = make_exp("hyper", optimizer_class=optim.SGD, optimizer_kwargs={"momentum": 0.9})
    exp.train_n_steps(3)
    exp.set_hyperparameters(learning_rate=0.05, momentum=0.5, weight_decay=1e-4, batch_size=128)
    exp.train_n_steps(3)
    group = exp.optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.05, 0.5, 1e-4)
    assert exp.train_loader.batch_size == 128
    log = walk(exp.store, "hyper")
    event = next(e.event for e in log if isinstance(e.event, HyperparametersSet))
    assert event.values() == {"learning_rate": 0.05, "weight_decay": 1e-4, "momentum": 0.5, "batch_size": 128}
    assert "set learning_rate 0.05" in str(Lineage.of(log).render_text())
    assert list(exp.events()["kind"]).count("set_hyperparameters") == 1
    last = log.entries[-1].event
    assert isinstance(last, StepsTrained) and last.samples == 3 * 128
    _replays_to_the_live_state(exp, digits)


@pytest.mark.parametrize(("values", "says"), [
    ({"learning_rate": -1.0}, "learning_rate must be > 0"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"dropout": 0.1}, "unknown hyper-parameter 'dropout'"),
    ({}, "name at least one"),
    ({"momentum": 1.5}, "momentum must be >= 0.0 and < 1.0"),
])
def test_bad_hyperparameters_are_refused_before_anything_changes(make_exp, values, says):
    exp = make_exp("bad-hyper")
    exp.train_n_steps(2)
    before = fingerprint(exp)
    with pytest.raises(ConfigurationError, match=says):
        exp.set_hyperparameters(**values)
    assert changed_parts(before, fingerprint(exp)) == []


@pytest.mark.parametrize(("kwargs", "says"), [
    (dict(scheduler=(torch.optim.SGD, {}, "epoch")), "torch.optim.lr_scheduler class"),
    (dict(scheduler=("not a class", {}, "batch")), "cannot be imported"),
    (dict(scheduler=(optim.lr_scheduler.StepLR, {"step_size": 1})), "say when it steps"),
    (dict(amp="fp8"), "amp must be 'bf16', 'fp16' or None"),
    (dict(accumulate=0), "accumulate must be a positive integer"),
    (dict(grad_clip=-1.0), "limit must be a finite number > 0"),
    (dict(grad_clip=("l2", 1.0)), "clips the 'norm' or the 'value'"),
    (dict(step="no_such_module:step"), "cannot be imported"),
    (dict(step=42), "step must be a function"),
])
def test_bad_training_options_are_refused_at_construction(make_exp, kwargs, says):
    with pytest.raises(ConfigurationError, match=says):
        make_exp("bad-options", **kwargs)


def test_a_step_that_returns_a_scalar_is_refused_and_changes_nothing(make_exp):
    exp = make_exp("scalar", step="custom_steps:scalar_step")
    before = fingerprint(exp)
    with pytest.raises(ConfigurationError, match=r"per-sample losses of shape \(64,\)"):
        exp.train_n_steps(2)
    assert changed_parts(before, fingerprint(exp)) == []


def test_reopening_with_other_training_options_is_refused(make_exp, digits):
    exp = make_exp("reopen-options", accumulate=2)
    exp.train_n_steps(2)
    exp.close()
    with pytest.raises(ConfigurationError, match="recorded with accumulate=2, not 1"):
        make_exp("reopen-options", store=exp.store)


def _own_loop(exp, batches: int) -> None:
    optimizer, criterion = exp.optimizer, torch.nn.NLLLoss(reduction="none")
    with exp.training(**({} if batches > 2 else {"step": "custom_steps:plain_step"})) as loop:
        for i, (inputs, labels, ids) in enumerate(exp.train_loader):
            optimizer.zero_grad(set_to_none=True)
            output = exp.model(inputs)
            losses = criterion(output, labels)
            losses.mean().backward()
            optimizer.step()
            loop.record(ids, losses, output, labels)
            if i + 1 == batches:
                break


def test_a_hand_written_loop_is_recorded_and_replay_restores_the_checkpoint_after_it(make_exp, digits):
    exp = make_exp("own-loop")
    exp.train_n_steps(2)
    _own_loop(exp, batches=3)  # no step named: not re-executable, so a checkpoint follows
    exp.train_n_steps(2)
    kinds = list(exp.events()["kind"])
    assert kinds[-3:] == ["train", "dump", "train"]
    own = walk(exp.store, "own-loop").entries[-3]
    assert isinstance(own.event, StepsTrained) and not own.event.replayable and own.event.steps == 3
    assert exp.sql("SELECT SUM(exposure_amount) AS n FROM sample_stats WHERE experiment_id = :experiment_id "
                   "AND split = 'train'")["n"].iloc[0] == 7 * 64
    train_ds, eval_ds = digits
    outcome = replay_to(replica(exp.store, "own-loop", model=MNISTModel(), train_dataset=train_ds,
                                eval_dataset=eval_ds), from_start=True)
    assert outcome.ok and outcome.skipped == [own.seq], outcome
    _replays_to_the_live_state(exp, digits)


def test_a_hand_written_loop_with_a_named_step_replays_by_running_the_step(make_exp, digits):
    exp = make_exp("own-loop-step")
    _own_loop(exp, batches=2)
    assert list(exp.events()["kind"])[-1] == "train"  # re-executable: no checkpoint needed
    train_ds, eval_ds = digits
    outcome = replay_to(replica(exp.store, "own-loop-step", model=MNISTModel(), train_dataset=train_ds,
                                eval_dataset=eval_ds), from_start=True)
    assert outcome.ok and outcome.skipped == [], outcome
    _replays_to_the_live_state(exp, digits)


def test_an_own_loop_that_raises_leaves_the_state_of_the_last_event(make_exp):
    exp = make_exp("own-loop-fails")
    exp.train_n_steps(2)
    before = fingerprint(exp)
    with pytest.raises(RuntimeError, match="the user's loop broke"), exp.training() as loop:
        for inputs, labels, ids in exp.train_loader:
            output = exp.model(inputs)
            losses = torch.nn.functional.nll_loss(output, labels, reduction="none")
            losses.mean().backward()
            exp.optimizer.step()
            loop.record(ids, losses, output, labels)
            raise RuntimeError("the user's loop broke")
    assert changed_parts(before, fingerprint(exp)) == []


@pytest.mark.parametrize("store_target", ["sqlite"], indirect=True)
def test_a_compiled_model_trains_edits_recompile_and_replay_bit_exactly(make_exp, digits):
    # aot_eager: dynamo's tracing and guards with eager kernels (inductor's compile takes minutes on 2 cores)
    exp = make_exp("compiled", compile={"backend": "aot_eager"})
    assert exp.config.compile == {"backend": "aot_eager"}
    _session(exp)  # the prune and the add change shapes: the compiled code re-traces
    assert exp.model.layers[0].train_seen_count.sum() > 0  # trigger tracking works through the compiled module
    _replays_to_the_live_state(exp, digits)


@pytest.mark.parametrize("store_target", ["sqlite"], indirect=True)
@pytest.mark.parametrize("how", ["torch.compile(model)", "model.compile()"])
def test_a_model_passed_compiled_is_unwrapped_and_edited(make_exp, how):
    model = MNISTModel()
    if how == "model.compile()":
        model.compile(backend="aot_eager")
        given = model
    else:
        given = torch.compile(model, backend="aot_eager")
    exp = make_exp(f"given-{how[:5]}", model=given)
    assert exp.model is model and exp.config.compile == {}  # recorded: replay compiles with the defaults
    exp.model.prune(layer_index=1, neuron_indices={0})  # the tracer runs the module's own forward
    assert [layer.neuron_count for layer in exp.model.layers] == [2, 3, 10, 10]


def test_audit_lists_the_calls_replay_cannot_re_execute(make_exp):
    from weightslab.history.audit import audit_experiment

    exp = make_exp("audit-own-loop")
    _own_loop(exp, batches=3)
    report = audit_experiment(exp.store, "audit-own-loop")
    assert report.ok and report.not_reexecutable == (2,)
    assert "not re-executable by replay (own training loops): seqs [2]" in report.render_text()
