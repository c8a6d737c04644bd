"""The benchmark command: side-by-side ordering, the ratio it reports, and its JSON output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(TOOLS))
    import bench as module

    monkeypatch.setattr(module, "RESULTS", [])
    return module


def test_sides_alternate_abba_and_the_ratio_is_the_median_of_adjacent_pairs(bench):
    calls: list[str] = []
    base_times = iter([1.0, 2.0, 1.0, 4.0])
    subject_times = iter([1.1, 2.4, 1.3, 4.0])

    def base() -> float:
        calls.append("b")
        return next(base_times)

    def subject() -> float:
        calls.append("s")
        return next(subject_times)

    b, s, ratio, b_runs, s_runs = bench.alternate(4, base, subject)
    assert calls == ["b", "s", "s", "b", "b", "s", "s", "b"]
    assert b_runs == [1.0, 2.0, 1.0, 4.0] and s_runs == [1.1, 2.4, 1.3, 4.0]
    assert (b, s) == (1.5, 1.85)  # medians of each side
    assert ratio == pytest.approx((1.1 + 1.2) / 2)  # median of 1.1, 1.2, 1.3, 1.0


def test_compare_records_met_or_missed_against_the_limit(bench):
    bench.compare("fast enough", (1.0, 1.05, 1.05, [1.0], [1.05]), 1.10)
    bench.compare("too slow", (1.0, 1.2, 1.2, [1.0], [1.2]), 1.10)
    bench.compare("throughput", (1.0, 0.8, 0.8, [1.0], [0.8]), 0.9, at_least=True)
    met = {r["scenario"]: r["met"] for r in bench.RESULTS}
    assert met == {"fast enough": True, "too slow": False, "throughput": False}
    assert bench.RESULTS[0]["runs"] == {"baseline": [1.0], "weightslab": [1.05]}


def test_the_command_writes_its_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, str(TOOLS / "bench.py"), "--only", "ledger_memory", "--json", str(out)],
                         capture_output=True, text=True, timeout=300, check=True)
    assert "ledger bytes/sample at 10^6" in run.stdout
    doc = json.loads(out.read_text())
    (result,) = doc["results"]
    assert result["unit"] == "B" and 0 < result["weightslab"] <= 64 and result["met"] is True
    assert "torch" in doc["machine"]
