"""An operation whose event cannot be written leaves the experiment exactly as it was, on both backends.

The failure is real: a trigger in the database refuses every ``INSERT INTO events`` (SQLite and
PostgreSQL), or the file-size limit of the process makes a blob write fail half-way (as a full disk
would). After each refused operation the fingerprint of everything (state tensors and settings,
log, statistics tables, blobs) is as before, the log still replays from the start, and the next
operation works.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from reliability.reliability_checks import changed_parts, fingerprint
from sqlalchemy import text

from weightslab.demo import MNISTModel
from weightslab.errors import StoreError
from weightslab.experiment.replica import replay_to, replica
from weightslab.experiment.state import tensor_hashes


@contextmanager
def events_refused(store: Any) -> Iterator[None]:
    """A trigger that makes the database refuse every new event, while the block runs."""
    sqlite = store.engine.dialect.name == "sqlite"
    with store.engine.begin() as conn:
        if sqlite:
            conn.execute(text("CREATE TRIGGER wl_refuse BEFORE INSERT ON events "
                              "BEGIN SELECT RAISE(ABORT, 'injected: the disk refused the event'); END"))
        else:
            conn.execute(text("CREATE FUNCTION wl_refuse() RETURNS trigger AS $$ BEGIN "
                              "RAISE EXCEPTION 'injected: the disk refused the event'; END $$ LANGUAGE plpgsql"))
            conn.execute(text("CREATE TRIGGER wl_refuse BEFORE INSERT ON events FOR EACH ROW "
                              "EXECUTE FUNCTION wl_refuse()"))
    try:
        yield
    finally:
        with store.engine.begin() as conn:
            conn.execute(text("DROP TRIGGER wl_refuse" if sqlite else "DROP TRIGGER wl_refuse ON events"))
            if not sqlite:
                conn.execute(text("DROP FUNCTION wl_refuse()"))


def _pred(id, age, loss, times, denied, pred, label):  # noqa: A002 - the tutorial's signature
    return id % 7 == 0


OPERATIONS: dict[str, Callable[[Any], Any]] = {
    "train": lambda e: e.train_n_steps(3),
    "eval_n_steps": lambda e: e.eval_n_steps(2),
    "eval_full": lambda e: e.eval_full(),
    "add_neurons": lambda e: e.model.add_neurons(layer_index=0, neuron_count=2),
    "prune": lambda e: e.model.prune(layer_index=1, neuron_indices={0}),
    "reinit_neurons": lambda e: e.model.reinit_neurons(layer_index=0, neuron_indices={1}),
    "reinit_neurons/perturbed": lambda e: e.model.reinit_neurons(layer_index=2, neuron_indices={0},
                                                                 perturbation_ratio=0.3),
    "set_neuron_lr": lambda e: e.model.layers[1].set_per_neuron_learning_rate({0, 1}, lr=0.0),
    "set_incoming_neuron_lr": lambda e: e.model.set_per_incoming_neuron_learning_rate(1, {0}, lr=0.5),
    "freeze": lambda e: e.model.freeze_layers_up_to_idx(1),
    "unfreeze": lambda e: e.model.unfreeze_layers_from_idx(0),
    "deny/predicate": lambda e: e.train_loader.dataset.deny_samples_with_predicate(_pred),
    "deny/sampled": lambda e: e.train_loader.dataset.deny_samples_and_sample_allowed_with_predicate(
        _pred, allow_to_denied_factor=0.5),
    "deny/where": lambda e: e.train_loader.dataset.deny_samples_where("prediction_loss > 2.0"),
    "deny/eval ids": lambda e: e.eval_loader.dataset.denylist_samples({0, 1}),
    "allow/all": lambda e: e.train_loader.dataset.allowlist_samples(None),
    "dump": lambda e: e.dump(),
    "load": lambda e: e.load(checkpoint_id=0),
}


def test_every_operation_whose_event_is_refused_changes_nothing_and_the_log_replays(make_exp, digits):
    exp = make_exp("refused", recipe="weightslab.demo:recipe")
    exp.train_n_steps(4)
    exp.dump()
    exp.train_loader.dataset.denylist_samples({3, 5})  # something to allow
    exp.model.freeze_layers_up_to_idx(0)  # something to unfreeze
    exp.train_n_steps(2)
    for name, operation in OPERATIONS.items():
        before = fingerprint(exp)
        with events_refused(exp.store), pytest.raises(StoreError, match="disk refused|injected"):
            operation(exp)
        assert changed_parts(before, fingerprint(exp)) == [], name
    # the same operations, now recorded: every one works after a refusal, and the log replays bit-exactly
    for name, operation in OPERATIONS.items():
        operation(exp)
        assert exp.verify(), name
    train_ds, eval_ds = digits
    rep = replica(exp.store, "refused", model=MNISTModel(), train_dataset=train_ds, eval_dataset=eval_ds)
    outcome = replay_to(rep, from_start=True)
    assert outcome.ok, outcome
    assert tensor_hashes(rep.capture()[0]) == tensor_hashes(exp.capture()[0])


_DISK_FULL = textwrap.dedent("""
    import json, resource, signal, sys
    from pathlib import Path
    from torch import optim
    from weightslab import Experiment
    from weightslab.demo import MNISTModel, digits_datasets
    import weightslab.history.blobs as blobs

    blobs.INLINE_MAX = 0  # every blob a file, as a large model's are
    store = Path(sys.argv[1])
    train_ds, eval_ds = digits_datasets()
    exp = Experiment(model=MNISTModel(), optimizer_class=optim.Adam, train_dataset=train_ds,
                     eval_dataset=eval_ds, batch_size=64, name="full", store=str(store), progress=False)
    exp.train_n_steps(2)
    exp.flush()
    from weightslab.experiment.state import tensor_hashes
    before = tensor_hashes(exp.capture()[0])
    events = exp.last_seq
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2048, limit[1]))  # the disk is full: no file may pass 2 KiB
    try:
        exp.dump()
        error = None
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
    resource.setrlimit(resource.RLIMIT_FSIZE, limit)
    after = tensor_hashes(exp.capture()[0])
    same = sorted(k for k in before if before[k] != after.get(k))
    parts = sorted(p.name for p in (store / "blobs" / "tmp").glob("*")) if (store / "blobs" / "tmp").exists() else []
    unchanged_log = exp.last_seq == events
    cid = exp.dump()  # the disk has room again
    print(json.dumps({"error": error, "changed": same, "parts": parts, "unchanged_log": unchanged_log,
                      "dumped": cid, "verify": exp.verify()}))
    exp.close()
""")


def test_a_dump_on_a_full_disk_leaves_no_part_files_and_changes_nothing(tmp_path):
    done = subprocess.run([sys.executable, "-c", _DISK_FULL, str(tmp_path / "store")], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["error"] and result["error"].startswith("StoreError") and "disk has room" in result["error"]
    assert result["parts"] == []  # nothing half-written is left in blobs/tmp
    assert result["changed"] == [] and result["unchanged_log"]
    assert result["dumped"] == 0 and result["verify"]
