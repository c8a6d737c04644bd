"""Running the ``weightslab`` command in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            code: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m weightslab.cli ARGS`` (or ``python -c CODE ARGS``) in a subprocess."""
    full_env = {k: v for k, v in os.environ.items() if k != "WEIGHTSLAB_STORE"}
    full_env.update(env or {})
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "weightslab.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=full_env, timeout=120, check=False)


def call_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``weightslab ARGS`` in this process (fast); returns (exit code, stdout, stderr)."""
    from weightslab.cli import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err
