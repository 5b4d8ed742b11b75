"""A damaged, foreign or read-only ledger: clear errors, `gpuhub ledger check` / `repair`, and commands
that only read never write or create anything. Through the real command line."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from bad_inputs import HEALTHY_ROWS, LEDGERS, cli, healthy_ledger

ROW_DAMAGE = ["unknown-state", "bad-json", "null-plan", "schema-text", "no-meta",
              "v2-dangling-attempt", "v2-bad-failover", "v2-orphan-failover", "v2-no-failovers", "v2-no-meta"]
FILE_DAMAGE = ["garbage", "truncated", "corrupt-page", "foreign-schema"]


def _ledger(home: Path, kind: str) -> Path:
    path = home / "data" / "ledger.sqlite"
    path.parent.mkdir(parents=True)
    LEDGERS[kind](path)
    return path


def _tokens(path: Path) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {r[0] for r in db.execute("SELECT token FROM jobs")}
    finally:
        db.close()


@pytest.mark.parametrize("kind", ROW_DAMAGE + FILE_DAMAGE)
def test_check_finds_damage_and_repair_keeps_every_readable_row(tmp_path, kind):
    path = _ledger(tmp_path, kind)
    original = path.read_bytes()
    check = cli(["ledger", "check", "--json"], tmp_path)
    assert check.returncode == 2, check.stderr
    assert json.loads(check.stdout)["problems"]
    assert path.read_bytes() == original  # check changes nothing

    repair = cli(["ledger", "repair", "--json"], tmp_path)
    assert repair.returncode == 0, repair.stderr
    report = json.loads(repair.stdout)
    assert Path(report["backup"]).read_bytes() == original  # backed up first, byte for byte
    if kind in ROW_DAMAGE:
        assert report["rows"] == HEALTHY_ROWS and len(_tokens(path)) == HEALTHY_ROWS  # no readable row lost
    assert cli(["ledger", "check"], tmp_path).returncode == 0
    listed = cli(["jobs", "-n", "0", "--json"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == report["rows"]
    if kind == "unknown-state":
        fixed = next(j for j in json.loads(listed.stdout) if j["id"] == HEALTHY_ROWS)
        assert fixed["state"] == "unknown" and "exploded" in fixed["reason"]


@pytest.mark.parametrize("kind", ["healthy", "healthy-2"])  # schema 1 (before failover) and 2
def test_repair_of_a_sound_ledger_changes_nothing(tmp_path, kind):
    path = _ledger(tmp_path, kind)
    assert cli(["ledger", "check"], tmp_path).returncode == 0
    before = path.read_bytes()
    result = cli(["ledger", "repair"], tmp_path)
    assert result.returncode == 0 and "nothing to repair" in result.stdout
    assert path.read_bytes() == before and not list(path.parent.glob("*.broken-*"))


def _query(path: Path, sql: str) -> list[tuple]:
    db = sqlite3.connect(path)
    try:
        return list(db.execute(sql))
    finally:
        db.close()


def test_repair_keeps_attempts_and_failovers_it_can_read(tmp_path):
    path = _ledger(tmp_path, "v2-dangling-attempt")
    assert cli(["ledger", "repair"], tmp_path).returncode == 0
    assert _query(path, "SELECT value FROM meta WHERE key = 'schema_version'") == [("2",)]
    assert _query(path, "SELECT attempt_of, attempt FROM jobs WHERE id = 39") == [(None, 2)]  # stands alone
    assert _query(path, "SELECT job_id, done FROM failovers") == [(38, "attempt 2 ran")]
    assert "attempt of job 999" in _query(path, "SELECT reason FROM jobs WHERE id = 39")[0][0]

    other = tmp_path / "other"
    path = _ledger(other, "v2-bad-failover")
    check = cli(["ledger", "check"], other)
    assert check.returncode == 2 and "failover of job 38: targets is not valid JSON" in check.stdout
    assert cli(["ledger", "repair"], other).returncode == 0
    assert _query(path, "SELECT attempt_of FROM jobs WHERE id = 39") == [(38,)]  # the attempts stay linked
    assert _query(path, "SELECT count(*) FROM failovers") == [(0,)]  # it can move nothing: dropped
    status = cli(["status", "39", "--json"], other)
    assert status.returncode == 0, status.stderr


def test_schema_1_ledger_is_migrated_by_the_first_write(tmp_path):
    path = _ledger(tmp_path, "healthy")
    assert cli(["jobs"], tmp_path).returncode == 0
    assert _query(path, "SELECT value FROM meta WHERE key = 'schema_version'") == [("1",)]  # reading writes nothing
    result = cli(["submit", "--", "true"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert _query(path, "SELECT value FROM meta WHERE key = 'schema_version'") == [("2",)]
    assert len(_tokens(path)) == HEALTHY_ROWS + 1
    assert cli(["ledger", "check"], tmp_path).returncode == 0


def test_newer_ledger_is_not_repaired(tmp_path):
    path = _ledger(tmp_path, "schema-99")
    before = path.read_bytes()
    result = cli(["ledger", "repair"], tmp_path)
    assert result.returncode != 0 and "newer gpuhub" in result.stderr
    assert path.read_bytes() == before


@pytest.mark.parametrize("kind", ["healthy", "healthy-2"])
def test_read_only_ledger_still_serves_jobs_and_status(tmp_path, kind):
    path = _ledger(tmp_path, kind)
    before = path.read_bytes()
    listed = cli(["jobs", "-n", "0", "--json"], tmp_path, read_only=True)
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == HEALTHY_ROWS
    status = cli(["status", "1", "2", "--json"], tmp_path, read_only=True)
    assert status.returncode == 0, status.stderr
    assert [j["id"] for j in json.loads(status.stdout)] == [1, 2]
    attempts = cli(["status", "39"], tmp_path, read_only=True)  # reads the attempts of schema 2, even on 1
    assert attempts.returncode == 0, attempts.stderr
    if kind == "healthy-2":
        assert "job 38 attempts: #1 local:tok0038 completed -> #2 local:tok0039 completed" in attempts.stdout
    assert "read-only" in status.stderr
    logs = cli(["ledger", "check"], tmp_path, read_only=True)
    assert logs.returncode == 0, logs.stderr
    submit = cli(["submit", "--", "true"], tmp_path, read_only=True)
    assert submit.returncode == 2 and "read-only" in submit.stderr and "Traceback" not in submit.stderr
    assert path.read_bytes() == before


def test_read_only_wal_ledger_without_its_shm_file(tmp_path):
    """A WAL ledger left with a -wal file on a read-only mount: read through, nothing lost."""
    path = _ledger(tmp_path, "healthy")
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("UPDATE jobs SET name = 'fresh' WHERE id = 1")
    db.commit()
    keep = sqlite3.connect(path)  # a reader keeps the -wal file from being checkpointed away
    keep.execute("SELECT 1").fetchall()
    listed = cli(["jobs", "-n", "0", "--json"], tmp_path, read_only=True)
    keep.close()
    db.close()
    assert listed.returncode == 0, listed.stderr
    assert next(j for j in json.loads(listed.stdout) if j["id"] == 1)["name"] == "fresh"


@pytest.mark.parametrize(
    "argv",
    [["jobs"], ["jobs", "--json"], ["status"], ["logs", "1"], ["cancel", "1"], ["sites", "list"],
     ["render", "--", "true"], ["ledger", "check"], ["usage", "report", "--db", "{home}/nonexistent/dir/x.db"],
     ["failover", "1"], ["jobs", "forget", "1"]],
)
def test_read_only_commands_create_no_files(tmp_path, argv):
    home = tmp_path / "home"
    home.mkdir()
    cache = tmp_path / "cache"  # the validated-site cache is the one thing they may write
    cli(argv, home, env={"GPUHUB_CACHE_DIR": str(cache)})
    assert sorted(p.relative_to(home).as_posix() for p in home.rglob("*")) == []


def test_damaged_ledger_error_names_file_and_what_to_do(tmp_path):
    path = _ledger(tmp_path, "garbage")
    result = cli(["status"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert str(path) in result.stderr and "gpuhub ledger repair" in result.stderr


def test_a_fresh_ledger_is_created_by_submit(tmp_path):
    result = cli(["submit", "--", "true"], tmp_path)
    assert result.returncode == 0, result.stderr
    path = tmp_path / "data" / "ledger.sqlite"
    assert cli(["ledger", "check"], tmp_path).returncode == 0
    healthy = tmp_path / "other.sqlite"
    healthy_ledger(healthy)
    assert cli(["ledger", "check", "--ledger", str(healthy)], tmp_path).returncode == 0
    assert path.exists()


def test_control_characters_are_escaped_in_tables_and_site_descriptions(tmp_path):
    _ledger(tmp_path, "escape-name")
    for argv in (["jobs"], ["status", str(HEALTHY_ROWS)]):
        result = cli(argv, tmp_path)
        assert result.returncode == 0, result.stderr
        assert "\x1b" not in result.stdout and "\x07" not in result.stdout
        assert "\\x1b]0;pwned" in result.stdout
    sites = tmp_path / "config" / "sites"
    sites.mkdir(parents=True)
    (sites / "esc.yaml").write_text(
        'scheduler: local\ndescription: "\\e[2J\\e]0;owned\\a"\npartitions: {d: {gpus_per_node: 0}}\n'
    )
    for argv in (["sites", "show", "esc"], ["sites", "list"]):
        result = cli(argv, tmp_path)
        assert result.returncode == 0, result.stderr
        assert "\x1b" not in result.stdout and "\\x1b[2J" in result.stdout
