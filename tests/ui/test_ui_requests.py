"""The UI's one write: requests for a running experiment, filed from its pages.

The light tests post through Starlette's TestClient (who may write, what a form files); the browser
test files requests with Chromium's clicks while a real training process runs, and watches each
request's status move to the event it became (or the reason it was refused).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from ui_helpers import serving

from weightslab.events.domain import RecordedEvent
from weightslab.history.store import Store
from weightslab.ui.app import create_app

TRAINER = Path(__file__).parents[1] / "cli" / "request_trainer.py"
BASE = "http://127.0.0.1:8765"
FROM_THE_PAGE = {"origin": BASE, "hx-request": "true"}


@pytest.fixture
def registered(tmp_path) -> str:
    target = str(tmp_path / "store")
    with Store.open(target) as store:
        store.create_experiment("x0")
    return target


def _filed(target: str) -> list:
    with Store.open(target, create=False, read_only=True) as store:
        return store.list_requests(store.get_experiment("x0").experiment_id)


def test_a_form_posted_from_the_page_files_a_request_and_answers_its_status(registered):
    with TestClient(create_app(registered, warm=False, thumbnails=False), base_url=BASE) as c:
        r = c.post("/experiments/1/requests", data={"action": "prune", "layer": "1", "neurons": "0,3"},
                   headers=FROM_THE_PAGE)
        assert r.status_code == 200 and 'data-status="pending"' in r.text and "prune" in r.text
        r = c.post("/experiments/1/requests", data={"action": "deny_selected", "split": "eval", "ids": ["4", "9"]},
                   headers=FROM_THE_PAGE)
        assert r.status_code == 200
        listed = c.get("/experiments/1/requests")
        assert listed.text.count('class="request pending"') == 2
    (prune, deny) = _filed(registered)
    assert (prune.kind, prune.payload, prune.requested_by) == (
        "prune", {"layer_index": 1, "neuron_indices": [0, 3]}, "ui@testclient")
    assert (deny.kind, deny.payload) == ("deny", {"split": "eval", "mode": "ids", "ids": [4, 9]})


@pytest.mark.parametrize(("form", "says"), [
    ({"action": "prune", "layer": "1", "neurons": "a"}, "is not a list of indices"),
    ({"action": "add", "layer": "one", "count": "2"}, "layer must be a whole number"),
    ({"action": "deny_selected", "split": "train"}, "select samples first"),
    ({"action": "deny_filtered", "split": "train", "where": ""}, "filter the samples first"),
    ({"action": "reboot"}, "unknown action"),
])
def test_a_bad_form_says_what_is_wrong_and_files_nothing(registered, form, says):
    with TestClient(create_app(registered, warm=False, thumbnails=False), base_url=BASE) as c:
        r = c.post("/experiments/1/requests", data=form, headers=FROM_THE_PAGE)
    assert r.status_code == 200 and 'id="request-error"' in r.text and says in r.text
    assert _filed(registered) == []


@pytest.mark.parametrize(("headers", "says"), [
    ({"origin": "http://evil.example", "hx-request": "true"}, "may not write to this UI"),
    ({"sec-fetch-site": "cross-site", "hx-request": "true"}, "from another site"),
    ({"origin": BASE}, "own pages (or with"),  # a plain form post, without htmx's header
])
def test_a_write_from_another_site_is_refused(registered, headers, says):
    with TestClient(create_app(registered, warm=False, thumbnails=False), base_url=BASE) as c:
        r = c.post("/experiments/1/requests", data={"action": "dump"}, headers=headers)
        assert c.get("/experiments/1/requests", headers=headers).status_code == 200  # reading stays open
    assert r.status_code == 403 and says in r.text
    assert _filed(registered) == []


def test_a_read_only_ui_shows_no_edit_buttons_and_refuses_writes(registered):
    with TestClient(create_app(registered, warm=False, thumbnails=False, read_only=True), base_url=BASE) as c:
        r = c.post("/experiments/1/requests", data={"action": "dump"}, headers=FROM_THE_PAGE)
    assert r.status_code == 403 and "--read-only" in r.text
    assert _filed(registered) == []


def test_off_loopback_a_write_needs_the_token(registered):
    app = create_app(registered, warm=False, thumbnails=False, token="s3cret", loopback=False)
    base = "http://10.1.2.3:8765"
    with TestClient(app, base_url=base, follow_redirects=False) as c:
        refused = c.post("/experiments/1/requests", data={"action": "dump"},
                         headers={"origin": base, "hx-request": "true"})
        assert refused.status_code == 401 and _filed(registered) == []
        accepted = c.post("/experiments/1/requests", data={"action": "dump"},
                          headers={"origin": base, "hx-request": "true", "authorization": "Bearer s3cret"})
    assert accepted.status_code == 200 and [r.kind for r in _filed(registered)] == ["dump"]


def test_a_request_of_another_experiment_is_not_shown_under_this_one(registered):
    with Store.open(registered) as store:
        store.create_experiment("x1")
        store.file_request("x1", "dump", {})
    with TestClient(create_app(registered, warm=False, thumbnails=False), base_url=BASE) as c:
        assert c.get("/experiments/1/requests/1").status_code == 404
        assert c.get("/experiments/2/requests/1").status_code == 200


# -- in a browser, against a running experiment ---------------------------------------------------------------

@pytest.mark.slow
def test_chromium_files_requests_that_the_running_experiment_applies_and_shows_them_as_they_move(
        page, store_target, tmp_path):
    stop = tmp_path / "stop"
    trainer = subprocess.Popen([sys.executable, str(TRAINER), store_target, "live", str(stop)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert trainer.stdout is not None and trainer.stdout.readline().strip() == "ready", trainer.stderr
        with serving(store_target, warm=False, thumbnails=False) as url:
            page.goto(url + "/experiments/1/neurons")
            page.select_option("#neuron-request select[name=action]", "prune")
            page.fill("#neuron-request input[name=layer]", "1")
            page.fill("#neuron-request input[name=neurons]", "0,2")
            page.click("#neuron-request-submit")
            page.wait_for_selector('.request[data-status="applied"]', timeout=60_000)
            applied = page.locator('.request[data-status="applied"]').first
            assert "prune layer 1 {0, 2}" in applied.inner_text()
            page.fill("#neuron-request input[name=layer]", "9")
            page.click("#neuron-request-submit")
            page.wait_for_selector('.request[data-status="refused"]', timeout=60_000)
            assert "layer_index 9 is out of range" in page.locator('.request[data-status="refused"]').inner_text()
            page.click("#dump-request")
            page.wait_for_function("() => document.querySelectorAll('.request[data-status=\"applied\"]').length == 2",
                                   timeout=60_000)

            page.goto(url + "/experiments/1/samples?split=train&where=prediction_loss+%3E+2")
            page.click("#deny-filtered")
            page.wait_for_selector('.request[data-status="applied"] >> text=deny', timeout=60_000)
            page.locator("tr.sample input[type=checkbox]").nth(0).check()
            page.locator("tr.sample input[type=checkbox]").nth(1).check()
            page.click("#allow-selected")
            page.wait_for_function("() => document.querySelectorAll('.request[data-status=\"applied\"]').length == 4",
                                   timeout=60_000)
            page.select_option("#checkpoint-request select[name=checkpoint]", "0")
            page.click("#load-request")
            page.wait_for_function("() => document.querySelectorAll('.request[data-status=\"applied\"]').length == 5",
                                   timeout=60_000)
            page.screenshot(path=str(tmp_path / "requests.png"), full_page=True)
        stop.touch()
        assert trainer.wait(timeout=120) == 0
    finally:
        stop.touch()
        if trainer.poll() is None:
            trainer.kill()
        trainer.communicate()
    assert page.problems == []

    with Store.open(store_target, create=False, read_only=True) as store:
        row = store.get_experiment("live")
        requests = store.list_requests(row.experiment_id)
        events = {e.seq: RecordedEvent.from_row(e) for e in store.events(row.experiment_id)}
    assert [(r.kind, r.status) for r in requests] == [
        ("prune", "applied"), ("prune", "refused"), ("dump", "applied"), ("deny", "applied"), ("allow", "applied"),
        ("load", "applied")]
    for r in requests:
        if r.status == "applied":
            event = events[r.applied_seq]
            assert event.kind == r.kind and event.actor == "ui@127.0.0.1"
            assert event.event.request == r.request_id  # type: ignore[attr-defined]
    from weightslab.experiment.replica import replay_to, replica

    copy = replica(store_target, "live")
    try:
        outcome = replay_to(copy, from_start=True)
    finally:
        copy.store.close()
    assert outcome.ok and outcome.reached == max(events), outcome
