"""The test side of the fork server (``reliability_harness.py``): spawn, watch, kill."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HARNESS = Path(__file__).with_name("reliability_harness.py")


class ForkServer:
    """A running ``reliability_harness.py``; every line it prints becomes a dict in a queue."""

    def __init__(self, cwd: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != "WEIGHTSLAB_STORE"}
        env["PYTHONUNBUFFERED"] = "1"
        self._proc = subprocess.Popen(
            [sys.executable, str(HARNESS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd=cwd, env=env,
        )
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._stderr: list[str] = []
        self.log: list[dict[str, Any]] = []
        self.live: dict[str, int] = {}  # tag -> pid of workers not known to have exited
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()
        self.wait_for(lambda e: e["ev"] == "server-ready", timeout=120)

    def _pump(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                self._events.put(json.loads(line))
            except json.JSONDecodeError:
                self._stderr.append(line.decode(errors="replace"))

    def _pump_err(self) -> None:
        assert self._proc.stderr is not None
        for line in self._proc.stderr:
            self._stderr.append(line.decode(errors="replace"))
            del self._stderr[:-200]

    def spawn(self, **cmd: Any) -> int:
        """Fork one worker; returns its pid."""
        assert self._proc.stdin is not None
        self._proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self._proc.stdin.flush()
        ev = self.wait_for(lambda e: e["ev"] == "spawned" and e["tag"] == cmd["tag"], timeout=30)
        self.live[cmd["tag"]] = ev["pid"]
        return ev["pid"]

    def next_event(self, timeout: float) -> dict[str, Any] | None:
        try:
            ev = self._events.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None
        self.log.append(ev)
        if ev["ev"] == "exited":
            for tag, pid in list(self.live.items()):
                if pid == ev["pid"]:
                    del self.live[tag]
        if ev["ev"] == "error":
            raise AssertionError(f"worker {ev['tag']} failed: {ev['type']}: {ev['message']}\n{ev['traceback']}")
        return ev

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout}s; last events: {self.log[-5:]}; "
                                     f"stderr: {''.join(self._stderr[-20:])}")
            ev = self.next_event(left)
            if ev is not None and pred(ev):
                return ev

    def kill(self, tag: str) -> dict[str, Any]:
        """SIGKILL worker ``tag`` and wait until the server has reaped it (returns the exit record)."""
        pid = self.live[tag]
        os.kill(pid, signal.SIGKILL)
        return self.wait_for(lambda e: e["ev"] == "exited" and e["pid"] == pid, timeout=30)

    def wait_exit(self, tag: str, timeout: float = 120) -> dict[str, Any]:
        pid = self.live.get(tag)
        if pid is None:
            return next(e for e in reversed(self.log) if e["ev"] == "exited")
        return self.wait_for(lambda e: e["ev"] == "exited" and e["pid"] == pid, timeout=timeout)

    def close(self) -> None:
        for pid in list(self.live.values()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        for stream in (self._proc.stdout, self._proc.stderr):
            if stream is not None:
                stream.close()
