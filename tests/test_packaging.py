"""The wheel ships what a store needs at run time, migrations included."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(ROOT)], check=True, capture_output=True)
    (whl,) = out.glob("weightslab-*.whl")
    return whl


def test_wheel_contains_migrations_and_every_subpackage(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("weightslab/migrations/env.py", "weightslab/migrations/script.py.mako",
                   "weightslab/migrations/versions/0001_initial_schema.py", "weightslab/cli/__init__.py"):
        assert needed in names
    for pkg in (p for p in (ROOT / "weightslab").rglob("__init__.py")):
        rel = pkg.relative_to(ROOT).as_posix()
        assert rel in names, f"{rel} is missing from the wheel: list it in pyproject [tool.setuptools] packages"


def test_installed_wheel_creates_a_store_without_the_checkout(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    str(wheel)], check=True, capture_output=True)
    code = (
        "import weightslab.history.migrate as m, sys;"
        "from weightslab.history.store import Store;"
        f"s = Store.open({str(tmp_path / 'store')!r});"
        "print(m.migrations_dir())"
    )
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True).stdout.strip()
    assert out.startswith(str(target))
    assert (tmp_path / "store" / "weightslab.db").exists()
