"""The usage store: job-run records, monthly rollups kept at ingest, per-site watermarks.

SQLite (the ledger's own file by default, in tables of its own) or PostgreSQL (``--db
postgresql://...``, for a team). Both run the same SQL except for a handful of statements.

Writes are serialised (SQLite ``BEGIN IMMEDIATE``; a PostgreSQL advisory lock) and each batch is
one transaction holding its records and the matching rollup changes, so a collector killed at any
point leaves either all of a batch or none of it, and two collectors at once never count a run
twice: every record has a natural key, and its rollup contribution is replaced, never added again.

The code is split by concern: :mod:`~gpuhub.accounting.store_schema` (tables, migrations),
:mod:`~gpuhub.accounting.store_db` (connections, dialect, transactions),
:mod:`~gpuhub.accounting.store_ingest` (the per-run write path) and
:mod:`~gpuhub.accounting.store_bulk` (the bulk path for sacct output); this module is the store
users open, with its watermarks and queries.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from gpuhub.accounting.records import UsageRow, now_iso
from gpuhub.accounting.sacct import SacctRuns
from gpuhub.accounting.store_bulk import BulkIngest
from gpuhub.accounting.store_db import _connect_pg, _connect_sqlite, _redact, default_url
from gpuhub.accounting.store_ingest import IngestResult, _by_cluster, _gc_paused
from gpuhub.accounting.store_schema import DIMENSION_COLUMNS, SCHEMA_VERSION
from gpuhub.errors import ConfigError

__all__ = ["BATCH", "DIMENSION_COLUMNS", "SCHEMA_VERSION", "Filters", "IngestResult", "UsageStore", "default_url",
           "open_store"]

BATCH = 50_000


@dataclass(frozen=True)
class Filters:
    sites: tuple[str, ...] = ()
    projects: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    accounts: tuple[str, ...] = ()


def open_store(url: str | None = None, must_exist: bool = False) -> UsageStore:
    """``postgresql://...`` (or ``postgres://``), ``sqlite:///path``, or a plain file path.

    ``must_exist``: a missing SQLite file is an error instead of a new database (reports create nothing).
    """
    url = url or default_url()
    if url.startswith(("postgresql://", "postgres://")):
        return UsageStore(_connect_pg(url), "postgresql", _redact(url))
    if "://" in url and not url.startswith("sqlite://"):
        raise ConfigError(f"usage database {_redact(url)!r}: give postgresql://..., sqlite:///PATH or a file path")
    path = Path(url.removeprefix("sqlite://")).expanduser() if url.startswith("sqlite://") else Path(url).expanduser()
    if must_exist and not path.exists():
        raise ConfigError(f"usage database {path} does not exist; `gpuhub usage collect` creates it (or check --db)")
    return UsageStore(_connect_sqlite(path), "sqlite", str(path))


class UsageStore(BulkIngest):
    """Job-run records, monthly rollups and per-site watermarks (see the module)."""

    # --- ingest -----------------------------------------------------------------------------

    def ingest(self, site: str, rows: Iterable[UsageRow], batch: int = BATCH) -> IngestResult:
        """Store runs: new ones added, changed ones replaced (rollups adjusted), identical ones skipped.

        Each batch is one transaction. Safe to call again with the same rows, or from two
        processes at once. SQLite takes the runs of :func:`~gpuhub.accounting.sacct.parse_sacct`
        in bulk (the same result, in well under half the time).
        """
        if self.dialect == "sqlite" and isinstance(rows, SacctRuns):
            return self._ingest_bulk(site, rows, batch)
        total = IngestResult()
        rows = iter(rows)
        with _gc_paused():
            while chunk := list(islice(rows, batch)):
                with self._write():
                    for part in _by_cluster(chunk):
                        total.add(self._ingest_runs(site, part))
        return total

    # --- watermarks -------------------------------------------------------------------------

    def watermark(self, site: str) -> str | None:
        rows = self._all("SELECT collected_until FROM usage_watermarks WHERE site = ?", (site,))
        return rows[0][0] if rows else None

    def set_watermark(self, site: str, until: str) -> None:
        """Move the site's watermark forward (never back: a slow collector finishing late cannot rewind it)."""
        with self._write():
            self._exec(
                """INSERT INTO usage_watermarks (site, collected_until, updated_at) VALUES (?, ?, ?)
                   ON CONFLICT (site) DO UPDATE SET
                     collected_until = CASE WHEN excluded.collected_until > usage_watermarks.collected_until
                                            THEN excluded.collected_until ELSE usage_watermarks.collected_until END,
                     updated_at = excluded.updated_at""",
                (site, until, now_iso()),
            )

    def collected_sites(self) -> list[str]:
        return [r[0] for r in self._all("SELECT site FROM usage_watermarks ORDER BY site")]

    def oldest_running_start(self, site: str) -> str | None:
        rows = self._all(
            "SELECT MIN(r.start_time) FROM usage_records r JOIN usage_sources s ON s.source_id = r.source_id "
            "WHERE s.site = ? AND r.end_time IS NULL",
            (site,),
        )
        return rows[0][0] if rows else None

    def running_keys(self, site: str) -> set[tuple[str, str, str, str]]:
        rows = self._all(
            "SELECT s.cluster, r.job_id, r.submit_time, r.start_time FROM usage_records r "
            "JOIN usage_sources s ON s.source_id = r.source_id WHERE s.site = ? AND r.end_time IS NULL",
            (site,),
        )
        return {tuple(r) for r in rows}  # type: ignore[misc]

    # --- reads ------------------------------------------------------------------------------

    def rollup(
        self, dims: Sequence[str], filters: Filters, since_month: str | None = None, until_month: str | None = None
    ) -> list[tuple[Any, ...]]:
        """(site, gpu_model, *dims, gpu_seconds, jobs, provisional_gpu_seconds) summed over the rollup.

        Months are ``YYYY-MM``; ``until_month`` is excluded.
        """
        cols = ["site", "gpu_model", *(DIMENSION_COLUMNS[d] for d in dims if d not in ("site", "gpu_model"))]
        where, params = self._where(filters)
        if since_month:
            where.append("month >= ?")
            params.append(since_month)
        if until_month:
            where.append("month < ?")
            params.append(until_month)
        sql = (f"SELECT {', '.join(cols)}, SUM(gpu_seconds), SUM(jobs), SUM(provisional_gpu_seconds) "
               f"FROM usage_rollup {'WHERE ' + ' AND '.join(where) if where else ''} "
               f"GROUP BY {', '.join(cols)}")
        return self._all(sql, params)

    def runs(self, filters: Filters, since: str, until: str) -> Iterator[tuple[Any, ...]]:
        """Runs that overlap ``[since, until)``: (site, account, project, user, partition, gpu_model,
        gpus, start, end or None, wall_seconds)."""
        where, params = self._where(filters, prefix="")
        where += ["start_time < ?", "(end_time IS NULL OR end_time >= ?)"]
        params += [until, since]
        sql = ("SELECT site, account, project, user_name, partition_name, gpu_model, gpus, start_time, end_time, "
               f"wall_seconds FROM usage_records_v WHERE {' AND '.join(where)}")
        cur = self._exec(sql, params)
        while batch := cur.fetchmany(10_000):
            yield from batch

    def _where(self, filters: Filters, prefix: str = "") -> tuple[list[str], list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        for column, values in (("site", filters.sites), ("project", filters.projects),
                               ("user_name", filters.users), ("account", filters.accounts)):
            if values:
                where.append(f"{prefix}{column} IN ({', '.join('?' * len(values))})")
                params.extend(values)
        return where, params

    def known_values(self) -> dict[str, list[str]]:
        """Every site, project, user and account the records name: a filter outside these matches nothing."""
        return {
            "sites": [r[0] for r in self._all("SELECT DISTINCT site FROM usage_sources ORDER BY site")],
            "projects": [r[0] for r in self._all("SELECT DISTINCT project FROM usage_attrs ORDER BY project")],
            "users": [r[0] for r in self._all("SELECT DISTINCT user_name FROM usage_attrs ORDER BY user_name")],
            "accounts": [r[0] for r in self._all("SELECT DISTINCT account FROM usage_attrs ORDER BY account")],
        }

    def record_count(self) -> int:
        return int(self._all("SELECT COUNT(*) FROM usage_records")[0][0])
