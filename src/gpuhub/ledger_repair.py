"""``gpuhub ledger check`` and ``gpuhub ledger repair``: what is wrong with a ledger file, and a new
ledger rebuilt from every row that can still be read.

Repair never works in place: it first copies the damaged file (and its write-ahead log) next to
it, builds the new ledger in a temporary file, and only then swaps it in. A row whose state is not
one gpuhub knows becomes ``unknown`` and a row whose request or plan is not JSON keeps an empty
one, each with the reason saying so; the original text stays in the backup.
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
from gpuhub.ledger import COLUMNS, SCHEMA_VERSION, SQLITE_MAGIC, Ledger
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
    newer: bool = False  # written by a newer gpuhub: upgrade, never repair

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "ok": self.ok, "problems": self.problems, "rows": self.rows,
                "unreadable": self.unreadable, "backup": str(self.backup) if self.backup else None,
                "fixed": self.fixed}


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
    if version is not None and version.isascii() and version.isdigit() and int(version) > SCHEMA_VERSION:
        report.newer = True
        report.problems.append(f"written by a newer gpuhub (schema {version}, this one knows {SCHEMA_VERSION}): "
                               "upgrade gpuhub instead of repairing")
        return
    if version != str(SCHEMA_VERSION):
        report.problems.append(f"schema_version is {str(version)[:20]!r}, this gpuhub writes {SCHEMA_VERSION}")
    rows, report.unreadable = salvage(db)
    report.rows = len(rows)
    if report.unreadable:
        report.problems.append(f"{report.unreadable} row(s) of the jobs table cannot be read")
    for row in rows:
        for problem in row_problems(row):
            report.problems.append(f"job {row.get('id')}: {problem}")


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


def row_problems(row: dict[str, Any]) -> Iterator[str]:
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


def _fixed(row: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    problems = list(row_problems(row))
    if not problems:
        return row, False
    out = dict(row)
    now = time.time()
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
    if _is_sqlite(path):
        try:
            db = _open_ro(backup)  # the copy, so a -wal of the original is not replayed twice
            try:
                if set(COLUMNS) <= (_tables(db) or {}).get("jobs", set()):
                    rows, report.unreadable = salvage(db)
                    history = _history(db)
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
                for row in rows:
                    fixed, changed = _fixed(row)
                    report.fixed += changed
                    names = [c for c in COLUMNS if c in fixed]
                    out.execute(
                        f"INSERT OR IGNORE INTO jobs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                        [fixed[c] for c in names],
                    )
                out.executemany(
                    "INSERT OR IGNORE INTO state_history SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM jobs WHERE id = ?)",
                    [(*h, h[0]) for h in history],
                )
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


def _history(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
    try:
        return [tuple(r) for r in db.execute("SELECT job_id, state, at FROM state_history")]
    except sqlite3.DatabaseError:
        return []
