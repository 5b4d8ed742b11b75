"""Writing runs into the usage store, one run at a time: compare with what is stored, replace what
changed, adjust the monthly rollups by the difference. Safe to repeat, and from two processes."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from gpuhub.accounting import store_db
from gpuhub.accounting.records import UsageRow, from_epoch, month_shares, project_of, to_epoch
from gpuhub.accounting.store_db import StoreDB
from gpuhub.accounting.store_schema import _ADD_ROLLUP, _ATTR_COLUMNS, _RECORD_WIDTH, _UPSERT_RECORD
from gpuhub.errors import GpuhubError


@dataclass
class IngestResult:
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    provisional: int = 0

    @property
    def seen(self) -> int:
        return self.new + self.updated + self.unchanged

    def add(self, other: IngestResult) -> None:
        self.new += other.new
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.provisional += other.provisional


class RowIngest(StoreDB):
    """The per-run write path (see the module)."""

    def _ingest_runs(self, site: str, runs: list[UsageRow]) -> IngestResult:
        """One cluster's runs, in one pass (the hot path of a collection: locals only, the common
        one-month finished run inline with no time arithmetic)."""
        sid = self._source_id(site, runs[0][0])
        job_ids = set(map(_JOB_ID, runs))
        if len(job_ids) != len(runs):
            runs = _last_per_key(runs)
        existing = self._existing(sid, job_ids)
        known = self._attrs.setdefault(sid, {})
        if existing:  # runs to compare with stored ones need the real attrs ids up front
            missing = {(r[9], r[10], r[11], r[12], r[14], r[15], r[16]) for r in runs}.difference(known)
            if missing:
                self._resolve_attrs(site, sid, missing, known)
        info = self._attr_info
        contribute = self._contribute
        new_attrs: dict[tuple[Any, ...], int] = {}
        deltas: dict[tuple[int, str], list[int]] = {}  # (dims id, month) -> [GPU-s, jobs, provisional GPU-s]
        flat: list[Any] = []  # the records to write, flattened for multi-row INSERTs
        new = updated = unchanged = provisional = 0
        for (_, job_id, job_ref, submit, start, end, wall, nnodes, ncpus, user, account, partition, qos, state, tres,
             gpus, model) in runs:
            akey = (user, account, partition, qos, tres, gpus, model)
            aid = known.get(akey)
            if aid is None:  # a new attribute set: a placeholder id now, the real one after the loop
                aid = known[akey] = new_attrs[akey] = -1 - len(new_attrs)
                info[aid] = self._info(site, akey)
            if end is None:
                provisional += 1
            if existing:
                old = existing.get((job_id, submit, start))
                if old is not None:
                    if old == (job_ref, aid, end, wall, state, nnodes, ncpus):
                        unchanged += 1
                        continue
                    contribute(deltas, old[1], start, old[2], old[3], -1)
                    updated += 1
                else:
                    new += 1
            else:
                new += 1
            flat += (sid, job_id, submit, start, job_ref, aid, end, wall, state, nnodes, ncpus)
            month = start[:7]
            if end is not None and end.startswith(month):
                dims_id, per_gpu = info[aid]
                gpu_seconds = per_gpu * wall
                k = (dims_id, month)
                d = deltas.get(k)
                if d is None:
                    d = deltas[k] = [0, 0, 0]
                d[0] += gpu_seconds if gpu_seconds.__class__ is int else round(gpu_seconds)
                d[1] += 1
            else:
                contribute(deltas, aid, start, end, wall, 1)
        if new_attrs:
            real = self._add_attrs(site, sid, new_attrs, known)
            flat[5::_RECORD_WIDTH] = [real.get(a, a) for a in flat[5::_RECORD_WIDTH]]
        if flat:
            self._write_records(flat)
        if deltas:
            self._apply(deltas)
        return IngestResult(new, updated, unchanged, provisional)

    def _write_records(self, flat: list[Any]) -> None:
        width = _RECORD_WIDTH
        if self.dialect == "postgresql":
            self._many(_UPSERT_RECORD, [flat[i:i + width] for i in range(0, len(flat), width)])
            return
        # SQLite: many rows per INSERT statement cost a third less than one statement per row.
        per = max(1, min(1000, self._max_variables // width))
        one = "(" + ", ".join("?" * width) + ")"
        head, _, tail = _UPSERT_RECORD.partition("VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
        full = f"{head}VALUES {', '.join([one] * per)}{tail}"
        step = per * width
        for i in range(0, len(flat), step):
            part = flat[i:i + step]
            sql = full if len(part) == step else f"{head}VALUES {', '.join([one] * (len(part) // width))}{tail}"
            self.conn.execute(sql, part)

    def _apply(self, deltas: dict[tuple[int, str], list[int]]) -> None:
        """Add the summed changes to the rollup, one row per report key."""
        dims = self._dims
        changes = [(*dims[dims_id], month, *d) for (dims_id, month), d in deltas.items() if d[0] or d[1] or d[2]]
        if changes:
            self._many_values(_ADD_ROLLUP, changes)

    def _contribute(
        self, deltas: dict[tuple[int, str], list[int]], aid: int, start: str, end: str | None, wall: int, sign: int
    ) -> None:
        """A run's share of the rollup (``sign`` -1 takes a stored one back out)."""
        dims_id, gpus = self._attr_info.get(aid) or self._load_attr_info(aid)
        self._add_share(deltas, dims_id, gpus, start, end, wall, sign)

    @staticmethod
    def _add_share(
        deltas: dict[tuple[int, str], list[int]], dims_id: int, gpus: int | float, start: str, end: str | None,
        wall: int, sign: int,
    ) -> None:
        gpu_seconds = round(gpus * wall)
        provisional = end is None
        stop = from_epoch(to_epoch(start) + wall) if end is None else end
        parts = [(start[:7], gpu_seconds)] if start[:7] == stop[:7] else month_shares(start, stop, gpu_seconds)
        for month, share in parts:
            d = deltas.get((dims_id, month))
            if d is None:
                d = deltas[(dims_id, month)] = [0, 0, 0]
            d[0] += sign * share
            if provisional:
                d[2] += sign * share
        d = deltas.get((dims_id, stop[:7]))
        if d is None:
            d = deltas[(dims_id, stop[:7])] = [0, 0, 0]
        d[1] += sign

    def _existing(self, sid: int, job_ids: set[str]) -> dict[tuple[str, str, str], tuple[Any, ...]]:
        """Stored runs of these jobs: key -> (job_ref, attrs_id, end_time, wall_seconds, state, nnodes, ncpus)."""
        cols = ("r.job_id, r.submit_time, r.start_time, r.job_ref, r.attrs_id, r.end_time, r.wall_seconds, "
                "r.state, r.nnodes, r.ncpus")
        if self.dialect == "postgresql":
            rows = self._all(f"SELECT {cols} FROM usage_records r WHERE r.source_id = ? AND r.job_id = ANY(?)",
                             (sid, list(job_ids)))
        else:
            # json_each keeps the probe in C; CROSS JOIN keeps SQLite from scanning the records instead.
            rows = self._all(
                f"SELECT {cols} FROM json_each(?) j CROSS JOIN usage_records r "
                "ON r.source_id = ? AND r.job_id = j.value",
                (json.dumps(list(job_ids)), sid),
            )
        return {(r[0], r[1], r[2]): tuple(r[3:]) for r in rows}

    def _attr_ids(self, keys: Sequence[Sequence[Any]]) -> list[int | None]:
        """SQLite: the attrs_id of each (source_id, user, account, partition, qos, gpu_tres, gpus,
        gpu_model), None for a set not stored; one indexed probe each, in one statement."""
        ids: list[int | None] = [None] * len(keys)
        per = max(1, min(store_db.BULK_PER_INSERT, self._max_variables // 9))
        for i in range(0, len(keys), per):
            part = keys[i:i + per]
            values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(part))
            params = [v for n, key in enumerate(part, i) for v in (n, *key)]
            for j, aid in self._all(
                f"WITH k (i, s, u, a, p, q, t, g, m) AS (VALUES {values}) "
                "SELECT k.i, x.attrs_id FROM k CROSS JOIN usage_attrs x "
                "ON x.source_id = k.s AND x.user_name = k.u AND x.account = k.a AND x.partition_name = k.p "
                "AND x.qos = k.q AND x.gpu_tres = k.t AND x.gpus = k.g AND x.gpu_model = k.m", params,
            ):
                ids[j] = aid
        return ids

    def _source_id(self, site: str, cluster: str) -> int:
        sid = self._sources.get((site, cluster))
        if sid is None:
            self._exec("INSERT INTO usage_sources (site, cluster) VALUES (?, ?) ON CONFLICT DO NOTHING",
                       (site, cluster))
            sid = self._all("SELECT source_id FROM usage_sources WHERE site = ? AND cluster = ?",
                            (site, cluster))[0][0]
            self._sources[(site, cluster)] = sid
        return sid

    def _resolve_attrs(
        self, site: str, sid: int, missing: set[tuple[Any, ...]], known: dict[tuple[Any, ...], int]
    ) -> None:
        placeholders = {}
        for akey in missing:
            aid = placeholders[akey] = -1 - len(placeholders)
            self._attr_info[aid] = self._info(site, akey)
        self._add_attrs(site, sid, placeholders, known)

    def _add_attrs(
        self, site: str, sid: int, new: dict[tuple[Any, ...], int], known: dict[tuple[Any, ...], int]
    ) -> dict[int, int]:
        """Store new attribute sets; returns placeholder id -> real attrs_id (``known`` is updated)."""
        self._many_values(f"INSERT INTO usage_attrs (source_id, project, {_ATTR_COLUMNS}) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                          [(sid, project_of(k[1]), *k) for k in new])
        if self.dialect == "postgresql":
            users = sorted({k[0] for k in new})
            cols = ", ".join(f"a.{c}" for c in _ATTR_COLUMNS.split(", "))
            found = self._all(f"SELECT a.attrs_id, {cols} FROM usage_attrs a "
                              "WHERE a.source_id = ? AND a.user_name = ANY(?)", (sid, users))
        else:
            found = [(aid, *k) for k, aid in zip(new, self._attr_ids([(sid, *k) for k in new]), strict=True)
                     if aid is not None]
        real = {}
        for aid, *values in found:
            key = tuple(values)
            if float(key[5]).is_integer():
                key = (*key[:5], int(key[5]), key[6])
            placeholder = new.get(key)
            if placeholder is not None:
                real[placeholder] = aid
                known[key] = aid
                self._attr_info[aid] = self._attr_info.pop(placeholder)
        if len(real) != len(new):  # cannot happen unless the attrs table was edited under us
            raise GpuhubError(f"usage database {self.where}: {len(new) - len(real)} attribute set(s) not stored")
        if len(self._attr_info) > 100_000:  # bounded, so memory stays flat (cleared between batches only)
            self._attrs.clear()
            self._attr_info.clear()
        return real

    def _info(self, site: str, akey: tuple[Any, ...]) -> tuple[int, int | float]:
        """An attribute set's rollup key (as a small id) and GPU count (an int when whole: exact, fast sums)."""
        user, account, partition, _qos, _tres, gpus, model = akey
        dims_id = self._dims_id((site, account, project_of(account), user, partition, model))
        return dims_id, int(gpus) if float(gpus).is_integer() else float(gpus)

    def _dims_id(self, dims: tuple[str, ...]) -> int:
        """(site, account, project, user, partition, model) -> a small id of that rollup key."""
        dims_id = self._dims_ids.get(dims)
        if dims_id is None:
            dims_id = self._dims_ids[dims] = len(self._dims)
            self._dims.append(dims)
        return dims_id

    def _load_attr_info(self, aid: int) -> tuple[int, int | float]:
        row = self._all(
            f"SELECT s.site, {_ATTR_COLUMNS} FROM usage_attrs a JOIN usage_sources s ON s.source_id = a.source_id "
            "WHERE a.attrs_id = ?",
            (aid,),
        )[0]
        info = self._attr_info[aid] = self._info(row[0], tuple(row[1:]))
        return info


_JOB_ID = itemgetter(1)


def _by_cluster(chunk: list[UsageRow]) -> list[list[UsageRow]]:
    clusters = {row[0] for row in chunk}
    if len(clusters) == 1:
        return [chunk]
    return [[row for row in chunk if row[0] == cluster] for cluster in sorted(clusters)]


def _last_per_key(runs: list[UsageRow]) -> list[UsageRow]:
    """The same run twice in one batch: keep the last word (so its share counts once)."""
    return list({(r[1], r[3], r[4]): r for r in runs}.values())


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection during a bulk load: it creates millions of short-lived tuples
    and no cycles, and each full collection would walk all of them (it more than doubles the time)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
