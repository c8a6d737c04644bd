"""The wheel ships the UI: its templates, its script and style, and the vendored libraries with their licences."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UI = ROOT / "weightslab" / "ui"


def test_the_wheel_holds_every_file_the_ui_serves(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("weightslab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    served = [p for folder in ("templates", "static") for p in (UI / folder).rglob("*") if p.is_file()]
    assert served
    missing = [str(p.relative_to(ROOT)) for p in served if p.relative_to(ROOT).as_posix() not in names]
    assert missing == []
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Provides-Extra: ui" in metadata
