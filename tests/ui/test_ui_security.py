"""Who may read the UI, and what it shows of untrusted store content: text, never markup."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from starlette.testclient import TestClient
from ui_helpers import build_hostile_store

from weightslab.ui.app import create_app
from weightslab.ui.security import CSP, TOKEN_ENV, is_loopback, resolve_token

TOKEN = "t0ken-for-tests"


@pytest.fixture
def hostile(tmp_path):
    target = str(tmp_path / "store")
    return target, build_hostile_store(target)


def test_loopback_needs_no_token_any_other_host_gets_a_new_one_and_the_environment_sets_it():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("myhost")
    assert resolve_token("127.0.0.1", {}) is None
    first, second = resolve_token("0.0.0.0", {}), resolve_token("0.0.0.0", {})
    assert first and second and first != second and len(first) >= 32
    assert resolve_token("127.0.0.1", {TOKEN_ENV: "abc"}) == resolve_token("0.0.0.0", {TOKEN_ENV: "abc"}) == "abc"


def test_every_request_needs_the_token_which_sets_a_cookie_and_leaves_the_url(hostile):
    target, eid = hostile
    app = create_app(target, token=TOKEN, loopback=False, warm=False)
    with TestClient(app, base_url="http://10.1.2.3:8765", follow_redirects=False) as c:
        for path in ("/", f"/experiments/{eid}", f"/experiments/{eid}/samples", "/static/app.js", "/poll"):
            refused = c.get(path)
            assert refused.status_code == 401 and "needs its token" in refused.text, path
        assert c.get("/?token=wrong").status_code == 401
        assert c.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        entered = c.get(f"/experiments/{eid}/samples?token={TOKEN}&split=train")
        assert entered.status_code == 303 and entered.headers["location"] == f"/experiments/{eid}/samples?split=train"
        cookie = entered.headers["set-cookie"]
        assert TOKEN in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert c.get(f"/experiments/{eid}/samples?split=train").status_code == 200  # the cookie from now on


def test_on_loopback_only_loopback_host_names_are_answered(hostile):
    target, _ = hostile
    with TestClient(create_app(target, warm=False), base_url="http://127.0.0.1") as c:
        assert c.get("/").status_code == 200
        assert c.get("/", headers={"Host": "localhost:8765"}).status_code == 200
        assert c.get("/", headers={"Host": "attacker.example:8765"}).status_code == 400  # DNS rebinding


def test_every_response_carries_a_policy_that_runs_no_inline_or_foreign_script(hostile):
    target, eid = hostile
    with TestClient(create_app(target, warm=False), base_url="http://127.0.0.1") as c:
        for path in ("/", f"/experiments/{eid}", "/static/app.js", "/experiments/999"):
            r = c.get(path)
            assert r.headers["content-security-policy"] == CSP
            assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
    assert "script-src 'self';" in CSP and "unsafe" not in CSP


def test_a_hostile_name_config_actor_payload_and_kind_are_shown_as_text(hostile):
    target, eid = hostile
    pages = ["/", f"/experiments/{eid}", f"/experiments/{eid}/events", f"/experiments/{eid}/neurons",
             f"/experiments/{eid}/samples", f"/experiments/{eid}/samples?where=prediction_loss+>+0+and+%3Cscript%3E",
             f"/compare?id={eid}", f"/experiments/{eid}/lineage", f"/experiments/{eid}/curves"]
    with TestClient(create_app(target, warm=False), base_url="http://127.0.0.1") as c:
        for path in pages:
            html = c.get(path).text
            assert "<script>alert" not in html and "<img src=x" not in html, path
            assert not re.search(r"<script(?![^>]*(src=\"/static/|type=\"application/json\"))", html), path
        shown = c.get(f"/experiments/{eid}").text
        assert "&lt;script&gt;alert(&#39;name&#39;)&lt;/script&gt;" in shown  # the name, as text
        assert "&lt;img src=x onerror=alert(&#39;payload&#39;)&gt;" in shown  # actor, code version, payloads
        json_part = re.search(r"id=\"curves-data\" data-json='([^']*)'", shown).group(1)
        assert "<" not in json_part and "\\u003cimg" in json_part  # the charts' JSON cannot leave its attribute


def test_the_command_prints_a_token_url_off_loopback_and_refuses_requests_without_it(hostile):
    target, _ = hostile
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    proc = subprocess.Popen([sys.executable, "-m", "weightslab.cli", "ui", "--store", target, "--host", "0.0.0.0",
                             "--port", "0", "--no-thumbnails"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        line = proc.stdout.readline()
        found = re.search(r"open http://0\.0\.0\.0:(\d+)/\?token=([\w-]+)", line)
        assert found, line + proc.stderr.read() if proc.poll() is not None else line
        port, token = found.groups()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
        assert refused.value.code == 401
        refused.value.close()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_the_command_refuses_a_store_that_is_not_there_and_a_bad_port(tmp_path):
    missing = subprocess.run([sys.executable, "-m", "weightslab.cli", "ui", "--store", str(tmp_path / "nothing")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "weightslab: error" in missing.stderr
    assert not (tmp_path / "nothing").exists()  # never created
    bad = subprocess.run([sys.executable, "-m", "weightslab.cli", "ui", "--port", "70000"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "--port 70000" in bad.stderr
