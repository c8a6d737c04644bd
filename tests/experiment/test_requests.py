"""Outside requests applied by the running Experiment: at safe points, in order, once, as ordinary events.

Requests are filed through a second ``Store`` (what another process, the CLI or the UI uses); the
experiment applies them at its next safe point. Both backends.
"""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from weightslab.errors import ConfigurationError
from weightslab.events.domain import NeuronsPruned, RecordedEvent, decode
from weightslab.events.requests import check_request
from weightslab.experiment.replica import replay_to, replica
from weightslab.history.store import Store


def _events(exp) -> list[RecordedEvent]:
    return [RecordedEvent.from_row(r) for r in exp.store.events(exp.experiment_id)]


def _state(exp) -> dict[str, torch.Tensor]:
    tensors, meta = exp.capture()
    return {k: v.detach().clone() for k, v in tensors.items()} | {"meta": meta}  # type: ignore[dict-item]


def _same(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    return all(_bytes(a[k]) == _bytes(b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


def _bytes(t: torch.Tensor) -> tuple:
    return t.dtype, tuple(t.shape), t.detach().cpu().numpy().tobytes()  # bit for bit: NaN equals NaN


@pytest.fixture
def outside(store_target):
    """The store as another process opens it, to file requests."""
    with Store.open(store_target) as store:
        yield store


def test_a_request_is_applied_at_the_next_call_as_an_event_naming_it_with_the_requester_as_actor(make_exp, outside):
    exp = make_exp("x0")
    exp.train_n_steps(2)
    filed = outside.file_request("x0", "prune", {"layer_index": 1, "neuron_indices": [0, 3]},
                                 requested_by="carol@laptop")
    before = exp.last_seq
    assert outside.request(filed.request_id).status == "pending" and exp.last_seq == before  # nothing yet
    width = exp.model.layers[1].out_channels
    exp.eval_n_steps(1)  # a safe point: the request first, then the call
    events = _events(exp)
    prune, evaluated = events[-2], events[-1]
    assert (prune.kind, evaluated.kind) == ("prune", "eval")
    assert prune.actor == "carol@laptop" and prune.event.request == filed.request_id
    assert prune.event.neuron_indices == (0, 3)
    assert exp.model.layers[1].out_channels == width - 2
    done = outside.request(filed.request_id)
    assert (done.status, done.applied_seq, done.error) == ("applied", prune.seq, None)
    assert events[-3].actor != "carol@laptop"  # the experiment's own calls keep their actor


def test_a_request_filed_during_train_n_steps_with_eval_full_is_applied_between_its_chunks(make_exp, outside):
    filed: list[int] = []

    def criterion(output, labels):  # files a request during the first full eval (another "process")
        if not torch.is_grad_enabled() and not filed and exp_box:
            filed.append(outside.file_request("x0", "dump", {}).request_id)
        return F.nll_loss(output, labels, reduction="none")

    exp_box: list = []
    exp = make_exp("x0", criterion=criterion, eval_every=2)
    exp_box.append(exp)
    exp.train_n_steps_with_eval_full(6)
    kinds = [e.kind for e in _events(exp)]
    assert kinds == ["create", "train", "eval", "dump", "train", "eval", "train", "eval"]
    assert outside.request(filed[0]).applied_seq == 4


def test_refused_requests_change_nothing_and_say_why(make_exp, outside):
    exp = make_exp("x0")
    exp.train_n_steps(2)
    exp.eval_full()
    bad = [
        ("prune", {"layer_index": 9, "neuron_indices": [0]}, "layer_index 9 is out of range"),
        ("add_neurons", {"layer_index": -7, "neuron_count": 2}, "out of range"),
        ("prune", {"layer_index": 0, "neuron_indices": [99999]}, "99999"),
        ("deny", {"mode": "where", "query": "prediction_loss >"}, "invalid query 'prediction_loss >'"),
        ("deny", {"mode": "where", "query": "no_such_column > 1"}, "invalid query"),
        ("allow", {"mode": "ids", "ids": [10 ** 9]}, "1000000000"),
        ("load", {"checkpoint_id": 3}, "checkpoint 3 does not exist"),
        ("set_hyperparameters", {"batch_size": 0}, "batch_size"),
    ]
    ids = [outside.file_request("x0", kind, args).request_id for kind, args, _ in bad]
    before, seq = _state(exp), exp.last_seq
    lr = [g["lr"] for g in exp.optimizer.param_groups]
    done = exp.apply_requests()
    assert [r.request_id for r in done] == ids
    for row, (_, _, says) in zip(done, bad, strict=True):
        assert row.status == "refused" and row.applied_seq is None and says in row.error, row
    assert exp.last_seq == seq and _same(_state(exp), before)  # model, optimizer, ledger, sampler, RNG
    assert [g["lr"] for g in exp.optimizer.param_groups] == lr
    exp.train_n_steps(1)  # the experiment goes on
    assert exp.last_seq == seq + 1


def test_requests_filed_concurrently_are_applied_in_request_order(make_exp, store_target):
    exp = make_exp("x0")
    exp.train_n_steps(1)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def file(i: int) -> None:
        try:
            with Store.open(store_target) as mine:
                barrier.wait()
                for j in range(3):
                    mine.file_request("x0", "set_neuron_lr",
                                      {"layer_index": 1, "neuron_indices": [i], "lr": 0.1 * (j + 1)})
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=file, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    done = exp.apply_requests()
    assert [r.status for r in done] == ["applied"] * 12, [r.error for r in done]
    assert [r.request_id for r in done] == sorted(r.request_id for r in done)
    assert [r.applied_seq for r in done] == list(range(done[0].applied_seq, done[0].applied_seq + 12))


def test_two_processes_never_both_claim_one_request(make_exp, store_target):
    exp = make_exp("x0")
    with Store.open(store_target) as a, Store.open(store_target) as b:
        ids = [a.file_request("x0", "dump", {}).request_id for _ in range(20)]
        won: dict[str, list[int]] = {"a": [], "b": []}
        barrier = threading.Barrier(2)

        def claim(name: str, store: Store) -> None:
            barrier.wait()
            for rid in ids:
                if store.claim_request(rid) is not None:
                    won[name].append(rid)

        threads = [threading.Thread(target=claim, args=item) for item in (("a", a), ("b", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(won["a"] + won["b"]) == ids  # each claimed exactly once
        assert {r.status for r in a.list_requests(exp.experiment_id)} == {"applying"}


def test_accept_requests_false_leaves_requests_pending_until_apply_requests(make_exp, outside):
    exp = make_exp("x0", accept_requests=False)
    rid = outside.file_request("x0", "freeze", {"up_to_index": 0}).request_id
    exp.train_n_steps(1)
    exp.eval_full()
    assert outside.request(rid).status == "pending"
    assert [e.kind for e in _events(exp)][-1] == "eval"
    created = _events(exp)[0].event
    assert created.config["accept_requests"] is False  # type: ignore[attr-defined]
    (done,) = exp.apply_requests()
    assert done.status == "applied" and _events(exp)[-1].kind == "freeze"


def test_a_request_waits_for_a_process_to_open_the_experiment_and_a_half_applied_one_is_requeued(make_exp, outside):
    exp = make_exp("x0")
    exp.train_n_steps(1)
    exp.close()
    dump = outside.file_request("x0", "dump", {}).request_id
    stale = outside.file_request("x0", "reinit_neurons", {"layer_index": 0, "neuron_indices": [1]}).request_id
    assert outside.claim_request(stale) is not None  # a process claimed it, then died before its event
    reopened = make_exp("x0", store=exp.store)
    assert outside.request(stale).status == "pending"  # back in the queue, in its place
    reopened.train_n_steps(1)
    kinds = [e.kind for e in _events(reopened)]
    assert kinds[-4:] == ["resume", "dump", "reinit_neurons", "train"]
    assert [outside.request(r).status for r in (dump, stale)] == ["applied", "applied"]


def test_applied_requests_replay_bit_exactly(make_exp, outside, store_target):
    exp = make_exp("x0", recipe="weightslab.demo:recipe")
    exp.train_n_steps(3)
    exp.eval_full()
    for kind, args in [
        ("dump", {}),
        ("prune", {"layer_index": 1, "neuron_indices": [0, 2]}),
        ("add_neurons", {"layer_index": 0, "neuron_count": 3}),
        ("reinit_neurons", {"layer_index": 0, "neuron_indices": [1], "perturbation_ratio": 0.2}),
        ("set_neuron_lr", {"layer_index": 1, "neuron_indices": [0], "lr": 0.5}),
        ("set_incoming_neuron_lr", {"layer_index": 1, "neuron_indices": [1], "lr": 0.0}),
        ("freeze", {"up_to_index": 0}),
        ("unfreeze", {"from_index": 0}),
        ("deny", {"mode": "where", "query": "prediction_loss > 1.5"}),
        ("deny", {"split": "eval", "mode": "ids", "ids": [0, 1]}),
        ("allow", {"mode": "all"}),
        ("set_hyperparameters", {"learning_rate": 5e-3}),
    ]:
        outside.file_request("x0", kind, args, requested_by="ui:test")
    exp.train_n_steps(2)
    outside.file_request("x0", "load", {"checkpoint_id": 0})
    exp.train_n_steps(2)
    requests = outside.list_requests(exp.experiment_id)
    assert all(r.status == "applied" for r in requests), [(r.kind, r.error) for r in requests]
    exp.close()
    copy = replica(store_target, "x0")
    outcome = replay_to(copy, from_start=True)
    assert outcome.ok and outcome.reached == exp.last_seq, outcome
    copy.store.close()


@pytest.mark.parametrize(("kind", "args", "says"), [
    ("train", {}, "cannot ask for 'train'"),
    ("prune", {"layer": 1}, "takes layer_index, neuron_indices; got layer"),
    ("prune", {"layer_index": 1}, "needs neuron_indices"),
    ("prune", {"layer_index": "1", "neuron_indices": [0]}, "layer_index is '1', expected int"),
    ("deny", {"mode": "all"}, "by mode ids / where"),
    ("deny", {"mode": "ids", "ids": []}, "at least one sample id"),
    ("allow", {"split": "test", "mode": "all"}, "split must be 'train' or 'eval'"),
    ("load", {"checkpoint_id": -1}, "integer ≥ 0"),
    ("dump", {"now": True}, "takes no arguments"),
    ("set_hyperparameters", {}, "at least one of"),
])
def test_a_malformed_request_is_refused_when_filed(kind, args, says):
    with pytest.raises(ConfigurationError, match=says.replace("(", r"\(")):
        check_request(kind, args)


def test_an_event_of_version_1_decodes_as_one_made_without_a_request():
    old = {"args": {"layer_index": 0, "neuron_indices": [1]}, "result": {"widths": [3]}}  # stored before v2
    event = decode("prune", old)
    assert isinstance(event, NeuronsPruned) and event.request is None
    assert event.to_payload()["v"] == 2 and "request" not in event.to_payload()
