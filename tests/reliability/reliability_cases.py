"""The table of bad inputs: every public operation, each kind of invalid argument.

A case is an action on a recorded experiment (the *victim*) that must be refused
with an error of the expected class (all in the ``WeightsLabError`` tree) whose
message matches ``hint`` (the part that says what to do), leaving the
experiment and the store exactly as they were (see ``test_bad_input.py``).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn, optim
from torch.utils.data import TensorDataset

from weightslab.errors import (
    BlobNotFoundError,
    ConcurrencyError,
    ConfigurationError,
    DuplicateExperimentError,
    EventPayloadError,
    IndexSelectionError,
    IntegrityError,
    LedgerError,
    ReplayError,
    StoreError,
    StoreUnavailableError,
    SurgeryError,
    UnknownExperimentError,
)


@dataclass
class Victim:
    """The experiment under attack and what the cases need around it."""

    exp: Any
    target: str
    data: tuple[Any, Any]
    tmp: Path
    extras: dict[str, Any] = field(default_factory=dict)

    def ctor_args(self, model: Any) -> dict[str, Any]:
        train_ds, eval_ds = self.data
        return dict(model=model, optimizer_class=optim.Adam, train_dataset=train_ds, eval_dataset=eval_ds,
                    device="cpu", learning_rate=1e-2, batch_size=64, name="fresh", store=self.target,
                    tensorboard_dir=str(self.tmp / "tb"), progress=False)


class CliRefusal(Exception):
    """The CLI exited with code 2; the message is what it printed on stderr."""


@dataclass(frozen=True)
class Case:
    id: str
    act: Callable[[Victim, Any], Any]
    error: type[BaseException]
    hint: str  # a regex the message must match: what was wrong and what to do
    setup: Callable[[Victim], Any] | None = None  # runs before the "before" fingerprint


CASES: list[Case] = []


def case(id: str, error: type[BaseException], hint: str, setup: Callable[[Victim], Any] | None = None):
    def register(act: Callable[[Victim, Any], Any]) -> Callable[[Victim, Any], Any]:
        CASES.append(Case(id, act, error, hint, setup))
        return act
    return register


def add(id: str, act: Callable[[Victim], Any], error: type[BaseException], hint: str) -> None:
    CASES.append(Case(id, lambda v, _: act(v), error, hint))


# ----------------------------------------------------------------------------- the model (surgery)
# The victim is the tutorial's MNISTModel: widths [2, 4, 10, 10]; layer 0 has 1 incoming channel.

M = "model."
BAD_LAYERS = {"too-big": 4, "too-negative": -5, "str": "0", "float": 1.0, "none": None, "bool": True}
for name, bad in BAD_LAYERS.items():
    hint = r"valid indices are 0\.\.3" if isinstance(bad, int) and not isinstance(bad, bool) else "pass an int"
    add(f"{M}add_neurons/layer_index={name}", lambda v, b=bad: v.exp.model.add_neurons(layer_index=b, neuron_count=1),
        IndexSelectionError, hint)
    add(f"{M}prune/layer_index={name}", lambda v, b=bad: v.exp.model.prune(layer_index=b, neuron_indices={0}),
        IndexSelectionError, hint)
    add(f"{M}reinit_neurons/layer_index={name}",
        lambda v, b=bad: v.exp.model.reinit_neurons(layer_index=b, neuron_indices={0}), IndexSelectionError, hint)
    add(f"{M}freeze_layers_up_to_idx/{name}", lambda v, b=bad: v.exp.model.freeze_layers_up_to_idx(b),
        IndexSelectionError, hint)
    add(f"{M}unfreeze_layers_from_idx/{name}", lambda v, b=bad: v.exp.model.unfreeze_layers_from_idx(b),
        IndexSelectionError, hint)
    add(f"{M}set_per_neuron_learning_rate/layer_index={name}",
        lambda v, b=bad: v.exp.model.set_per_neuron_learning_rate(b, {0}, 0.5), IndexSelectionError, hint)

for name, bad, hint in [("zero", 0, "at least 1"), ("negative", -2, "at least 1"), ("float", 1.5, "pass an int"),
                        ("str", "2", "pass an int"), ("none", None, "pass an int")]:
    add(f"{M}add_neurons/neuron_count={name}", lambda v, b=bad: v.exp.model.add_neurons(layer_index=0, neuron_count=b),
        IndexSelectionError, hint)
add(f"{M}add_neurons/neuron_count=10**12", lambda v: v.exp.model.add_neurons(layer_index=0, neuron_count=10**12),
    IndexSelectionError, r"at most 65536 neurons.*Add fewer neurons")
add(f"{M}set_seed_source/not-callable", lambda v: v.exp.model.set_seed_source(42), ConfigurationError,
    "function")
add(f"{M}add_neurons/seed=-1", lambda v: v.exp.model.add_neurons(layer_index=0, neuron_count=1, seed=-1),
    ConfigurationError, r"0\.\.2\*\*63-1")
add(f"{M}add_neurons/seed=str", lambda v: v.exp.model.add_neurons(layer_index=0, neuron_count=1, seed="x"),
    IndexSelectionError, "pass an int")
add(f"{M}add_neurons/output-layer", lambda v: v.exp.model.add_neurons(layer_index=3, neuron_count=1),
    SurgeryError, "output")

BAD_NEURONS = [
    ("out-of-range", {2}, r"valid indices are 0\.\.1"), ("negative", {-1}, r"numbered 0\.\.1"),
    ("empty", set(), "name at least one neuron"), ("str", "0", "collection of integers"),
    ("float", {0.5}, "pass an int"), ("duplicates", [0, 0], "name each neuron once"),
    ("none", None, "collection of integers"), ("float-tensor", torch.tensor([0.0]), "integer tensor"),
]
for name, bad, hint in BAD_NEURONS:
    add(f"{M}prune/neuron_indices={name}", lambda v, b=bad: v.exp.model.prune(layer_index=0, neuron_indices=b),
        IndexSelectionError, hint)
    add(f"{M}reinit_neurons/neuron_indices={name}",
        lambda v, b=bad: v.exp.model.reinit_neurons(layer_index=0, neuron_indices=b), IndexSelectionError, hint)
    add(f"{M}layers[0].set_per_neuron_learning_rate/{name}",
        lambda v, b=bad: v.exp.model.layers[0].set_per_neuron_learning_rate(b, lr=0.5), IndexSelectionError, hint)
add(f"{M}prune/every-neuron", lambda v: v.exp.model.prune(layer_index=0, neuron_indices={0, 1}),
    SurgeryError, "every neuron|all|at least one")
add(f"{M}prune/output-layer", lambda v: v.exp.model.prune(layer_index=3, neuron_indices={0}),
    SurgeryError, "output")
add(f"{M}layers[0].set_per_incoming_neuron_learning_rate/out-of-range",
    lambda v: v.exp.model.layers[0].set_per_incoming_neuron_learning_rate({1}, lr=0.5), IndexSelectionError,
    r"valid indices are 0\.\.0")
add(f"{M}layers[1].set_per_incoming_neuron_learning_rate/empty",
    lambda v: v.exp.model.layers[1].set_per_incoming_neuron_learning_rate(set(), lr=0.5), IndexSelectionError,
    "name at least one neuron")

BAD_NUMBERS = [("negative", -0.5), ("nan", math.nan), ("inf", math.inf), ("str", "0.2"), ("bool", True),
               ("complex", 1j)]
for name, bad in BAD_NUMBERS:
    add(f"{M}reinit_neurons/perturbation_ratio={name}",
        lambda v, b=bad: v.exp.model.reinit_neurons(layer_index=0, neuron_indices={0}, perturbation_ratio=b),
        ConfigurationError, "perturbation_ratio must be")
    add(f"{M}layers[0].set_per_neuron_learning_rate/lr={name}",
        lambda v, b=bad: v.exp.model.layers[0].set_per_neuron_learning_rate({0}, lr=b), ConfigurationError,
        "lr must be")
    add(f"{M}layers[1].set_per_incoming_neuron_learning_rate/lr={name}",
        lambda v, b=bad: v.exp.model.layers[1].set_per_incoming_neuron_learning_rate({0}, lr=b),
        ConfigurationError, "lr must be")
add(f"{M}layers[0].set_per_neuron_learning_rate/lr=None",
    lambda v: v.exp.model.layers[0].set_per_neuron_learning_rate({0}, lr=None), ConfigurationError, "lr must be")
add(f"{M}reinit_neurons/seed=2**63",
    lambda v: v.exp.model.reinit_neurons(layer_index=0, neuron_indices={0}, seed=2**63), ConfigurationError,
    r"0\.\.2\*\*63-1")
add(f"{M}plan_prune/out-of-range", lambda v: v.exp.model.plan_prune(0, {9}), IndexSelectionError,
    r"valid indices are 0\.\.1")
add(f"{M}tracking_mode=str", lambda v: setattr(v.exp.model, "tracking_mode", "train"), ConfigurationError,
    "TrackingMode")

# ----------------------------------------------------------------------------- the data (ledger)

D = "dataset."


def train_ds(v: Victim) -> Any:
    return v.exp.train_loader.dataset


def _raises(id, age, loss, times, denied, pred, label):  # noqa: A002 - the tutorial's signature
    raise ZeroDivisionError("boom")


PREDICATES = [
    ("raises", _raises, LedgerError, "Make it return False"),
    ("returns-str", lambda *a: "yes", LedgerError, "must return a bool"),
    ("returns-none", lambda *a: None, LedgerError, "must return a bool"),
    ("returns-int", lambda *a: 1, LedgerError, "must return a bool"),
    ("returns-array", lambda *a: torch.tensor([True]), LedgerError, "must return a bool"),
    ("wrong-arity", lambda x: True, LedgerError, "Make it return False"),
    ("not-callable", 5, ConfigurationError, "must be callable"),
    ("none", None, ConfigurationError, "must be callable"),
    ("denies-every-training-sample", lambda *a: True, LedgerError, "Deny fewer samples"),
]
for name, fn, err, hint in PREDICATES:
    add(f"{D}deny_samples_with_predicate/{name}", lambda v, f=fn: train_ds(v).deny_samples_with_predicate(f),
        err, hint)
    if name != "denies-every-training-sample":  # the sampled variant keeps some allowed: not an error
        add(f"{D}deny_samples_and_sample_allowed_with_predicate/{name}",
            lambda v, f=fn: train_ds(v).deny_samples_and_sample_allowed_with_predicate(f, allow_to_denied_factor=1),
            err, hint)
add(f"{D}eval.deny_samples_with_predicate/raises",
    lambda v: v.exp.eval_loader.dataset.deny_samples_with_predicate(_raises), LedgerError, "Make it return False")

for name, bad, err in [("negative", -1, LedgerError), ("nan", math.nan, LedgerError), ("inf", math.inf, LedgerError),
                       ("str", "3", ConfigurationError), ("none", None, ConfigurationError),
                       ("bool", True, ConfigurationError)]:
    add(f"{D}deny_samples_and_sample_allowed_with_predicate/factor={name}",
        lambda v, b=bad: train_ds(v).deny_samples_and_sample_allowed_with_predicate(
            lambda *a: False, allow_to_denied_factor=b), err, "allow_to_denied_factor must be")
add(f"{D}deny_samples_and_sample_allowed_with_predicate/seed=-1",
    lambda v: train_ds(v).deny_samples_and_sample_allowed_with_predicate(lambda *a: False, 1, seed=-1),
    ConfigurationError, "seed must be an integer >= 0")

BAD_IDS = [
    ("unknown", {99999}, LedgerError, r"valid ids are 0\.\.1497"),
    ("negative", {-1}, LedgerError, r"valid ids are 0\.\.1497"),
    ("str", "abc", ConfigurationError, "collection of integers"),
    ("floats", {1.5}, ConfigurationError, "pass ids such as"),
    ("none", None, ConfigurationError, "collection of integers"),
    ("int", 5, ConfigurationError, "collection of integers"),
    ("bools", [True, False], ConfigurationError, "pass ids such as"),
]
for name, bad, err, hint in BAD_IDS:
    add(f"{D}denylist_samples/{name}", lambda v, b=bad: train_ds(v).denylist_samples(b), err, hint)
    if name != "none":  # allowlist_samples(None) re-admits everything: valid
        add(f"{D}allowlist_samples/{name}", lambda v, b=bad: train_ds(v).allowlist_samples(b), err, hint)
add(f"{D}denylist_samples/every-training-sample", lambda v: train_ds(v).denylist_samples(range(1498)),
    LedgerError, "Deny fewer samples")
add(f"{D}eval.denylist_samples/unknown", lambda v: v.exp.eval_loader.dataset.denylist_samples({299}),
    LedgerError, r"valid ids are 0\.\.298")

BAD_QUERIES = [
    ("syntax", "prediction_loss >>> 2", LedgerError, "Write a pandas query expression"),
    ("unknown-column", "no_such_column > 1", LedgerError, "Write a pandas query expression"),
    ("empty", "", LedgerError, "Write a pandas query expression"),
    ("not-a-condition", "prediction_loss + 1", LedgerError, "must be a condition"),
    ("code-injection", "__import__('os').system('touch /tmp/weightslab-pwned')", LedgerError,
     "Write a pandas query expression"),
    ("not-a-string", 5, ConfigurationError, "must be a string"),
]
for name, q, err, hint in BAD_QUERIES:
    add(f"{D}deny_samples_where/{name}", lambda v, q=q: train_ds(v).deny_samples_where(q), err, hint)
    add(f"{D}allow_samples_where/{name}", lambda v, q=q: train_ds(v).allow_samples_where(q), err, hint)
add(f"{D}deny_samples_where/every-training-sample", lambda v: train_ds(v).deny_samples_where("sample_id >= 0"),
    LedgerError, "Deny fewer samples")
add(f"{D}apply_recorded/unknown-kind", lambda v: train_ds(v).apply_recorded("bogus", {"ids": [1]}),
    ConfigurationError, "re-executes 'deny' or 'allow'")
add(f"{D}apply_recorded/no-ids", lambda v: train_ds(v).apply_recorded("deny", {}), ConfigurationError,
    r"needs args\['ids'\]")

# ----------------------------------------------------------------------------- the experiment

E = "experiment."
for name, bad in [("zero", 0), ("negative", -1), ("float", 1.5), ("str", "3"), ("bool", True), ("none", None)]:
    for method in ("train_n_steps", "eval_n_steps", "train_n_steps_with_eval_full"):
        add(f"{E}{method}/{name}", lambda v, b=bad, m=method: getattr(v.exp, m)(b), ConfigurationError,
            "must be a positive integer")
for name, bad in [("unknown", 99), ("negative", -1)]:
    add(f"{E}load/checkpoint_id={name}", lambda v, b=bad: v.exp.load(checkpoint_id=b), ConfigurationError,
        r"existing checkpoints: \[0\]")
for name, bad in [("str", "0"), ("none", None), ("float", 0.0), ("bool", False)]:
    add(f"{E}load/checkpoint_id={name}", lambda v, b=bad: v.exp.load(checkpoint_id=b), ConfigurationError,
        "must be an integer")
SQL = [
    ("write", "DELETE FROM events", "read-only"),
    ("two-statements", "SELECT 1; DROP TABLE events", "one at a time|read-only"),
    ("not-sql", "SELEC 1", "not a query"),
    ("empty", "", "give one SELECT"),
    ("missing-parameter", "SELECT * FROM events WHERE seq = :missing", "cannot run|failed"),
    ("unknown-table", "SELECT * FROM no_such_table", "failed"),
    ("not-a-string", 5, "must be a string of SQL"),
]
for name, q, hint in SQL:
    add(f"{E}sql/{name}", lambda v, q=q: v.exp.sql(q), ConfigurationError, hint)


# The constructor: a fresh model is built in setup (it draws from torch's global RNG, which the
# fingerprint covers), then Experiment(...) is called with one bad argument.

def ctor(id: str, error: type[BaseException], hint: str, **override: Any) -> None:
    from weightslab import Experiment
    from weightslab.demo import MNISTModel

    def setup(v: Victim) -> dict[str, Any]:
        args = v.ctor_args(MNISTModel())
        for k, val in override.items():
            args[k] = val(v) if isinstance(val, Lazy) else val
        return args

    CASES.append(Case(f"{E}Experiment/{id}", lambda v, args: Experiment(**args), error, hint, setup))


@dataclass(frozen=True)
class Lazy:
    """An override computed from the victim in setup (datasets, paths)."""

    fn: Callable[[Victim], Any]

    def __call__(self, v: Victim) -> Any:
        return self.fn(v)


def _relabel(split: int, f: Callable[[torch.Tensor], torch.Tensor]) -> Lazy:
    def make(v: Victim) -> Any:
        ds = v.data[split]
        n = len(ds) if split else 256
        x = torch.stack([ds[i][0] for i in range(n)])
        y = torch.tensor([ds[i][1] for i in range(n)])
        return TensorDataset(x, f(y))
    return Lazy(make)


for name, bad in [("zero", 0), ("negative", -1), ("float", 1.5), ("str", "64"), ("bool", True)]:
    ctor(f"batch_size={name}", ConfigurationError, "batch_size must be a positive integer", batch_size=bad)
for name, bad in [("zero", 0), ("negative", -1), ("nan", math.nan), ("inf", math.inf), ("str", "0.01")]:
    ctor(f"learning_rate={name}", ConfigurationError, "learning_rate must be a finite number", learning_rate=bad)
for name, bad in [("module", nn.Linear), ("str", "Adam"), ("none", None), ("function", optim.Adam.step)]:
    ctor(f"optimizer_class={name}", ConfigurationError, "such as optim.Adam", optimizer_class=bad)
ctor("optimizer_kwargs=unknown", ConfigurationError, "refused its arguments", optimizer_kwargs={"bogus": 1})
ctor("criterion=mean", ConfigurationError, "reduction='none'", criterion=nn.NLLLoss())
ctor("criterion=cross-entropy-mean", ConfigurationError, "reduction='none'", criterion=nn.CrossEntropyLoss())
ctor("criterion=scalar", ConfigurationError, "one loss per sample", criterion=lambda out, y: out.sum())
ctor("criterion=raises", ConfigurationError, "cannot use these labels",
     criterion=lambda out, y: (_ for _ in ()).throw(RuntimeError("boom")))
ctor("train-labels=float", ConfigurationError, "cannot use these labels", train_dataset=_relabel(0, lambda y: y.float()))
ctor("train-labels=out-of-range", ConfigurationError, "cannot use these labels",
     train_dataset=_relabel(0, lambda y: y + 20))
ctor("train-labels=2d", ConfigurationError, "cannot use these labels", train_dataset=_relabel(0, lambda y: y[:, None]))
ctor("eval-labels=float", ConfigurationError, "cannot use these labels", eval_dataset=_relabel(1, lambda y: y.float()))
ctor("train_dataset=empty", ConfigurationError, "is empty",
     train_dataset=TensorDataset(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.int64)))
ctor("eval_dataset=empty", ConfigurationError, "is empty",
     eval_dataset=TensorDataset(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.int64)))
ctor("train_dataset=int", ConfigurationError, "map-style dataset", train_dataset=5)
ctor("model=plain-module", ConfigurationError, "convert_to_ops", model=nn.Linear(1, 1))
ctor("model=none", ConfigurationError, "convert_to_ops", model=None)
for name, bad in [("empty", ""), ("blank", "   "), ("none", None), ("int", 5)]:
    ctor(f"name={name}", ConfigurationError, "name must be a non-empty string", name=bad)
ctor("recipe=malformed", ConfigurationError, "package.module:function", recipe="nocolon")
ctor("eval_every=0", ConfigurationError, "eval_every must be a positive integer", eval_every=0)
ctor("eval_batch_size=0", ConfigurationError, "eval_batch_size must be a positive integer", eval_batch_size=0)
ctor("num_workers=-1", ConfigurationError, "num_workers must be an integer", num_workers=-1)
ctor("seed=str", ConfigurationError, "seed must be an integer", seed="x")
ctor("seed=float", ConfigurationError, "seed must be an integer", seed=1.5)
ctor("device=nonsense", ConfigurationError, "device", device="nonsense")
ctor("device=int", ConfigurationError, "device", device=[1])
if not torch.cuda.is_available():
    ctor("device=cuda-without-gpu", ConfigurationError, "device='cpu'", device="cuda")
ctor("reopen/different-train-data", ConfigurationError, "reopen it with the same data",
     name="victim", train_dataset=_relabel(0, lambda y: y))
ctor("reopen/different-optimizer", ConfigurationError, "optimizer_class", name="victim", optimizer_class=optim.SGD)
UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:1/test"
ctor("store=unreachable-server", StoreUnavailableError, "check that the server is running", store=UNREACHABLE)
ctor("store=malformed-url", StoreUnavailableError, "expected e.g.", store="postgresql+psycopg://u@h:notaport/db")
ctor("store=unsupported-backend", StoreUnavailableError, "use a directory", store="mysql://u@h/db")
ctor("store=in-memory", StoreUnavailableError, "give a file path", store="sqlite://")
ctor("store=a-file", StoreUnavailableError, "pass the directory", store=Lazy(lambda v: str(v.extras["a_file"])))

# ----------------------------------------------------------------------------- the store


def _store(v: Victim) -> Any:
    return v.exp.store


S = "store."
add(f"{S}open/unreachable-server", lambda v: _open(UNREACHABLE), StoreUnavailableError, "check that the server")
add(f"{S}open/malformed-url", lambda v: _open("postgresql+psycopg://u@h:notaport/db"), StoreUnavailableError,
    "expected e.g.")
add(f"{S}open/unsupported-backend", lambda v: _open("oracle://u@h/db"), StoreUnavailableError, "use a directory")
add(f"{S}open/a-file", lambda v: _open(v.extras["a_file"]), StoreUnavailableError, "pass the directory")
add(f"{S}get_experiment/unknown", lambda v: _store(v).get_experiment("nope"), UnknownExperimentError,
    "experiments: 'victim'")
add(f"{S}create_experiment/duplicate", lambda v: _store(v).create_experiment("victim"), DuplicateExperimentError,
    "open it to continue it, or choose another name")
add(f"{S}create_experiment/empty-name", lambda v: _store(v).create_experiment(""), ConfigurationError,
    "non-empty string")
add(f"{S}append_event/object-payload",
    lambda v: _store(v).append_event(v.exp.experiment_id, "note", {"x": object()},
                                     expected_last_seq=_store(v).last_seq(v.exp.experiment_id)),
    EventPayloadError, "store tensors as blobs")
add(f"{S}append_event/nan-payload",
    lambda v: _store(v).append_event(v.exp.experiment_id, "note", {"x": math.nan},
                                     expected_last_seq=_store(v).last_seq(v.exp.experiment_id)),
    EventPayloadError, "encode missing values as null")
add(f"{S}append_event/stale-seq",
    lambda v: _store(v).append_event(v.exp.experiment_id, "note", {}, expected_last_seq=1),
    ConcurrencyError, "Reopen the experiment")
add(f"{S}read_snapshot/unknown", lambda v: _store(v).read_snapshot(99999), StoreError, "no snapshot with id")
add(f"{S}blobs.get/unknown", lambda v: _store(v).blobs.get("0" * 64), BlobNotFoundError, "missing")
add(f"{S}blobs.get/path", lambda v: _store(v).blobs.get("../../etc/passwd"), IntegrityError, "refusing it")
add(f"{S}query/write", lambda v: _store(v).query("DELETE FROM blobs"), ConfigurationError, "read-only")
add(f"{S}open/read-only-missing", lambda v: Store_open(v.tmp / "nowhere", read_only=True), StoreUnavailableError,
    "no store at")
def _write_read_only(v: Victim) -> None:
    store = Store_open(v.target, read_only=True)
    try:
        with store.transaction():
            pass
    finally:
        store.close()


add(f"{S}open(read_only).transaction", _write_read_only, StoreError, "opened read-only")


def Store_open(target: Any, **kw: Any) -> Any:  # noqa: N802 - reads as the call it makes
    from weightslab.history.store import Store

    return Store.open(target, **kw)


def _open(target: Any) -> None:
    from weightslab.history.store import Store

    Store.open(target).close()


# ----------------------------------------------------------------------------- replay tools

R = "replay."


def _replica(v: Victim) -> Any:
    from weightslab.experiment import replica as replay

    if "replica" not in v.extras:
        train_ds_, eval_ds_ = v.data
        from weightslab.demo import MNISTModel

        v.extras["replica"] = replay.replica(v.exp.store, "victim", model=MNISTModel(), train_dataset=train_ds_,
                                             eval_dataset=eval_ds_)
    return v.extras["replica"]


def _replay(fn: str, *args: Any) -> Callable[[Victim], Any]:
    def act(v: Victim) -> Any:
        from weightslab.experiment import replica as replay

        return getattr(replay, fn)(*args)
    return act


add(f"{R}replica/unknown-experiment",
    lambda v: __import__("weightslab.experiment.replica").experiment.replica.replica(v.exp.store, "nope"),
    UnknownExperimentError, "experiments: 'victim'")
add(f"{R}load_recipe/malformed", _replay("load_recipe", "not a recipe"), ReplayError, "package.module:function")
add(f"{R}load_recipe/missing-module", _replay("load_recipe", "no_such_module_xyz:fn"), ReplayError,
    "Install the package")
add(f"{R}replay_to/live-experiment", lambda v: v.exp.replay_to(1), ReplayError, r"exp\.load\(checkpoint_id\)")
CASES.append(Case(f"{R}replica.train_n_steps/read-only",
                  lambda v, rep: rep.train_n_steps(1), ReplayError, "read-only replica", _replica))
CASES.append(Case(f"{R}replay_to/unknown-seq",
                  lambda v, rep: __import__("weightslab.experiment.replica").experiment.replica.replay_to(rep, 99999),
                  ReplayError, r"outside the event log of 'victim' \(1\.\.\d+\)", _replica))

# ----------------------------------------------------------------------------- the CLI (exit code 2)


def cli(*args: str) -> Callable[[Victim], Any]:
    def act(v: Victim) -> None:
        from weightslab.cli import main

        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main([*args, "--store", v.target])
        if code == 2:
            raise CliRefusal(err.getvalue())
        raise AssertionError(f"weightslab {' '.join(args)} exited {code}: {err.getvalue()}")
    return act


C = "cli."
add(f"{C}events/unknown-experiment", cli("events", "nope"), CliRefusal, "no experiment named 'nope'.*'victim'")
add(f"{C}lineage/unknown-experiment", cli("lineage", "nope"), CliRefusal, "no experiment named 'nope'")
add(f"{C}audit/unknown-experiment", cli("audit", "nope"), CliRefusal, "no experiment named 'nope'")
add(f"{C}diff/unknown-experiment", cli("diff", "nope", "0", "1"), CliRefusal, "no experiment named 'nope'")
add(f"{C}diff/unknown-checkpoint", cli("diff", "victim", "0", "99"), CliRefusal, r"checkpoint 99 does not exist")
add(f"{C}events/unknown-from-seq", cli("events", "victim", "--from", "99999"), CliRefusal, r"which has events 1\.\.")
add(f"{C}events/unknown-to-seq", cli("events", "victim", "--to", "0"), CliRefusal, r"which has events 1\.\.")
add(f"{C}sql/write", cli("sql", "DELETE FROM events"), CliRefusal, "read-only")
add(f"{C}audit/expect-head-without-name", cli("audit", "--expect-head", "0" * 64), CliRefusal, "give its NAME too")
add(f"{C}request/unknown-experiment", cli("request", "nope", "dump"), CliRefusal, "no experiment named 'nope'")
add(f"{C}requests/unknown-experiment", cli("requests", "nope"), CliRefusal, "no experiment named 'nope'")
add(f"{C}request/cancel-unknown", cli("request", "victim", "--cancel", "99"), CliRefusal, "has no request 99")
add(f"{C}request/hyperparameters-without-any", cli("request", "victim", "set_hyperparameters"), CliRefusal,
    "needs at least one of learning_rate")
add(f"{S}file_request/unknown-experiment", lambda v: _store(v).file_request("nope", "dump", {}),
    UnknownExperimentError, "experiments: 'victim'")
add(f"{S}file_request/not-requestable", lambda v: _store(v).file_request("victim", "train", {}),
    ConfigurationError, "it may ask for prune")
add(f"{S}file_request/unknown-argument", lambda v: _store(v).file_request("victim", "prune", {"layer": 1}),
    ConfigurationError, "takes layer_index, neuron_indices; got layer")
add(f"{S}file_request/wrong-type", lambda v: _store(v).file_request(
    "victim", "set_neuron_lr", {"layer_index": 0, "neuron_indices": [0], "lr": "fast"}), ConfigurationError,
    "lr is 'fast', expected float")
add(f"{S}cancel_request/unknown", lambda v: _store(v).cancel_request(99999), ConfigurationError,
    "weightslab requests NAME")
