"""The ledger: every submission, its script, its states. SQLite in the user data dir by default.

Writes are keyed on natural keys (the submission token, ``(site, scheduler_id)``) so re-running
anything never records a job twice. WAL mode lets a watcher read while a submitter writes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpuhub.errors import GpuhubError, shown
from gpuhub.ledger_file import ADVICE, Guarded, LedgerError, connect, open_db
from gpuhub.paths import user_data_dir
from gpuhub.states import JobStatus, State, exit_status

SCHEMA_VERSION = 2
_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS jobs (
        id INTEGER PRIMARY KEY,
        token TEXT NOT NULL UNIQUE,
        site TEXT NOT NULL,
        scheduler TEXT NOT NULL,
        scheduler_id TEXT,
        name TEXT NOT NULL,
        request TEXT NOT NULL,
        plan TEXT NOT NULL,
        script TEXT NOT NULL,
        log_out TEXT,
        log_err TEXT,
        state TEXT NOT NULL,
        reason TEXT,
        nodes TEXT,
        exit_code TEXT,
        created_at REAL NOT NULL,
        submitted_at REAL,
        started_at REAL,
        ended_at REAL,
        updated_at REAL NOT NULL,
        UNIQUE (site, scheduler_id)
    )""",
    "CREATE INDEX IF NOT EXISTS jobs_site_state ON jobs (site, state)",
    """CREATE TABLE IF NOT EXISTS state_history (
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        state TEXT NOT NULL,
        at REAL NOT NULL,
        PRIMARY KEY (job_id, state)
    )""",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
]
# Schema 2: a logical job may have several attempts (failover between sites). Later attempts point
# to the first with ``attempt_of``; ``failovers`` holds the plan's targets and the move in progress.
_MIGRATIONS = {
    2: [
        "ALTER TABLE jobs ADD COLUMN attempt_of INTEGER REFERENCES jobs(id)",
        "ALTER TABLE jobs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1",
        "CREATE INDEX IF NOT EXISTS jobs_attempt_of ON jobs (attempt_of)",
        """CREATE TABLE IF NOT EXISTS failovers (
            job_id INTEGER PRIMARY KEY REFERENCES jobs(id),
            targets TEXT NOT NULL,
            after REAL NOT NULL,
            moving INTEGER,
            done TEXT,
            updated_at REAL NOT NULL
        )""",
    ],
}


COLUMNS = (
    "id", "token", "site", "scheduler", "scheduler_id", "name", "request", "plan", "script", "log_out", "log_err",
    "state", "reason", "nodes", "exit_code", "created_at", "submitted_at", "started_at", "ended_at", "updated_at",
)
COLUMNS_2 = ("attempt_of", "attempt")  # added to jobs by schema 2
def ledger_path() -> Path:
    override = os.environ.get("GPUHUB_LEDGER")
    return Path(override).expanduser() if override else user_data_dir() / "ledger.sqlite"


@dataclass(frozen=True)
class JobRecord:
    id: int
    token: str
    site: str
    scheduler: str
    scheduler_id: str | None
    name: str
    request: dict[str, Any]
    plan: dict[str, Any]
    script: str
    log_out: str | None
    log_err: str | None
    state: State
    reason: str | None
    nodes: str | None
    exit_code: str | None
    created_at: float
    submitted_at: float | None
    started_at: float | None
    ended_at: float | None
    updated_at: float
    attempt_of: int | None = None  # the first attempt of this logical job; None: this is the first
    attempt: int = 1

    @property
    def exit_status(self) -> int | None:
        return exit_status(self.exit_code)

    @property
    def ref(self) -> str:
        return f"{self.site}:{self.scheduler_id}" if self.scheduler_id else f"{self.site}:?"

    def to_dict(self, full: bool = False) -> dict[str, Any]:
        """The job record of every ``--json`` output; docs/json-output.md is its schema."""
        submitted = _not_before(self.submitted_at, self.created_at)
        started = _not_before(self.started_at, submitted)
        data = {
            "id": self.id,
            "site": self.site,
            "scheduler": self.scheduler,
            "scheduler_id": self.scheduler_id,
            "ref": self.ref,
            "name": self.name,
            "state": self.state.value,
            "reason": self.reason,
            "exit_code": self.exit_status,
            "gpus": self.plan.get("gpus"),
            "nodes": self.plan.get("nodes"),
            "hosts": self.nodes,
            "created_at": self.created_at,
            "submitted_at": submitted,
            "started_at": started,
            "ended_at": _not_before(self.ended_at, started or submitted),
            "log_out": _shown_path(self.log_out),
            "log_err": _shown_path(self.log_err),
            "attempt": self.attempt,
            "attempt_of": self.attempt_of,
        }
        if full:
            data.update(token=self.token, request=self.request, plan=self.plan, script=self.script)
        return data


GHOST_AFTER = 600.0  # seconds a submission may stay without a scheduler id before it counts as dead


def is_ghost(record: JobRecord, now: float | None = None) -> bool:
    """A row that stands for no job: the site no longer knows it, or its submission never got through."""
    if record.state == State.UNKNOWN:
        return True
    now = time.time() if now is None else now
    return record.scheduler_id is None and now - record.updated_at > GHOST_AFTER


def _not_before(ts: float | None, earlier: float | None) -> float | None:
    """Sites stamp whole seconds on their own clock: never show a start before its submission."""
    if ts is None or earlier is None:
        return ts
    return max(ts, earlier)


def _shown_path(path: str | None) -> str | None:
    """A log path as a user can use it: relative paths are relative to the home directory on the site."""
    if path is None or path.startswith(("/", "~")):
        return path
    return f"~/{path}"


class Ledger:
    """The jobs store.

    ``mode="write"`` (submit, cancel) creates the file if needed and refuses a ledger it cannot
    write. ``mode="read"`` (jobs) never writes nor creates anything: a missing ledger reads as
    empty. ``mode="auto"`` (status, logs) writes when it can; on a read-only ledger it works on a copy in
    memory, so states are shown fresh but not saved (``read_only`` tells which).
    A damaged or foreign file raises :class:`LedgerError` naming it and what to do.
    """

    def __init__(self, path: Path | None = None, mode: str = "write") -> None:
        self.path = path or ledger_path()
        db, self.read_only = open_db(self.path, mode)
        self.db = Guarded(db, self.path)
        self.db.row_factory = sqlite3.Row
        self._migrate()

    @classmethod
    def open_read_only(cls, path: Path) -> Ledger:
        """A ledger for readers that must never create or migrate one (the exporter).

        Raises GpuhubError when there is no ledger at ``path``, sqlite3.Error when it cannot be read.
        """
        if not path.is_file():
            raise GpuhubError(f"no ledger at {path}")
        book = cls.__new__(cls)
        book.path = path
        book.read_only = True
        book.db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10,
                                  isolation_level=None, check_same_thread=False)
        book.db.row_factory = sqlite3.Row
        return book

    def _migrate(self) -> None:
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and not tables & {"jobs", "meta", "state_history", "failovers"}:
            raise LedgerError(
                f"{self.path} is not a gpuhub ledger (it holds tables {', '.join(sorted(tables)[:3])}); "
                "set GPUHUB_LEDGER to another file, or move it away"
            )
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(jobs)")} if "jobs" in tables else set()
        missing = [c for c in COLUMNS if c not in columns]
        if columns and missing:
            raise LedgerError(
                f"{self.path} is not a gpuhub ledger (its jobs table has no {', '.join(missing[:3])}); "
                "set GPUHUB_LEDGER to another file, or move it away"
            )
        version = None
        if "meta" in tables:
            row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            version = row[0] if row else None
        if version is not None and not (isinstance(version, str) and version.isascii() and version.isdigit()):
            raise LedgerError(f"ledger {self.path} has a schema_version of {shown(version)}, not a number; {ADVICE}")
        if version is not None and int(version) > SCHEMA_VERSION:
            raise LedgerError(
                f"ledger {self.path} was written by a newer gpuhub (schema {version}, this one knows "
                f"{SCHEMA_VERSION}); upgrade gpuhub"
            )
        # Without its schema_version (meta lost), a ledger's columns tell how far it was migrated.
        have = int(version) if version is not None else schema_of(columns)
        if tables and have >= 2 and not (set(COLUMNS_2) <= columns and "failovers" in tables):
            raise LedgerError(f"ledger {self.path} says schema {have} but lacks its attempts or failovers; {ADVICE}")
        if self.read_only:
            if tables and not {"jobs", "state_history"} <= tables:
                raise LedgerError(f"ledger {self.path} lacks some of its tables; {ADVICE}")
            if not tables or have < SCHEMA_VERSION:
                self._upgrade_in_memory(have if tables else 0)
            return
        with self.transaction():
            for statement in _SCHEMA:
                self.db.execute(statement)
            # A new ledger gets every migration too: one path, tested on every run.
            for step in range(max(have, 1) + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[step]:
                    self.db.execute(statement)
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def _upgrade_in_memory(self, have: int) -> None:
        """A read-only ledger of an older schema (or none yet), brought to this one in a copy in memory:
        commands read every table as they expect, and nothing is written to the file."""
        if not self.db.in_memory:
            copy = connect(":memory:")
            self.db.backup(copy)
            self.db.close()
            self.db = Guarded(copy, self.path)
            self.db.row_factory = sqlite3.Row
        for statement in _SCHEMA if have == 0 else []:
            self.db.execute(statement)
        for step in range(max(have, 1) + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[step]:
                self.db.execute(statement)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()

    # --- writes ---------------------------------------------------------------------------

    def add(
        self,
        *,
        token: str,
        site: str,
        scheduler: str,
        name: str,
        request: dict[str, Any],
        plan: dict[str, Any],
        script: str,
        attempt_of: int | None = None,
        attempt: int = 1,
    ) -> JobRecord:
        """Record a submission about to be sent (state ``submitting``); idempotent on ``token``."""
        now = time.time()
        with self.transaction() as db:
            db.execute(
                """INSERT INTO jobs (token, site, scheduler, name, request, plan, script, state,
                                     created_at, updated_at, attempt_of, attempt)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (token) DO NOTHING""",
                (token, site, scheduler, name, json.dumps(request), json.dumps(plan), script,
                 State.SUBMITTING.value, now, now, attempt_of, attempt),
            )
            row = db.execute("SELECT id FROM jobs WHERE token = ?", (token,)).fetchone()
            db.execute("INSERT OR IGNORE INTO state_history VALUES (?, ?, ?)", (row[0], State.SUBMITTING.value, now))
        return self.get(row[0])

    def mark_submitted(self, job_id: int, scheduler_id: str, log_out: str | None, log_err: str | None) -> JobRecord:
        now = time.time()
        with self.transaction() as db:
            db.execute(
                """UPDATE jobs SET scheduler_id = ?, state = ?, submitted_at = ?, updated_at = ?,
                                  log_out = ?, log_err = ?
                   WHERE id = ?""",
                (scheduler_id, State.PENDING.value, now, now, log_out, log_err, job_id),
            )
            db.execute("INSERT OR IGNORE INTO state_history VALUES (?, ?, ?)", (job_id, State.PENDING.value, now))
        return self.get(job_id)

    def mark_failed_submit(self, job_id: int, reason: str, state: State = State.FAILED) -> None:
        """End a row that never got a scheduler id (``failed``, or ``cancelled`` before it was sent)."""
        prefix = "submission failed: " if state == State.FAILED else ""
        now = time.time()
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE jobs SET state = ?, reason = ?, updated_at = ? WHERE id = ? AND scheduler_id IS NULL",
                (state.value, f"{prefix}{reason}"[:500], now, job_id),
            )
            if cur.rowcount:
                db.execute("INSERT OR IGNORE INTO state_history VALUES (?, ?, ?)", (job_id, state.value, now))

    def set_reason(self, job_id: int, reason: str) -> None:
        """Say why a job is where it is without changing its state."""
        with self.transaction() as db:
            db.execute("UPDATE jobs SET reason = ?, updated_at = ? WHERE id = ?", (reason[:500], time.time(), job_id))

    def update_status(self, updates: Iterable[tuple[int, JobStatus]]) -> None:
        """Store poll results; a finished job never goes back to an unfinished state."""
        now = time.time()
        with self.transaction() as db:
            for job_id, st in updates:
                row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is None or (State(row[0]).finished and not st.state.finished):
                    continue
                db.execute(
                    # The node list seen while running (squeue) wins: sacct's can lag behind at job end.
                    """UPDATE jobs SET state = ?, reason = ?, nodes = COALESCE(nodes, ?),
                           exit_code = COALESCE(?, exit_code), started_at = COALESCE(?, started_at),
                           ended_at = COALESCE(?, ended_at), updated_at = ?
                       WHERE id = ?""",
                    (st.state.value, st.reason, st.nodes, st.exit_code, st.start, st.end, now, job_id),
                )
                db.execute("INSERT OR IGNORE INTO state_history VALUES (?, ?, ?)", (job_id, st.state.value, now))

    def forget(self, job_ids: Iterable[int]) -> list[JobRecord]:
        """Remove jobs and their history in one transaction; returns the records removed."""
        removed = []
        with self.transaction() as db:
            for job_id in dict.fromkeys(job_ids):
                row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is None:
                    continue
                db.execute("DELETE FROM state_history WHERE job_id = ?", (job_id,))
                # A later attempt of a forgotten first attempt stands on its own from now on.
                db.execute("DELETE FROM failovers WHERE job_id = ?", (job_id,))
                db.execute("UPDATE jobs SET attempt_of = NULL WHERE attempt_of = ?", (job_id,))
                db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
                removed.append(_record(row, self.path))
        return removed

    def start_failover(self, job_id: int, targets: list[dict[str, Any]], after: float) -> None:
        """Let job ``job_id`` move along ``targets`` (its own site first) when pending ``after`` seconds."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO failovers (job_id, targets, after, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (job_id) DO NOTHING",
                (job_id, json.dumps(targets), after, time.time()),
            )

    _UNSET: Any = object()

    def set_failover(self, job_id: int, moving: Any = _UNSET, done: Any = _UNSET) -> None:
        sets, args = ["updated_at = ?"], [time.time()]
        if moving is not self._UNSET:
            sets.append("moving = ?")
            args.append(moving)
        if done is not self._UNSET:
            sets.append("done = ?")
            args.append(done[:500] if done else done)
        with self.transaction() as db:
            db.execute(f"UPDATE failovers SET {', '.join(sets)} WHERE job_id = ?", (*args, job_id))

    # --- reads ----------------------------------------------------------------------------

    def failover(self, job_id: int) -> Failover | None:
        row = self.db.execute("SELECT * FROM failovers WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        try:
            targets = json.loads(row["targets"])
            if not isinstance(targets, list) or not all(isinstance(t, dict) for t in targets):
                raise ValueError("targets is not a JSON list of objects")
            return Failover(row["job_id"], targets, float(row["after"]), row["moving"], row["done"])
        except (ValueError, TypeError) as exc:
            raise LedgerError(f"ledger {self.path}: the failover of job {job_id} cannot be read "
                              f"({shown(str(exc))}); {ADVICE}") from None

    def active_failovers(self) -> list[int]:
        return [r[0] for r in self.db.execute("SELECT job_id FROM failovers WHERE done IS NULL ORDER BY job_id")]

    def attempts(self, job_id: int) -> list[JobRecord]:
        """Every attempt of the logical job whose first attempt is ``job_id``, first first."""
        rows = self.db.execute(
            "SELECT * FROM jobs WHERE id = ? OR attempt_of = ? ORDER BY attempt, id", (job_id, job_id)
        )
        return [_record(r, self.path) for r in rows]

    def get(self, job_id: int) -> JobRecord:
        row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise GpuhubError(f"no job {job_id} in the ledger ({self.path}); see `gpuhub jobs`")
        return _record(row, self.path)

    def by_ref(self, site: str, scheduler_id: str) -> JobRecord | None:
        row = self.db.execute(
            "SELECT * FROM jobs WHERE site = ? AND scheduler_id = ?", (site, scheduler_id)
        ).fetchone()
        return _record(row, self.path) if row else None

    def by_token(self, token: str) -> JobRecord | None:
        row = self.db.execute("SELECT * FROM jobs WHERE token = ?", (token,)).fetchone()
        return _record(row, self.path) if row else None

    def jobs(self, site: str | None = None, active_only: bool = False, limit: int | None = None) -> list[JobRecord]:
        sql, args = "SELECT * FROM jobs", []
        where = []
        if site:
            where.append("site = ?")
            args.append(site)
        if active_only:
            finished = ",".join(f"'{s.value}'" for s in State if s.finished)
            where.append(f"state NOT IN ({finished})")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [_record(r, self.path) for r in self.db.execute(sql, args)]

    def gpu_seconds(self) -> list[tuple[str, str, str, str, float]]:
        """GPU-seconds of finished jobs by (site, project, account, GPU model); aggregated in SQLite.

        A job counts ``gpus x (ended_at - started_at)``; an array job counts as one allocation of its
        ``gpus`` over its whole span. Empty strings where the request or plan says nothing.
        """
        finished = ",".join(f"'{s.value}'" for s in State if s.finished)
        rows = self.db.execute(f"""
            SELECT site, COALESCE(json_extract(request, '$.project'), ''),
                   COALESCE(json_extract(plan, '$.account'), json_extract(request, '$.account'), ''),
                   COALESCE(json_extract(plan, '$.gpu_model'), ''),
                   SUM(COALESCE(json_extract(plan, '$.gpus'), 0) * MAX(ended_at - started_at, 0))
            FROM jobs
            WHERE state IN ({finished}) AND started_at IS NOT NULL AND ended_at IS NOT NULL
            GROUP BY 1, 2, 3, 4""")
        return [(r[0], r[1], r[2], r[3], float(r[4] or 0)) for r in rows]

    def submission_counts(self) -> dict[tuple[str, str], int]:
        """Submissions by (site, ``accepted`` | ``failed``): accepted got a scheduler id."""
        rows = self.db.execute("""
            SELECT site, CASE WHEN scheduler_id IS NOT NULL THEN 'accepted' ELSE 'failed' END, COUNT(*)
            FROM jobs WHERE scheduler_id IS NOT NULL OR state = 'failed' GROUP BY 1, 2""")
        return {(r[0], r[1]): int(r[2]) for r in rows}

    def history(self, job_id: int) -> list[tuple[str, float]]:
        rows = self.db.execute("SELECT state, at FROM state_history WHERE job_id = ? ORDER BY at", (job_id,))
        return [(r[0], r[1]) for r in rows]


@dataclass(frozen=True)
class Failover:
    job_id: int  # the first attempt
    targets: list[dict[str, Any]]  # {site, partition, gpu_model}, in plan order, the first site first
    after: float  # seconds pending before a move
    moving: int | None  # the attempt being cancelled to move on, if a move is under way
    done: str | None  # why no more moves will happen, once none will


def schema_of(columns: set[str]) -> int:
    """The schema a ledger's jobs columns show (for a ledger whose schema_version was lost)."""
    return 2 if set(COLUMNS_2) <= columns else 1


def _record(row: sqlite3.Row, path: Path | None = None) -> JobRecord:
    data = dict(row)
    try:
        data["request"] = json.loads(data["request"])
        data["plan"] = json.loads(data["plan"])
        if not isinstance(data["request"], dict) or not isinstance(data["plan"], dict):
            raise ValueError("request or plan is not a JSON object")
        data["state"] = State(data["state"])
        return JobRecord(**data)
    except (ValueError, TypeError, KeyError) as exc:
        where = f"ledger {path}" if path else "the ledger"
        raise LedgerError(f"{where}: job {data.get('id')} cannot be read ({shown(str(exc))}); {ADVICE}") from None
