"""The usage store's database plumbing: connecting (SQLite or PostgreSQL), one SQL dialect for
both, serialised write transactions, and migrations."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from gpuhub.accounting.sacct import AttrSet, RollupKey
from gpuhub.accounting.store_schema import _MIGRATIONS, _TYPES, SCHEMA_VERSION
from gpuhub.errors import ConfigError, GpuhubError

# Runs per multi-row INSERT (SQLite's limit of variables per statement permitting).
BULK_PER_INSERT = 3000
_Store = TypeVar("_Store", bound="StoreDB")


def default_url() -> str:
    from gpuhub.ledger import ledger_path

    return os.environ.get("GPUHUB_USAGE_DB") or str(ledger_path())


def _redact(url: str) -> str:
    head, sep, tail = url.partition("@")
    if not sep or "://" not in head:
        return url
    scheme, _, creds = head.partition("://")
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{tail}" if ":" in creds else url


def _connect_sqlite(path: Path) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=120, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA cache_size=-65536")
    except (OSError, sqlite3.Error) as exc:
        raise GpuhubError(f"cannot open the usage database {path}: {exc}") from None
    return db


def _connect_pg(url: str) -> Any:
    try:
        import psycopg
    except ImportError:
        raise ConfigError("a PostgreSQL usage database needs psycopg: pip install 'psycopg[binary]'") from None
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=20)
    except psycopg.Error as exc:
        raise GpuhubError(f"cannot connect to the usage database {_redact(url)}: {str(exc).strip()}") from None


class StoreDB:
    """A connection to the usage database (SQLite or PostgreSQL), its transactions and migrations."""

    def __init__(self, conn: Any, dialect: str, where: str) -> None:
        self.conn, self.dialect, self.where = conn, dialect, where
        self._sources: dict[tuple[str, str], int] = {}
        self._attrs: dict[int, dict[tuple[Any, ...], int]] = {}  # per source: attribute set -> attrs_id
        self._attr_info: dict[int, tuple[int, int | float]] = {}  # attrs_id -> (dims id, GPUs)
        self._dims: list[tuple[str, ...]] = []  # rollup keys (site, account, project, user, partition, model)
        self._dims_ids: dict[tuple[str, ...], int] = {}
        # The bulk path: the parser's tables it last used (attribute sets, rollup keys); per attribute
        # set its attrs_id, source, rollup key id and GPUs; per rollup key its id.
        self._bulk_table: list[AttrSet] | None = None
        self._bulk_ids: list[int] = []
        self._bulk_sources: list[int] = []
        self._bulk_info: list[tuple[int, int | float]] = []
        self._bulk_keys: list[RollupKey] = []
        self._bulk_key_ids: list[int] = []
        self._bulk_single = (0, True)  # (sources seen, all the same)
        self._insert_sql: dict[tuple[int, int], str] = {}
        self._max_variables = 999
        if dialect == "sqlite":
            self._max_variables = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self._migrate()

    def close(self) -> None:
        self.conn.close()

    def __enter__(self: _Store) -> _Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ---------------------------------------------------------------------------

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgresql" else sql

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(self._sql(sql), params)

    def _many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        if self.dialect == "postgresql":
            with self.conn.cursor() as cur:
                cur.executemany(self._sql(sql), rows)
        else:
            self.conn.executemany(sql, rows)

    def _many_values(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """executemany of an ``INSERT ... VALUES (?, ...) ...``; on SQLite as multi-row INSERTs, a third
        cheaper than a statement a row."""
        if self.dialect == "postgresql" or len(rows) < 2:
            self._many(sql, rows)
            return
        head, one, tail = _split_values(sql)
        width = one.count("?")
        per = max(1, min(BULK_PER_INSERT, self._max_variables // width))
        for i in range(0, len(rows), per):
            part = rows[i:i + per]
            self.conn.execute(f"{head}{', '.join([one] * len(part))}{tail}", [v for row in part for v in row])

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return list(self._exec(sql, params).fetchall())

    @contextmanager
    def _write(self) -> Iterator[None]:
        """One serialised write transaction; caches of ids are dropped if it does not commit."""
        try:
            if self.dialect == "postgresql":
                with self.conn.transaction():
                    self.conn.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema() || ':gpuhub-usage'))")
                    yield
            else:
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    yield
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise
                self.conn.execute("COMMIT")
        except BaseException:
            self._sources.clear()
            self._attrs.clear()
            self._attr_info.clear()
            self._bulk_table = None  # attribute sets written in that transaction are gone
            raise

    def _tables(self) -> set[str]:
        if self.dialect == "postgresql":
            rows = self._all("SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")
        else:
            rows = self._all("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
        return {r[0] for r in rows}

    def _migrate(self) -> None:
        try:
            with self._write():
                if "usage_schema" not in self._tables():
                    self._exec("CREATE TABLE usage_schema (version INTEGER NOT NULL)")
                    self._exec("INSERT INTO usage_schema VALUES (0)")
                version = self._all("SELECT version FROM usage_schema")[0][0]
                if version > SCHEMA_VERSION:
                    raise GpuhubError(
                        f"usage database {self.where} has schema {version}, newer than this gpuhub "
                        f"({SCHEMA_VERSION}); upgrade gpuhub"
                    )
                for target in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in _MIGRATIONS[target]:
                        self._exec(statement.format(**_TYPES[self.dialect]))
                    self._exec("UPDATE usage_schema SET version = ?", (target,))
        except (sqlite3.Error, _pg_error()) as exc:
            raise GpuhubError(f"usage database {self.where}: {str(exc).strip()}") from None

    def schema_version(self) -> int:
        return int(self._all("SELECT version FROM usage_schema")[0][0])


def _split_values(sql: str) -> tuple[str, str, str]:
    """``INSERT ... VALUES (?, ?) ON ...`` -> (``INSERT ... VALUES ``, ``(?, ?)``, `` ON ...``)."""
    head, _, rest = sql.partition("VALUES (")
    one, _, tail = rest.partition(")")
    return f"{head}VALUES ", f"({one})", tail


def _pg_error() -> type[BaseException]:
    try:
        import psycopg
    except ImportError:
        return sqlite3.Error
    return psycopg.Error
