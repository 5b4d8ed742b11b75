"""The bulk write path of the usage store: sacct output into SQLite, chunks of runs per INSERT, rollup
sums added per transaction; a chunk holding a run already stored goes the per-run way instead."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from gpuhub.accounting import store_db
from gpuhub.accounting.records import project_of
from gpuhub.accounting.sacct import RUN_WIDTH, WALL_SHIFT, AttrSet, RunChunk, SacctRuns
from gpuhub.accounting.store_ingest import IngestResult, RowIngest, _by_cluster, _gc_paused
from gpuhub.accounting.store_schema import _ATTR_COLUMNS
from gpuhub.errors import GpuhubError


class BulkIngest(RowIngest):
    """The bulk write path (see the module)."""

    def _ingest_bulk(self, site: str, runs: SacctRuns, batch: int) -> IngestResult:
        """sacct output into SQLite, a chunk of a few thousand runs at a time (as many as one INSERT
        takes; for a large input, parsed by a second process while this one writes), a group of
        chunks (``batch`` runs, or what came in about a second) per transaction, as :meth:`ingest`.

        A chunk is written with one plain INSERT. It fails, writing nothing, if any of its runs is
        stored already (collected before, or twice in the chunk): then the chunk goes the way of
        :meth:`ingest` (compare, replace, adjust the rollup). Otherwise all its runs are new: they
        are summed by rollup key and month, and the sums added with the transaction.
        """
        per = max(1, min(store_db.BULK_PER_INSERT, self._max_variables // RUN_WIDTH))
        total = IngestResult()
        with _gc_paused():
            chunks = runs.chunks(per, batch, parallel=True)
            try:
                chunk = next(chunks, None)
                while chunk is not None:
                    txn = _BulkTxn()
                    with self._write():
                        while True:
                            self._bulk_chunk(site, chunk, txn)
                            if chunk.group_end:
                                self._bulk_apply(site, txn)
                                break
                            chunk = next(chunks, None)
                            if chunk is None:  # cannot happen: the parser ends each group
                                raise GpuhubError("usage ingest: the parser stopped within a group")
                    total.add(txn.result)
                    chunk = next(chunks, None)
            finally:
                chunks.close()  # type: ignore[attr-defined]
        return total

    def _bulk_chunk(self, site: str, chunk: RunChunk, txn: _BulkTxn) -> None:
        if chunk.attrs is not self._bulk_table:  # the parser started new tables (at a group's start)
            self._bulk_table, self._bulk_ids, self._bulk_sources, self._bulk_info = chunk.attrs, [], [], []
            self._bulk_keys, self._bulk_key_ids, self._bulk_single = chunk.keys, [], (0, True)
        if len(self._bulk_ids) < len(chunk.attrs):
            self._bulk_resolve(site, chunk.attrs)
        n = len(chunk)
        if not n:
            return
        cols = chunk.cols
        locals_ = cols[_ATTR_SLOT]
        sources = self._bulk_sources
        cols[_ATTR_SLOT] = list(map(self._bulk_ids.__getitem__, locals_))
        try:
            if self._bulk_one_source():
                self._insert_new(sources[locals_[0]], cols)
            else:  # one INSERT per cluster, all or none
                self._exec("SAVEPOINT usage_bulk_chunk")
                try:
                    for source, part in _by_source(cols, locals_, sources).items():
                        self._insert_new(source, part)
                except sqlite3.IntegrityError:
                    self._exec("ROLLBACK TO usage_bulk_chunk")
                    raise
                finally:
                    self._exec("RELEASE usage_bulk_chunk")
        except sqlite3.IntegrityError:  # some run is stored already: compare, as ingest does
            cols[_ATTR_SLOT] = locals_
            for part in _by_cluster(chunk.rows()):
                txn.result.add(self._ingest_runs(site, part))
            return
        cols[_ATTR_SLOT] = locals_
        txn.result.new += n
        txn.result.provisional += chunk.running
        chunk.add_rollup(txn.sums, txn.other)

    def _bulk_one_source(self) -> bool:
        """All attribute sets met so far have the same source (one cluster: nearly always)."""
        sources = self._bulk_sources
        seen, single = self._bulk_single
        if seen != len(sources):
            single = single and len(set(sources[seen:]) | {sources[0]}) == 1
            self._bulk_single = (len(sources), single)
        return single

    def _insert_new(self, sid: int, cols: list[list[Any]]) -> None:
        """Runs as new records: one multi-row INSERT (it fails on any run already stored)."""
        n = len(cols[0])
        sql = self._insert_sql.get((n, sid))
        if sql is None:
            if len(self._insert_sql) > 8:
                self._insert_sql.clear()
            one = f"(?, NULLIF(?, 0), ?, ?, ?, ?, ?, ?, ?, ?, {int(sid)})"
            sql = self._insert_sql[(n, sid)] = _INSERT_NEW + ", ".join([one] * n)
        # Plain "?" and row after row: numbered ones (?NNN) cost SQLite a lookup by name each.
        self.conn.execute(sql, list(chain.from_iterable(zip(*cols, strict=True))))

    def _bulk_resolve(self, site: str, table: list[AttrSet]) -> None:
        """attrs_id, source and rollup key of the parser's new attribute sets."""
        new = table[len(self._bulk_ids):]
        sids = [self._source_id(site, e.cluster) for e in new]
        self._many_values(f"INSERT INTO usage_attrs (source_id, project, {_ATTR_COLUMNS}) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                          [(sid, project_of(e.account), *e[1:]) for sid, e in zip(sids, new, strict=True)])
        ids = self._attr_ids([(sid, *e[1:]) for sid, e in zip(sids, new, strict=True)])
        if None in ids:  # cannot happen unless the attrs table was edited under us
            raise GpuhubError(f"usage database {self.where}: {ids.count(None)} attribute set(s) not stored")
        self._bulk_ids += ids  # type: ignore[arg-type]
        self._bulk_sources += sids
        self._bulk_info += [
            (self._dims_id((site, e.account, project_of(e.account), e.user, e.partition, e.gpu_model)), e.gpus)
            for e in new
        ]

    def _bulk_apply(self, site: str, txn: _BulkTxn) -> None:
        """The rollup changes of the runs the transaction wrote as new."""
        keys, key_ids = self._bulk_keys, self._bulk_key_ids
        for key in keys[len(key_ids):]:
            key_ids.append(self._dims_id((site, key.account, project_of(key.account), key.user, key.partition,
                                          key.gpu_model)))
        deltas: dict[tuple[int, str], list[int]] = {}
        for month, sums in txn.sums.items():
            for k, packed in sums.items():
                deltas[(key_ids[k], month)] = [packed >> WALL_SHIFT, packed & _RUNS_MASK, 0]
        info = self._bulk_info
        for a, start, end, wall in txn.other:
            dims_id, gpus = info[a]
            self._add_share(deltas, dims_id, gpus, start, end, wall, 1)
        if deltas:
            self._apply(deltas)


# The value a chunk's run carries its attribute set in.
_ATTR_SLOT = RUN_WIDTH - 1
_RUNS_MASK = (1 << WALL_SHIFT) - 1
_INSERT_NEW = ("INSERT INTO usage_records (job_id, job_ref, submit_time, start_time, end_time, wall_seconds, nnodes, "
               "ncpus, state, attrs_id, source_id) VALUES ")


@dataclass
class _BulkTxn:
    """A transaction of the bulk path: its counts, and its rollup sums (see RunChunk.add_rollup)."""

    result: IngestResult = field(default_factory=IngestResult)
    sums: dict[str, dict[int, int]] = field(default_factory=dict)  # of the runs written as new
    other: list[tuple[int, str, str | None, int]] = field(default_factory=list)


def _by_source(cols: list[list[Any]], locals_: list[int], sources: list[int]) -> dict[int, list[list[Any]]]:
    """A chunk's runs from several clusters, apart."""
    rows: dict[int, list[int]] = {}
    for i, a in enumerate(locals_):
        rows.setdefault(sources[a], []).append(i)
    return {sid: [[col[i] for i in idx] for col in cols] for sid, idx in rows.items()}
