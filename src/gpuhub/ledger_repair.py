"""``gpuhub ledger check`` and ``gpuhub ledger repair``: what is wrong with a ledger file, and a new
ledger rebuilt from every row that can still be read.

Repair never works in place: it first copies the damaged file (and its write-ahead log) next to
it, builds the new ledger in a temporary file, and only then swaps it in. A row whose state is not
one gpuhub knows becomes ``unknown`` and a row whose request or plan is not JSON keeps an empty
one, each with the reason saying so; the original text stays in the backup. Schema 1 ledgers (before
failover) are sound as they are and become schema 2 when rebuilt; in a schema 2 ledger an attempt
pointing to a missing first attempt stands on its own again, and a failover that cannot be read or
whose job is gone is dropped (the job itself stays).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpuhub.errors import GpuhubError
from gpuhub.ledger import COLUMNS, COLUMNS_2, SCHEMA_VERSION, Ledger, schema_of
from gpuhub.ledger_file import SQLITE_MAGIC
from gpuhub.states import State

_STATES = {s.value for s in State}
MAX_LISTED = 20  # problems printed by `ledger check`


@dataclass
class Report:
    path: Path
    problems: list[str] = field(default_factory=list)
    rows: int = 0  # rows that can be read
    unreadable: int = 0  # rows that are there but cannot be read
    backup: Path | None = None
    fixed: int = 0
    failovers: int = 0  # failovers kept by a repair
    newer: bool = False  # written by a newer gpuhub: upgrade, never repair

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "ok": self.ok, "problems": self.problems, "rows": self.rows,
                "unreadable": self.unreadable, "backup": str(self.backup) if self.backup else None,
                "fixed": self.fixed, "failovers": self.failovers}


def _open_ro(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    db.row_factory = sqlite3.Row
    return db


def _is_sqlite(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(len(SQLITE_MAGIC))
    return head == SQLITE_MAGIC or head == b""


def check(path: Path) -> Report:
    """Every problem of the ledger at ``path``, without changing it."""
    report = Report(path)
    if not path.exists():
        return report
    if path.is_dir():
        report.problems.append("is a directory, not a ledger file")
        return report
    try:
        if not _is_sqlite(path):
            report.problems.append("is not an SQLite database (its first bytes are not 'SQLite format 3')")
            return report
        db = _open_ro(path)
    except (OSError, sqlite3.Error) as exc:
        report.problems.append(f"cannot be opened: {exc}")
        return report
    try:
        _check_db(db, report)
    finally:
        db.close()
    return report


def _check_db(db: sqlite3.Connection, report: Report) -> None:
    try:
        lines = [r[0] for r in db.execute("PRAGMA integrity_check(20)")]
    except sqlite3.DatabaseError as exc:
        lines = [str(exc)]
    if lines != ["ok"]:
        report.problems.extend(f"SQLite: {line}" for line in lines)
    tables = _tables(db)
    if tables is None:
        report.problems.append("its table list cannot be read")
        return
    if not tables:
        return  # an empty database: gpuhub will set it up
    if "jobs" not in tables:
        report.problems.append(f"has no jobs table (tables: {', '.join(sorted(tables))}): not a gpuhub ledger")
        return
    missing = [c for c in COLUMNS if c not in tables["jobs"]]
    if missing:
        report.problems.append(f"its jobs table lacks {', '.join(missing)}: not a gpuhub ledger")
        return
    version = _schema_version(db)
    numeric = version is not None and version.isascii() and version.isdigit()
    if numeric and int(version) > SCHEMA_VERSION:
        report.newer = True
        report.problems.append(f"written by a newer gpuhub (schema {version}, this one knows {SCHEMA_VERSION}): "
                               "upgrade gpuhub instead of repairing")
        return
    if version is None:
        report.problems.append("it has no schema_version (its meta table is lost)")
    elif not numeric or int(version) < 1:
        report.problems.append(f"schema_version is {str(version)[:20]!r}, not a schema number")
    have = int(version) if numeric else schema_of(tables["jobs"])
    report.problems.extend(_missing(tables, have))
    rows, report.unreadable = salvage(db)
    report.rows = len(rows)
    if report.unreadable:
        report.problems.append(f"{report.unreadable} row(s) of the jobs table cannot be read")
    ids = {row["id"] for row in rows}
    for row in rows:
        for problem in row_problems(row, ids):
            report.problems.append(f"job {row.get('id')}: {problem}")
    for failover in _failovers(db) if "failovers" in tables else []:
        for problem in failover_problems(failover, ids):
            report.problems.append(f"failover of job {failover.get('job_id')}: {problem}")


def _missing(tables: dict[str, set[str]], have: int) -> Iterator[str]:
    """The tables and columns a ledger of schema ``have`` must hold but this one lacks."""
    for table in ("state_history", "meta"):
        if table not in tables:
            yield f"has no {table} table"
    if have >= 2:
        lacking = [c for c in COLUMNS_2 if c not in tables["jobs"]]
        if lacking:
            yield f"its jobs table lacks {', '.join(lacking)} (schema {have})"
        if "failovers" not in tables:
            yield f"has no failovers table (schema {have})"


def _tables(db: sqlite3.Connection) -> dict[str, set[str]] | None:
    try:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {n: {r[1] for r in db.execute(f"PRAGMA table_info({json.dumps(n)})")} for n in names}
    except sqlite3.DatabaseError:
        return None


def _schema_version(db: sqlite3.Connection) -> str | None:
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.DatabaseError:
        return None
    return row[0] if row else None


def salvage(db: sqlite3.Connection) -> tuple[list[dict[str, Any]], int]:
    """Every readable row of ``jobs`` (as dicts), and how many could not be read."""
    rows: dict[int, dict[str, Any]] = {}
    try:
        for row in db.execute("SELECT * FROM jobs ORDER BY id"):
            rows[row["id"]] = dict(row)
        return list(rows.values()), 0
    except sqlite3.DatabaseError:
        pass
    # A damaged page stops the scan: read the rest one id at a time.
    try:
        top = db.execute("SELECT max(id) FROM jobs").fetchone()[0] or 0
    except sqlite3.DatabaseError:
        top = max(rows, default=0) + 10_000
    unreadable = 0
    for job_id in range(1, top + 1):
        if job_id in rows:
            continue
        try:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        except sqlite3.DatabaseError:
            unreadable += 1
            continue
        if row is not None:
            rows[job_id] = dict(row)
    return [rows[k] for k in sorted(rows)], unreadable


def row_problems(row: dict[str, Any], ids: set[int] | None = None) -> Iterator[str]:
    if row.get("state") not in _STATES:
        yield f"unknown state {str(row.get('state'))[:40]!r}"
    for column in ("request", "plan"):
        try:
            if not isinstance(json.loads(row.get(column) or ""), dict):
                yield f"{column} is not a JSON object"
        except (TypeError, ValueError):
            yield f"{column} is not valid JSON"
    for column in ("token", "site", "scheduler", "name", "script", "created_at", "updated_at"):
        if row.get(column) is None:
            yield f"{column} is empty"
    first = row.get("attempt_of")
    if first is not None and ids is not None and (first not in ids or first == row.get("id")):
        yield f"attempt of job {str(first)[:20]}, which is not in the ledger"
    if "attempt" in row and not (isinstance(row["attempt"], int) and 1 <= row["attempt"] <= 10_000):
        yield f"attempt number {str(row['attempt'])[:20]!r} is not a positive number"


def failover_problems(row: dict[str, Any], ids: set[int], moving: bool = True) -> Iterator[str]:
    """What is wrong with a failovers row; ``moving=False`` leaves out the one a repair can fix."""
    if row.get("job_id") not in ids:
        yield "its job is not in the ledger"
    try:
        targets = json.loads(row.get("targets") or "")
        if not isinstance(targets, list) or not all(isinstance(t, dict) for t in targets):
            yield "targets is not a JSON list of objects"
    except (TypeError, ValueError):
        yield "targets is not valid JSON"
    if not isinstance(row.get("after"), int | float) or not 0 <= row["after"] < float("inf"):
        yield f"after is {str(row.get('after'))[:20]!r}, not a number of seconds"
    if moving and row.get("moving") is not None and row["moving"] not in ids:
        yield f"moving attempt {str(row['moving'])[:20]} is not in the ledger"
    if not isinstance(row.get("updated_at"), int | float):
        yield "updated_at is not a time"


def _failovers(db: sqlite3.Connection) -> list[dict[str, Any]]:
    try:
        return [dict(r) for r in db.execute("SELECT * FROM failovers ORDER BY job_id")]
    except sqlite3.DatabaseError:
        return []


def _fixed(row: dict[str, Any], ids: set[int]) -> tuple[dict[str, Any], bool]:
    problems = list(row_problems(row, ids))
    if not problems:
        return row, False
    out = dict(row)
    now = time.time()
    if out.get("attempt_of") is not None and (out["attempt_of"] not in ids or out["attempt_of"] == out.get("id")):
        out["attempt_of"] = None  # its first attempt is gone: it stands on its own
    if "attempt" in out and not (isinstance(out["attempt"], int) and 1 <= out["attempt"] <= 10_000):
        out["attempt"] = 1
    if out.get("state") not in _STATES:
        out["state"] = State.UNKNOWN.value
    for column in ("request", "plan"):
        try:
            if not isinstance(json.loads(out.get(column) or ""), dict):
                raise ValueError
        except (TypeError, ValueError):
            out[column] = "{}"
    defaults = {"token": f"repaired-{row.get('id')}", "site": "?", "scheduler": "?", "name": "?", "script": "",
                "created_at": now, "updated_at": now}
    for column, value in defaults.items():
        if out.get(column) is None:
            out[column] = value
    out["reason"] = ("repaired: " + "; ".join(problems))[:500]
    return out, True


def repair(path: Path) -> Report:
    """Back the ledger up, then replace it with one holding every readable row."""
    report = check(path)
    if report.ok:
        return report
    if report.newer:
        raise GpuhubError(f"ledger {path} was written by a newer gpuhub: upgrade gpuhub; nothing was changed")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backup = path.with_name(f"{path.name}.broken-{stamp}")
    shutil.copy2(path, backup)
    for suffix in ("-wal", "-shm"):
        extra = Path(f"{path}{suffix}")
        if extra.exists():
            shutil.copy2(extra, Path(f"{backup}{suffix}"))
    report.backup = backup
    rows: list[dict[str, Any]] = []
    history: list[tuple[Any, ...]] = []
    failovers: list[dict[str, Any]] = []
    if _is_sqlite(path):
        try:
            db = _open_ro(backup)  # the copy, so a -wal of the original is not replayed twice
            try:
                tables = _tables(db) or {}
                if set(COLUMNS) <= tables.get("jobs", set()):
                    rows, report.unreadable = salvage(db)
                    history = _history(db)
                    failovers = _failovers(db) if "failovers" in tables else []
            finally:
                db.close()
        except sqlite3.Error:
            rows = []
    tmp = path.with_name(f".{path.name}.repair-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        fresh = Ledger(tmp)
        try:
            with fresh.transaction() as out:
                _rebuild(out, rows, history, failovers, report)
            fresh.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            fresh.close()
        for suffix in ("-wal", "-shm"):  # the old log must never be replayed onto the new file
            Path(f"{path}{suffix}").unlink(missing_ok=True)
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    report.rows = len(rows)
    return report


def _rebuild(out: Any, rows: list[dict[str, Any]], history: list[tuple[Any, ...]],
             failovers: list[dict[str, Any]], report: Report) -> None:
    """Fill a fresh ledger (in its open transaction) with the salvaged rows, fixed where needed."""
    out.execute("PRAGMA defer_foreign_keys = ON")  # an attempt may be read before its first attempt
    ids = {row["id"] for row in rows}
    for row in rows:
        fixed, changed = _fixed(row, ids)
        report.fixed += changed
        names = [c for c in (*COLUMNS, *COLUMNS_2) if c in fixed]
        out.execute(
            f"INSERT OR IGNORE INTO jobs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
            [fixed[c] for c in names],
        )
    # A row dropped as a duplicate leaves no attempt pointing at it.
    out.execute("UPDATE jobs SET attempt_of = NULL WHERE attempt_of NOT IN (SELECT id FROM jobs)")
    kept = {r[0] for r in out.execute("SELECT id FROM jobs")}
    for fo in failovers:
        if any(failover_problems(fo, kept, moving=False)):
            continue  # it cannot move anything any more: the job stays, without its failover
        out.execute(
            "INSERT OR IGNORE INTO failovers (job_id, targets, after, moving, done, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (fo["job_id"], fo["targets"], fo["after"], fo.get("moving") if fo.get("moving") in kept else None,
             fo.get("done"), fo["updated_at"]),
        )
        report.failovers += 1
    out.executemany(
        "INSERT OR IGNORE INTO state_history SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM jobs WHERE id = ?)",
        [(*h, h[0]) for h in history],
    )


def _history(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
    try:
        return [tuple(r) for r in db.execute("SELECT job_id, state, at FROM state_history")]
    except sqlite3.DatabaseError:
        return []
