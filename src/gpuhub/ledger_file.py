"""Opening the ledger file: for reading, writing or a private copy, with every SQLite failure of a
damaged, foreign or read-only file turned into one :class:`LedgerError` line naming it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gpuhub.errors import GpuhubError, shown

SQLITE_MAGIC = b"SQLite format 3\x00"
ADVICE = "keep a copy of it, then run `gpuhub ledger check` and `gpuhub ledger repair`"


class LedgerError(GpuhubError):
    """The ledger file cannot be used as it is: damaged, not a ledger, newer, or read-only."""

    exit_code = 2


def open_db(path: Path, mode: str) -> tuple[sqlite3.Connection, bool]:
    """A connection to the ledger at ``path`` opened for ``mode`` (see :class:`gpuhub.ledger.Ledger`),
    and whether it is read-only; a missing ledger read is an empty database in memory."""
    if path.is_dir():
        raise LedgerError(f"ledger {path} is a directory; point GPUHUB_LEDGER at a file")
    exists = path.exists()
    if exists:
        _check_magic(path)
    if mode == "auto" and not exists:
        mode = "read"  # nothing recorded, so nothing to update: create nothing
    if mode == "read" and (not exists or path.stat().st_size == 0):
        return connect(":memory:"), True
    if mode != "read":
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = connect(path)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            if exists:
                db.execute("BEGIN IMMEDIATE")  # proves the file can be written
                db.execute("ROLLBACK")
            return db, False
        except (OSError, sqlite3.OperationalError) as exc:
            if not _read_only_error(exc) or mode == "write":
                raise _open_error(path, exc) from None
        except sqlite3.DatabaseError as exc:
            raise _open_error(path, exc) from None
        if not exists:
            raise LedgerError(f"cannot create the ledger {path}: its directory is read-only")
    try:
        source = connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        if mode == "read":
            source.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return source, True
        copy = connect(":memory:")
        source.backup(copy)  # status may record what it learns: in memory, never saved
        source.close()
        return copy, True
    except sqlite3.OperationalError as exc:
        if "unable to open" not in str(exc):
            raise _open_error(path, exc) from None
    except sqlite3.DatabaseError as exc:
        raise _open_error(path, exc) from None
    # A WAL ledger in a read-only directory without its -shm file: read it as an immutable file.
    return connect(f"{path.resolve().as_uri()}?immutable=1", uri=True), True


def _open_error(path: Path, exc: BaseException) -> LedgerError:
    if _read_only_error(exc):
        return LedgerError(
            f"ledger {path} is read-only ({exc}); this command records jobs: make the file and its "
            "directory writable, or set GPUHUB_LEDGER to another file"
        )
    return LedgerError(f"ledger {path} cannot be read ({shown(str(exc))}); {ADVICE}")


def connect(target: str | Path, uri: bool = False) -> sqlite3.Connection:
    return sqlite3.connect(target, timeout=30, isolation_level=None, check_same_thread=False, uri=uri)


def _check_magic(path: Path) -> None:
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise LedgerError(f"cannot read the ledger {path}: {exc.strerror or exc}") from None
    if head and head != SQLITE_MAGIC:
        raise LedgerError(f"ledger {path} is not an SQLite database (damaged, or another file); {ADVICE}")


def _read_only_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, PermissionError) or "readonly" in text or "read-only" in text


class Guarded:
    """The connection, with every SQLite failure turned into one :class:`LedgerError` line."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db, self._path = db, path
        self.in_memory = not db.execute("PRAGMA database_list").fetchone()[2]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("_db", "_path", "in_memory"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._db, name, value)

    def _error(self, exc: sqlite3.Error) -> GpuhubError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return GpuhubError(f"ledger {self._path} is busy (another gpuhub is writing); try again")
        if _read_only_error(exc):
            return LedgerError(f"ledger {self._path} is read-only; this command needs to record jobs")
        return LedgerError(f"ledger {self._path} is damaged ({shown(text)}); {ADVICE}")

    def execute(self, sql: str, args: Any = ()) -> Any:
        try:
            return _Rows(self._db.execute(sql, args), self)
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    def executemany(self, sql: str, args: Any) -> Any:
        try:
            return self._db.executemany(sql, args)
        except sqlite3.Error as exc:
            raise self._error(exc) from None


class _Rows:
    """A cursor whose row reads fail as the connection's do (a damaged page shows up while reading)."""

    def __init__(self, cursor: sqlite3.Cursor, owner: Guarded) -> None:
        self._cursor, self._owner = cursor, owner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())

    def fetchone(self) -> Any:
        try:
            return self._cursor.fetchone()
        except sqlite3.Error as exc:
            raise self._owner._error(exc) from None

    def fetchall(self) -> list[Any]:
        try:
            return self._cursor.fetchall()
        except sqlite3.Error as exc:
            raise self._owner._error(exc) from None
