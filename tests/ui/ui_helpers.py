"""Serving the UI in a test, and the stores the UI tests read."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HOSTILE_NAME = "<script>alert('name')</script>\"'&<img src=x onerror=alert(1)>"
HOSTILE_TEXT = "<img src=x onerror=alert('payload')>&amp;</td></tr><script>alert(2)</script>"


@contextmanager
def serving(store: Any, **options: Any) -> Iterator[str]:
    """The UI over ``store`` served by uvicorn in a thread, on a free loopback port; yields its base URL."""
    import uvicorn

    from weightslab.ui.app import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    app = create_app(store, **options)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the UI server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def start_demo(store: str, name: str, cwd: Path) -> subprocess.Popen[str]:
    """Start ``python -m weightslab.demo --store STORE --name NAME`` (about 15 s): a real store with two branches."""
    return subprocess.Popen([sys.executable, "-m", "weightslab.demo", "--store", store, "--name", name], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_demo(run: subprocess.Popen[str]) -> None:
    """Wait for a demo started by :func:`start_demo`; it must succeed."""
    try:
        out, err = run.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        run.kill()
        run.communicate()
        raise
    assert run.returncode == 0, out[-2000:] + err[-3000:]


def build_hostile_store(target: str) -> int:
    """An experiment whose name, configuration, actor and payloads are markup; returns its id.

    Its events go through the Store API (a train, an eval, a deny whose recorded query is markup, and
    an event of an unknown kind whose payload is shown as stored), its statistics rows too.
    """
    import numpy as np

    from weightslab.events.domain import Evaluated, SamplesDenied, StepsTrained
    from weightslab.history.store import Store

    with Store.open(target) as store:
        exp = store.create_experiment(HOSTILE_NAME, config={"config": {HOSTILE_TEXT: HOSTILE_TEXT,
                                                                       "learning_rate": 0.1}})
        events = [StepsTrained(steps=1, age_before=0, age_after=4, loss=0.5, accuracy=0.5),
                  Evaluated(full=True, loss=0.6, accuracy=0.4, model_age=4),
                  SamplesDenied(split="train", mode="where", query=f"prediction_loss > 9 or '{HOSTILE_TEXT}' == ''",
                                changed=1)]
        seq = 0
        for event in events:
            seq = store.append_event(exp.experiment_id, event.kind, event.to_payload(), expected_last_seq=seq,
                                     actor=HOSTILE_TEXT, code_version=HOSTILE_TEXT).seq
        store.append_event(exp.experiment_id, f"kind{HOSTILE_TEXT}", {"note": HOSTILE_TEXT}, expected_last_seq=seq)
        n = 8
        store.write_sample_rows(exp.experiment_id, [("train", {
            "sample_id": np.arange(n), "prediction_age": np.full(n, 4.0), "prediction_loss": np.linspace(0.1, 2, n),
            "exposure_amount": np.ones(n, dtype=np.int64), "deny_listed": np.arange(n) == 3,
            "prediction": np.zeros(n), "label": np.arange(n) % 3})])
        return exp.experiment_id
