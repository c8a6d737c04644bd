"""`weightslab request` / `requests` against a real training process, as a teammate uses them.

A training subprocess runs ``train_n_steps_with_eval_full`` on the store (both backends); the
CLI, run as other subprocesses, files requests. Each is applied at the training's next safe
point as an event naming the request with the requester as actor, or refused with the API's
message; the log then replays bit-exactly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import run_cli

from weightslab.cli import main
from weightslab.events.domain import RecordedEvent
from weightslab.experiment.replica import replay_to, replica
from weightslab.history.store import Store

TRAINER = Path(__file__).with_name("request_trainer.py")
NAME = "live"


@pytest.fixture
def training(store_target, tmp_path):
    """A training process holding experiment NAME; stopped (and waited for) at the end."""
    stop = tmp_path / "stop"
    proc = subprocess.Popen([sys.executable, str(TRAINER), store_target, NAME, str(stop)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.strip() == "ready", f"the trainer did not start: {line}{proc.stderr.read() if proc.stderr else ''}"
        yield store_target, stop, proc
    finally:
        stop.touch()
        try:
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
            for pipe in (proc.stdout, proc.stderr):
                if pipe:
                    pipe.close()


def _file_at_once(store: str, *requests: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Run ``weightslab request NAME … --wait`` for each request, all at the same time, in processes of their own."""
    procs = [subprocess.Popen([sys.executable, "-m", "weightslab.cli", "request", NAME, "--store", store, *args,
                               "--wait", "--timeout", "90", "--json"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for args in requests]
    out = []
    for p, args in zip(procs, requests, strict=True):
        stdout, stderr = p.communicate(timeout=120)
        out.append(subprocess.CompletedProcess(args, p.returncode, stdout, stderr))
    return out


def test_cli_requests_are_applied_at_safe_points_or_refused_with_the_apis_reason_and_the_log_replays(training):
    store, stop, proc = training
    prune, = _file_at_once(store, ["prune", "--layer", "1", "--neurons", "0,3", "--as", "bob@laptop"])
    assert prune.returncode == 0, prune.stdout + prune.stderr
    pruned = json.loads(prune.stdout)
    assert pruned["status"] == "applied" and pruned["applied_seq"] > 0
    # filed at the same moment by two processes: applied in the order they were filed
    deny, dump = _file_at_once(store, ["deny", "--where", "prediction_loss > 2"], ["dump"])
    rows = sorted((json.loads(deny.stdout), json.loads(dump.stdout)), key=lambda r: r["request_id"])
    assert [r["status"] for r in rows] == ["applied", "applied"], rows
    assert rows[0]["applied_seq"] < rows[1]["applied_seq"]
    # bad requests: refused with the API's message, exit code 1
    bad = {("prune", "--layer", "7", "--neurons", "0"): "layer_index 7 is out of range",
           ("deny", "--where", "prediction_loss >"): "invalid query 'prediction_loss >'",
           ("load", "--checkpoint", "42"): "checkpoint 42 does not exist"}
    refused = _file_at_once(store, *[list(a) for a in bad])
    for out, says in zip(refused, bad.values(), strict=True):
        assert out.returncode == 1, out.stdout + out.stderr
        row = json.loads(out.stdout)
        assert row["status"] == "refused" and says in row["error"] and row["applied_seq"] is None
    stop.touch()
    assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""

    with Store.open(store, create=False, read_only=True) as opened:
        row = opened.get_experiment(NAME)
        events = {e.seq: RecordedEvent.from_row(e) for e in opened.events(row.experiment_id)}
        requests = opened.list_requests(row.experiment_id)
    applied = [r for r in requests if r.status == "applied"]
    assert applied[0].kind == "prune" and sorted(r.kind for r in applied[1:]) == ["deny", "dump"]
    assert [r.applied_seq for r in applied] == sorted(r.applied_seq for r in applied)  # applied in filing order
    for request in applied:
        event = events[request.applied_seq]
        assert event.kind == request.kind and event.actor == request.requested_by
        assert event.event.request == request.request_id  # type: ignore[attr-defined]
    assert events[pruned["applied_seq"]].actor == "bob@laptop"
    assert events[pruned["applied_seq"]].event.neuron_indices == (0, 3)  # type: ignore[attr-defined]
    named = {e.event.request for e in events.values() if getattr(e.event, "request", None) is not None}
    assert named == {r.request_id for r in applied}  # a refused request left no event

    listed = run_cli("requests", NAME, "--store", store)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert "why refused" in lines[0] and sum(" refused " in line for line in lines[2:]) == 3
    assert "layer_index 7 is out of range" in listed.stdout
    copy = replica(store, NAME)  # what `weightslab replay` runs, without a second torch import
    try:
        outcome = replay_to(copy, from_start=True)
    finally:
        copy.store.close()
    assert outcome.ok and outcome.reached == max(events), outcome


@pytest.fixture
def registered(tmp_path) -> str:
    """A store (SQLite) with one experiment registered, x0."""
    target = str(tmp_path / "store")
    with Store.open(target) as store:
        store.create_experiment("x0")
    return target


def _requests_in(target: str) -> int:
    with Store.open(target, create=False, read_only=True) as opened:
        return int(opened.query("SELECT COUNT(*) AS n FROM requests")["n"].iloc[0])


def test_a_request_for_an_unknown_experiment_is_refused_and_nothing_is_written(registered):
    out = run_cli("request", "nosuch", "--store", registered, "dump")
    assert out.returncode == 2
    assert "no experiment named 'nosuch'" in out.stderr and "'x0'" in out.stderr
    assert _requests_in(registered) == 0


@pytest.mark.parametrize(("args", "says"), [
    (("prune", "--layer", "1", "--neurons", "a,b"), "is not a list of integers"),
    (("deny",), "one of the arguments --ids --where is required"),
    (("set_hyperparameters",), "needs at least one of learning_rate"),
    ((), "say what to request"),
    (("--cancel", "99"), "has no request 99"),
    (("dump", "--timeout", "5"), "with --wait"),
])
def test_malformed_requests_are_refused_before_anything_is_filed(registered, capsys, args, says):
    try:
        code = main(["request", "x0", "--store", registered, *args])
    except SystemExit as e:  # argparse's own refusals
        code = int(e.code or 0)
    assert code == 2 and says in capsys.readouterr().err
    assert _requests_in(registered) == 0


def test_a_pending_request_can_be_cancelled_and_then_never_applies(registered, capsys):
    assert main(["request", "x0", "--store", registered, "dump", "--json"]) == 0
    rid = json.loads(capsys.readouterr().out)["request_id"]
    assert main(["request", "x0", "--store", registered, "--cancel", str(rid)]) == 0
    assert "cancelled" in capsys.readouterr().out
    assert main(["request", "x0", "--store", registered, "--cancel", str(rid)]) == 2
    assert "is cancelled, not pending" in capsys.readouterr().err
    assert main(["requests", "x0", "--store", registered, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["request_id"], r["status"]) for r in listed] == [(rid, "cancelled")]
