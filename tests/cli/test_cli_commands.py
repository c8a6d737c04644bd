"""Each subcommand against a recorded store on SQLite and PostgreSQL.

On SQLite every subcommand runs once as a subprocess (the way a user runs it);
its other output formats, and the PostgreSQL runs, go in-process (the same
code, without a second of interpreter start-up each).
"""

from __future__ import annotations

import csv
import io
import json

import pandas as pd
import pytest
from cli_helpers import call_cli, run_cli
from store_builder import NAME, tamper


@pytest.fixture
def first_run(built, capsys):
    """``weightslab ARGS`` as a subprocess on SQLite, in-process on PostgreSQL: (exit code, stdout, stderr)."""
    def run(*args: str) -> tuple[int, str, str]:
        if built.store.engine.dialect.name == "sqlite":
            out = run_cli(*args)
            return out.returncode, out.stdout, out.stderr
        return call_cli(capsys, *args)

    return run


def test_experiments_lists_names_with_event_and_checkpoint_counts(first_run, built, capsys):
    code, out, err = first_run("experiments", "--store", built.target)
    assert code == 0, err
    assert NAME in out and "checkpoints" in out
    rows = json.loads(call_cli(capsys, "experiments", "--store", built.target, "--json")[1])
    assert [(r["name"], r["events"], r["checkpoints"]) for r in rows] == [(NAME, 16, 4)]


def test_events_lists_seq_time_kind_summary_who_and_code_version(first_run, built, capsys):
    code, out, err = first_run("events", NAME, "--store", built.target, "--from", "5", "--to", "7")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["seq", "time", "(UTC)"] and "who" in lines[0] and "code version" in lines[0]
    assert len(lines) == 2 + 3
    assert "prune layer 0 {0}" in lines[2] and "deny 3 train samples" in lines[3] and "dump checkpoint 1" in lines[4]
    assert "weightslab 0.1.0 git abc1234" in lines[2] and "@" in lines[2]
    rows = list(csv.DictReader(io.StringIO(call_cli(capsys, "events", NAME, "--store", built.target, "--csv")[1])))
    assert [int(r["seq"]) for r in rows] == list(range(1, 17))
    assert json.loads(rows[5]["payload"])["args"]["ids"] == [1, 2, 3]
    records = json.loads(call_cli(capsys, "events", NAME, "--store", built.target, "--json", "--from", "16")[1])
    assert [(r["seq"], r["kind"], r["payload"]["steps"]) for r in records] == [(16, "train", 2)]


def test_audit_exits_0_on_a_sound_store_and_1_naming_the_first_bad_seq(first_run, built, capsys):
    code, out, _ = call_cli(capsys, "audit", NAME, "--store", built.target)
    assert code == 0 and out.startswith("OK")
    tamper(built.store, "UPDATE events SET kind = 'freeze' WHERE experiment_id = :e AND seq = 9",
           {"e": built.experiment_id})
    code, out, _ = first_run("audit", "--all", "--store", built.target)
    assert code == 1
    assert "seq 9" in out
    code, out, _ = call_cli(capsys, "audit", "--store", built.target, "--json")
    assert code == 1 and json.loads(out)["experiments"][0]["first_bad_seq"] == 9


def test_lineage_prints_the_tree_as_text_dot_mermaid_and_json(first_run, built, capsys):
    code, text, err = first_run("lineage", NAME, "--store", built.target)
    assert code == 0, err
    assert "checkpoint 3" in text and "parent 1" in text
    dot = call_cli(capsys, "lineage", NAME, "--store", built.target, "--format", "dot")[1]
    assert dot.startswith("digraph") and "c1 -> c3" in dot
    assert "c0 --" in call_cli(capsys, "lineage", NAME, "--store", built.target, "--format", "mermaid")[1]
    tree = json.loads(call_cli(capsys, "lineage", NAME, "--store", built.target, "--json")[1])
    assert {c["checkpoint_id"]: c["parent_id"] for c in tree["checkpoints"]} == {0: None, 1: 0, 2: 0, 3: 1}


def test_diff_shows_events_tensors_architecture_and_ledger(first_run, built, capsys):
    code, out, err = first_run("diff", NAME, "1", "2", "--store", built.target)
    assert code == 0, err
    assert "common ancestor: checkpoint 0" in out
    assert "[1, 4] → [2, 6]" in out
    assert "train: 1 newly denied {5}, 3 newly allowed {1, 2, 3}" in out
    d = json.loads(call_cli(capsys, "diff", NAME, "0", "3", "--store", built.target, "--json")[1])
    assert [e["seq"] for e in d["events_to_b"]] == [5, 6, 7, 12, 13, 14, 15]
    assert {c["split"]: c["newly_denied"] for c in d["ledger"]}["train"] == [1, 3, 10, 11, 12, 13, 14]


def test_sql_prints_a_table_json_csv_and_writes_files(first_run, built, capsys, tmp_path):
    q = "SELECT kind, COUNT(*) AS n FROM events GROUP BY kind ORDER BY kind"
    code, table, err = first_run("sql", q, "--store", built.target)
    assert code == 0, err
    assert table.splitlines()[0].split() == ["kind", "n"]
    rows = json.loads(call_cli(capsys, "sql", q, "--store", built.target, "--json")[1])
    assert {r["kind"]: r["n"] for r in rows}["dump"] == 4
    assert "dump,4" in call_cli(capsys, "sql", q, "--store", built.target, "--csv")[1]
    for name in ("kinds.parquet", "kinds.csv"):
        target = tmp_path / name
        code, out, err = call_cli(capsys, "sql", "SELECT seq, kind, payload FROM events WHERE seq <= :s ORDER BY seq",
                                  "-p", "s", "3", "--store", built.target, "--output", str(target))
        assert code == 0 and "wrote 3 row(s)" in out, err
        frame = pd.read_parquet(target) if name.endswith("parquet") else pd.read_csv(target)
        assert frame["kind"].tolist() == ["create", "train", "eval"]
        assert json.loads(frame["payload"][1])["steps"] == 3


def test_sql_refuses_a_write_with_a_clear_message_and_exit_2(built):
    out = run_cli("sql", "COMMIT; DELETE FROM experiments", "--store", built.target)
    assert out.returncode == 2
    assert "read-only" in out.stderr and "Traceback" not in out.stderr
    assert len(built.store.list_experiments()) == 1


def test_export_writes_the_four_parquet_files(first_run, built, tmp_path):
    code, out, err = first_run("export", NAME, str(tmp_path / "out"), "--store", built.target)
    assert code == 0, err
    for table, rows in (("events", 16), ("sample_stats", 20), ("neuron_stats", 2), ("sample_history", 16)):
        assert f"{table}.parquet ({rows} rows)" in out
        assert len(pd.read_parquet(tmp_path / "out" / f"{table}.parquet")) == rows


def test_store_defaults_to_the_environment_variable(built, capsys, monkeypatch):
    monkeypatch.setenv("WEIGHTSLAB_STORE", built.target)
    code, out, _ = call_cli(capsys, "experiments")
    assert code == 0 and NAME in out


def test_one_format_option_with_json_and_csv_as_shorthands(built, capsys):
    for cmd in (["experiments"], ["events", NAME, "--from", "3", "--to", "4"], ["sql", "SELECT seq, kind FROM events"]):
        for fmt in ("json", "csv", "table"):
            long_form = call_cli(capsys, *cmd, "--store", built.target, "--format", fmt)
            short_form = call_cli(capsys, *cmd, "--store", built.target, f"--{fmt}")
            assert long_form == short_form and long_form[0] == 0, (cmd, fmt)
        with pytest.raises(SystemExit) as info:
            call_cli(capsys, *cmd, "--store", built.target, "--json", "--csv")
        assert info.value.code == 2 and "not allowed with" in capsys.readouterr().err
    for cmd in (["audit", NAME], ["lineage", NAME], ["diff", NAME, "1", "2"]):
        code, out, _ = call_cli(capsys, *cmd, "--store", built.target, "--format", "json")
        assert code == 0 and isinstance(json.loads(out), dict), cmd


def test_tables_align_numbers_right_and_cut_long_cells(built, capsys):
    code, out, _ = call_cli(capsys, "sql", "SELECT kind, COUNT(*) AS n, MAX(hash) AS hash FROM events "
                            "GROUP BY kind ORDER BY n DESC", "--store", built.target)
    header, rule, *rows = out.splitlines()
    assert code == 0 and header.split() == ["kind", "n", "hash"] and set(rule) == {"-", " "}
    n_end = header.index(" n") + 2
    assert all(row[n_end - 1].isdigit() and row[n_end] == " " for row in rows)  # right-aligned under "n"
    assert max(len(c) for row in rows for c in row.split("  ") if c) <= 60 and "…" in out


def test_read_only_commands_leave_the_database_file_untouched(tmp_path, capsys):
    from store_builder import build_store

    build_store(str(tmp_path / "store")).store.close()
    db = tmp_path / "store" / "weightslab.db"
    before = (db.read_bytes(), db.stat().st_mtime_ns)
    for cmd in (["experiments"], ["events", NAME], ["audit"], ["lineage", NAME], ["diff", NAME, "1", "2"],
                ["sql", "SELECT COUNT(*) FROM events"], ["export", NAME, str(tmp_path / "out")], ["db", "current"]):
        code, _, err = call_cli(capsys, *cmd, "--store", str(tmp_path / "store"))
        assert code == 0, (cmd, err)
    assert (db.read_bytes(), db.stat().st_mtime_ns) == before
