"""Bad input gets a clear error, exit code 2, and changes nothing (no store is ever created)."""

from __future__ import annotations

import pytest
from cli_helpers import call_cli, run_cli
from sqlalchemy import create_engine, inspect
from store_builder import NAME, tamper

READ_ONLY = [
    ["experiments"], ["events", NAME], ["audit"], ["audit", NAME], ["lineage", NAME], ["diff", NAME, "0", "1"],
    ["sql", "SELECT 1"], ["export", NAME, "OUTDIR"],
]


def _args(cmd: list[str], tmp_path) -> list[str]:
    return [str(tmp_path / "exported") if a == "OUTDIR" else a for a in cmd]


@pytest.mark.parametrize("cmd", READ_ONLY, ids=[" ".join(c[:2]) for c in READ_ONLY])
def test_a_missing_store_is_refused_and_not_created(cmd, tmp_path, capsys):
    missing = tmp_path / "no" / "store"
    code, out, err = call_cli(capsys, *_args(cmd, tmp_path), "--store", str(missing))
    assert code == 2 and out == ""
    assert f"no store at {missing}" in err
    assert not (tmp_path / "no").exists() and not (tmp_path / "exported").exists()


def test_a_missing_store_is_refused_by_the_subprocess_too(tmp_path):
    out = run_cli("audit", "--store", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert out.returncode == 2 and "no store at" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "nowhere").exists()


def test_the_default_store_is_not_created_in_the_working_directory(tmp_path):
    out = run_cli("experiments", cwd=tmp_path)
    assert out.returncode == 2 and "no store at" in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_empty_directory_or_a_file_is_not_a_store(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = call_cli(capsys, "experiments", "--store", str(tmp_path / "empty"))
    assert code == 2 and "no store at" in err
    assert list((tmp_path / "empty").iterdir()) == []
    (tmp_path / "afile").write_text("x")
    code, _, err = call_cli(capsys, "experiments", "--store", str(tmp_path / "afile"))
    assert code == 2 and "is a file, not a directory" in err


def test_an_empty_postgres_database_is_refused_and_left_empty(pg_url, capsys):
    code, _, err = call_cli(capsys, "audit", "--store", pg_url)
    assert code == 2 and "no WeightsLab store" in err
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            assert inspect(conn).get_table_names() == []
    finally:
        engine.dispose()


def test_an_unreachable_server_is_a_clear_error(capsys):
    code, _, err = call_cli(capsys, "experiments", "--store", "postgresql+psycopg://nobody@127.0.0.1:1/nothing")
    assert code == 2 and "cannot be reached" in err


def test_an_unknown_experiment_names_the_existing_ones(built, tmp_path, capsys):
    for cmd in (["events", "nope"], ["audit", "nope"], ["lineage", "nope"], ["diff", "nope", "0", "1"],
                ["export", "nope", "OUTDIR"]):
        code, out, err = call_cli(capsys, *_args(cmd, tmp_path), "--store", built.target)
        assert code == 2 and out == "", cmd
        assert "no experiment named 'nope'" in err and "'x0'" in err, cmd
    assert not (tmp_path / "exported").exists()


def test_an_unknown_seq_gives_the_range_of_the_log(built, capsys):
    for flags, message in (
        (["--from", "0"], "--from seq 0 is not in experiment 'x0', which has events 1..16"),
        (["--from", "17"], "--from seq 17 is not in"),
        (["--to", "99"], "--to seq 99 is not in"),
        (["--from", "9", "--to", "3"], "--from seq 9 is after --to seq 3"),
    ):
        code, _, err = call_cli(capsys, "events", NAME, *flags, "--store", built.target)
        assert code == 2 and message in err, (flags, err)


def test_an_unknown_checkpoint_lists_the_existing_ones(built, capsys):
    code, _, err = call_cli(capsys, "diff", NAME, "1", "9", "--store", built.target)
    assert code == 2 and "checkpoint 9 does not exist in experiment 'x0'; its checkpoints: 0, 1, 2, 3" in err


def test_a_bad_output_file_name_is_refused_before_writing(built, tmp_path, capsys):
    code, _, err = call_cli(capsys, "sql", "SELECT 1", "--output", str(tmp_path / "out.txt"), "--store", built.target)
    assert code == 2 and ".csv or .parquet" in err
    assert not (tmp_path / "out.txt").exists()


def test_a_store_at_another_schema_version_is_refused_with_what_to_do(built, capsys):
    tamper(built.store, "UPDATE alembic_version SET version_num = 'ffffffffffff'")
    code, _, err = call_cli(capsys, "audit", "--store", built.target)
    assert code == 2 and "schema revision ffffffffffff" in err and "newer version" in err


def test_a_missing_blob_named_by_diff_is_a_clear_error(built, capsys):
    digest = built.tensors[2]["ledger/train/deny_listed"]
    if built.store.blobs.in_file(digest):
        built.store.blobs.path_of(digest).unlink()
    else:
        tamper(built.store, "DELETE FROM blob_contents WHERE hash = :h", {"h": digest})
    code, _, err = call_cli(capsys, "diff", NAME, "1", "2", "--store", built.target)
    assert code == 2 and digest in err and "missing" in err
