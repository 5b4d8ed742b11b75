"""The usage store on SQLite and on a real PostgreSQL (scripts/testbed/postgres.sh): idempotent
ingest, provisional runs finalised, month splits in the rollup, concurrent writers."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import pg_url
from gpuhub.accounting.records import UsageRow
from gpuhub.accounting.report import build_report
from gpuhub.accounting.sacct import parse_sacct
from gpuhub.accounting.store import SCHEMA_VERSION, Filters, open_store

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data" / "accounting"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A fresh, empty usage database URL: a SQLite file, or a schema of its own in PostgreSQL."""
    if request.param == "sqlite":
        yield str(tmp_path / "usage.sqlite")
        return
    url = pg_url()  # skips (fails in CI) without PostgreSQL or without the psycopg extra
    import psycopg

    schema = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{url}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def run(job_id: str, start: str, end: str | None, wall: int, gpus: float = 1, account: str = "abc@a100",
        user: str = "ana", submit: str | None = None, state: str = "COMPLETED", model: str = "a100") -> UsageRow:
    return UsageRow("c1", job_id, None, submit or start, start, end, wall, 1, 8, user, account, "gpu_p5", "qos",
                    state, f"gres/gpu={gpus}", gpus, model)


def totals(store) -> tuple[int, int, int]:
    """(GPU-seconds, jobs, provisional GPU-seconds) from the rollup."""
    rows = store.rollup([], Filters())
    return tuple(int(sum(r[i] for r in rows)) for i in (-3, -2, -1))  # type: ignore[return-value]


def record_seconds(store) -> int:
    """GPU-seconds straight from the records (the rollup must always agree)."""
    return int(store._all("SELECT COALESCE(SUM(gpu_seconds), 0) FROM usage_records_v")[0][0])


def test_ingest_is_idempotent(store_url):
    lines = (DATA / "sacct_testbed.txt").read_text().splitlines()
    with open_store(store_url) as store:
        assert store.schema_version() == SCHEMA_VERSION
        first = store.ingest("testbed", parse_sacct(lines))
        assert (first.new, first.updated, first.unchanged, first.provisional) == (13, 0, 0, 1)
        before = totals(store)
        again = store.ingest("testbed", parse_sacct(lines))
        assert (again.new, again.updated, again.unchanged) == (0, 0, 13)
        assert totals(store) == before == (2 * 4 + 2 * 20 + 3 * 2 + 2 * 2 + 4 * 3 + 4 + 2 * 2 + 2 + 4 * 13 + 4 * 2, 13,
                                           52)
        assert store.record_count() == 13
        assert record_seconds(store) == before[0]
    with open_store(store_url) as store:  # reopening migrates nothing and sees the same
        assert store.schema_version() == SCHEMA_VERSION and totals(store) == before
        again = store.ingest("testbed", parse_sacct(lines))  # a new process: nothing cached, nothing rewritten
        assert (again.new, again.updated, again.unchanged) == (0, 0, 13)


def test_running_run_is_finalised_and_months_split(store_url):
    with open_store(store_url) as store:
        # running since Jan 31 22:00, seen after 1 h, then finished after 4 h (2 h in Feb)
        store.ingest("s", [run("7", "2026-01-31T22:00:00", None, 3600, gpus=2, state="RUNNING")])
        assert totals(store) == (7200, 1, 7200)
        store.ingest("s", [run("7", "2026-01-31T22:00:00", "2026-02-01T02:00:00", 14400, gpus=2)])
        assert totals(store) == (28800, 1, 0)
        by_month = {r[2]: (r[3], r[4]) for r in store.rollup(["month"], Filters())}
        assert by_month == {"2026-01": (14400, 0), "2026-02": (14400, 1)}  # one job, counted where it ends
        assert store.oldest_running_start("s") is None
        assert record_seconds(store) == 28800


def test_requeued_runs_and_attribute_changes(store_url):
    with open_store(store_url) as store:
        earlier = run("9", "2026-03-01T10:00:00", "2026-03-01T10:10:00", 600, submit="2026-03-01T09:59:00",
                      state="REQUEUED")
        later = run("9", "2026-03-01T10:12:00", "2026-03-01T11:12:00", 3600, submit="2026-03-01T10:10:00")
        store.ingest("s", [earlier, later, later])  # the same run twice in one batch counts once
        assert totals(store) == (4200, 2, 0)
        # the account of a run changed (sacctmgr fixed it): its share moves, nothing is added
        store.ingest("s", [later._replace(account="xyz@v100")])
        projects = {r[2]: r[3] for r in store.rollup(["project"], Filters())}
        assert projects == {"abc": 600, "xyz": 3600}
        assert totals(store) == (4200, 2, 0) and store.record_count() == 2


def test_watermark_only_moves_forward(store_url):
    with open_store(store_url) as store:
        assert store.watermark("s") is None
        store.set_watermark("s", "2026-03-02T00:00:00")
        store.set_watermark("s", "2026-03-01T00:00:00")  # a slow collector finishing late
        assert store.watermark("s") == "2026-03-02T00:00:00"
        assert store.collected_sites() == ["s"]


def test_reports_read_rollup_and_runs_alike(store_url):
    with open_store(store_url) as store:
        store.ingest("s", [
            run("1", "2026-01-31T23:00:00", "2026-02-01T01:00:00", 7200, gpus=4),  # across the month end
            run("2", "2026-02-10T00:00:00", "2026-02-10T10:00:00", 36000, gpus=1, account="physics", user="bo"),
            run("3", "2026-02-11T00:00:00", "2026-02-11T01:00:00", 3600, gpus=0.5, account="abc@v100", model="v100"),
        ])
        whole = build_report(store, ["project", "month"], since="2026-02-01T00:00:00", until="2026-03-01T00:00:00")
        rows = {(r["project"], r["month"]): r["gpu_hours"] for r in whole.rows}
        assert rows == {("abc", "2026-02"): 4.5, ("physics", "2026-02"): 10.0}
        # not a whole month: computed from the runs, clipped the same way
        part = build_report(store, ["project"], since="2026-02-01T00:00:00", until="2026-02-10T05:00:00")
        assert {r["project"]: r["gpu_hours"] for r in part.rows} == {"abc": 4.0, "physics": 5.0}
        assert {r["project"]: r["jobs"] for r in part.rows} == {"abc": 1, "physics": 0}  # run 2 ends later
        every = build_report(store, ["user", "gpu_model"])
        assert every.total_gpu_hours == pytest.approx(8 + 10 + 0.5) and every.total_jobs == 3


def _ingest_in_subprocess(url: str, job_ids: range) -> subprocess.Popen:
    code = (
        "import sys; from gpuhub.accounting.store import open_store; from gpuhub.accounting.records import UsageRow\n"
        "ids = range(int(sys.argv[2]), int(sys.argv[3]))\n"
        "rows = [UsageRow('c1', str(i), None, '2026-04-01T00:00:00', '2026-04-01T00:00:00', '2026-04-01T01:00:00',"
        " 3600, 1, 1, 'u%d' % (i % 7), 'p%d@a100' % (i % 5), 'gpu', 'q', 'COMPLETED', 'gres/gpu=2', 2, 'a100')"
        " for i in ids]\n"
        "with open_store(sys.argv[1]) as s:\n"
        "    s.ingest('s', rows, batch=300)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen([sys.executable, "-c", code, url, str(job_ids.start), str(job_ids.stop)], env=env)


def test_two_writers_at_once_count_each_run_once(store_url):
    with open_store(store_url):
        pass  # schema in place before the race on rows
    a = _ingest_in_subprocess(store_url, range(0, 3000))
    b = _ingest_in_subprocess(store_url, range(1500, 4500))  # half of the runs in both
    assert a.wait(120) == 0 and b.wait(120) == 0
    with open_store(store_url) as store:
        assert store.record_count() == 4500
        assert totals(store) == (4500 * 7200, 4500, 0)
        assert record_seconds(store) == 4500 * 7200
