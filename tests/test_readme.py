"""The README tells the truth: its Python runs, its commands exist, its CLI list is complete."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_python_blocks_run(tmp_path):
    blocks = python_blocks()
    assert blocks, "the README has no python example"
    for i, code in enumerate(blocks):
        script = tmp_path / f"block{i}.py"
        script.write_text(code)
        result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                                timeout=600, env={"WEIGHTSLAB_STORE": str(tmp_path / "store"), "PATH": "/usr/bin:/bin"})
        assert result.returncode == 0, f"README python block {i} failed:\n{result.stderr[-3000:]}"


def test_readme_names_the_two_commands_and_ci_runs_the_test_one():
    assert "make demo" in README and "make test" in README
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, flags=re.M)


def test_every_cli_subcommand_is_documented_in_the_readme():
    from weightslab.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in sub.choices:
        assert f"weightslab {name}" in README, f"`weightslab {name}` is not documented in the README"


def test_public_all_is_sorted_and_importable():
    import weightslab

    assert weightslab.__all__ == sorted(weightslab.__all__)
    for name in weightslab.__all__:
        assert getattr(weightslab, name) is not None
