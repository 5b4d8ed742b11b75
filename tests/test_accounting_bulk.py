"""The SQLite store's bulk path for sacct output: the same records, rollup and counts as run by run,
whether a chunk of runs is all new or falls back, with the parser in-process or forked; a failed or
killed ingest leaves whole transactions and a rerun gives the same totals."""

from __future__ import annotations

import io
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from gpuhub.accounting import sacct, store, store_db
from gpuhub.accounting.records import from_epoch, to_epoch
from gpuhub.accounting.sacct import ParseStats, parse_sacct
from gpuhub.accounting.store import Filters, open_store

REPO = Path(__file__).resolve().parent.parent


def sacct_lines(n: int, seed: int = 1, first_job: int = 500_000, cluster: str = "jz",
                fractions: bool = True) -> list[str]:
    """sacct -P lines of every kind: requeued runs, array tasks, running and pending jobs, CPU-only
    jobs, a fraction of a GPU (unless not ``fractions``), untyped GRES, runs across month ends, a
    second cluster, "CANCELLED by", malformed and blank lines, the same line twice."""
    rnd = random.Random(seed)
    t = to_epoch("2026-01-20T00:00:00")
    lines: list[str] = []
    job = first_job
    while len(lines) < n:
        job += 1
        t += rnd.randint(0, 600)
        user = f"u{rnd.randint(0, 40)}"
        account = f"p{rnd.randint(0, 9)}@{rnd.choice(('a100', 'v100'))}"
        nodes = rnd.choice((1, 1, 1, 2))
        gpus = rnd.choice((1, 2, 4))
        kind = rnd.random()
        tres = f"billing={gpus},cpu={gpus * 8},gres/gpu:a100={gpus},gres/gpu={gpus},mem=8G,node={nodes}"
        if kind < 0.05:
            tres = f"cpu={gpus},mem=4G,node=1"  # CPU only
        elif kind < 0.08 and fractions:
            tres = "cpu=2,gres/gpu=0.5,node=1"  # a fraction of a GPU
        elif kind < 0.12:
            tres = f"cpu=4,gres/gpu={gpus},node=1"  # untyped
        submit = int(t)
        start = submit + rnd.randint(0, 900)
        wall = rnd.choice((rnd.randint(0, 3600), rnd.randint(3600, 5 * 86400)))  # some cross a month end
        state, end = rnd.choice((("COMPLETED", 1), ("FAILED", 1), ("CANCELLED by 1000", 1), ("TIMEOUT", 1),
                                 ("RUNNING", 0), ("PENDING", 0)))
        runs = [(submit, start, wall // 3, "REQUEUED", 1)] if rnd.random() < 0.05 else []
        if runs:
            submit, start = start + wall // 3, start + wall // 3 + 60
        runs.append((submit, start, wall, state, end))
        ref = f"{job - 1}_{rnd.randint(0, 9)}" if rnd.random() < 0.1 else str(job)
        clu = cluster if rnd.random() > 0.03 else "other"
        for sub, beg, el, st, ended in runs:
            s_txt = "Unknown" if st == "PENDING" else from_epoch(beg)
            e_txt = from_epoch(beg + el) if ended else "Unknown"
            line = (f"{job}|{ref}|{user}|{account}|gpu_p{rnd.randint(1, 3)}|qos|{st}|{from_epoch(sub)}|{s_txt}|"
                    f"{e_txt}|{el}|{tres}|{nodes}|{gpus * 8}|{clu}")
            lines.append(line)
            if rnd.random() < 0.01:
                lines.append(line)  # the same run twice
        if rnd.random() < 0.005:
            lines.append(rnd.choice(("garbage", "", f"{job}|{job}|u|a|p|q|COMPLETED|x|y|z|1|gres/gpu=1|1|1|jz")))
    return lines


def snapshot(path: Path) -> tuple[list[tuple], list[tuple], tuple]:
    db = sqlite3.connect(path)
    try:
        records = sorted(db.execute(
            "SELECT site, cluster, job_id, job_ref, submit_time, start_time, end_time, wall_seconds, gpus, gpu_model, "
            "user_name, account, project, partition_name, qos, state, gpu_tres, nnodes, ncpus FROM usage_records_v"),
            key=repr)
        rollup = sorted(db.execute(
            "SELECT site, month, account, project, user_name, partition_name, gpu_model, gpu_seconds, jobs, "
            "provisional_gpu_seconds FROM usage_rollup "
            "WHERE gpu_seconds != 0 OR jobs != 0 OR provisional_gpu_seconds != 0"))
        totals = db.execute("SELECT SUM(gpu_seconds), SUM(jobs), SUM(provisional_gpu_seconds) FROM usage_rollup")
        totals = totals.fetchone()
    finally:
        db.close()
    return records, rollup, totals


@pytest.fixture(params=["in-process", "forked"])
def parser_mode(request, monkeypatch):
    """Small chunks and groups, so that a few thousand lines make many; the parser forked or not."""
    monkeypatch.setattr(store_db, "BULK_PER_INSERT", 97)
    if request.param == "forked":
        if not sys.platform.startswith("linux"):
            pytest.skip("the parser is forked on Linux only")
        monkeypatch.setattr(sacct, "_FORK_MIN_LINES", 1)
    else:
        monkeypatch.setattr(sacct, "_FORK_MIN_LINES", 10**12)
    return request.param


def ingest_both(tmp_path: Path, batches: list[list[str]], batch: int = 700):
    """Each list of lines ingested in turn, in bulk and run by run: (counts, stats, snapshot).

    The counts are (new, updated) per ingest: the same run twice in the input counts as one new
    run when both are in one batch, else as new then unchanged, and the bulk path's batches for
    that are its chunks."""
    out = []
    for how in ("bulk", "rows"):
        path = tmp_path / f"{how}.sqlite"
        results, stats = [], []
        with open_store(str(path)) as s:
            for lines in batches:
                st = ParseStats()
                runs = parse_sacct(lines, stats=st)
                got = s.ingest("jz-site", runs if how == "bulk" else list(runs), batch=batch)
                results.append((got.new, got.updated))
                stats.append(st)
        out.append((results, stats, snapshot(path)))
    return out


def test_bulk_equals_run_by_run(tmp_path, parser_mode):
    first = sacct_lines(3000, seed=1)
    # collected again, overlapping, with runs that finished, moved account or were requeued since
    again = [line.replace("|RUNNING|", "|COMPLETED|").replace("|Unknown|", "|2026-02-28T00:00:00|", 1)
             if i % 5 == 0 else line for i, line in enumerate(first[1500:])] + sacct_lines(2000, seed=2)
    bulk, rows = ingest_both(tmp_path, [first, again, first])
    assert bulk[0] == rows[0]  # the same counts of new and updated runs
    assert bulk[1] == rows[1]  # the same parse statistics
    assert bulk[2] == rows[2]  # the same records and rollup, to the second
    (new, _), (_, updated), (again_new, _) = bulk[0]
    assert new > 2000 and updated > 0 and again_new == 0
    records, rollup, _ = bulk[2]
    assert len({r[1] for r in records}) == 2  # two clusters
    assert any(r[6] is None for r in records) and any(r[8] == 0.5 for r in records)
    assert len({r[1] for r in rollup}) >= 2  # runs split across month ends


def test_bulk_with_new_parser_tables(tmp_path, parser_mode, monkeypatch):
    """Past a number of attribute sets the parser starts new tables (memory stays flat)."""
    monkeypatch.setattr(sacct, "_TABLE_LIMIT", 7)
    lines = sacct_lines(2500, seed=3)
    bulk, rows = ingest_both(tmp_path, [lines, lines[:1000]], batch=300)
    assert bulk == rows


def test_forked_parser_reports_back(tmp_path, monkeypatch):
    if not sys.platform.startswith("linux"):
        pytest.skip("the parser is forked on Linux only")
    monkeypatch.setattr(sacct, "_FORK_MIN_LINES", 1)
    lines = sacct_lines(2000, seed=4)
    rows = list(parse_sacct(lines))
    running = {(r.cluster, r.job_id, r.submit, r.start) for r in rows[::3]} | {("jz", "nope", "x", "y")}
    stats = ParseStats()
    with open_store(str(tmp_path / "u.sqlite")) as s:
        s.ingest("jz-site", parse_sacct(lines, stats=stats, cross_off=running))
    assert running == {("jz", "nope", "x", "y")}  # crossed off in the child, seen here
    in_process = ParseStats()
    list(parse_sacct(lines, stats=in_process))
    assert stats == in_process and stats.malformed > 0 and stats.first_bad


def test_forked_parser_error_is_raised_here(tmp_path, monkeypatch):
    if not sys.platform.startswith("linux"):
        pytest.skip("the parser is forked on Linux only")
    monkeypatch.setattr(sacct, "_FORK_MIN_LINES", 1)
    pids = []
    fork = os.fork

    def recorded_fork() -> int:
        pid = fork()
        if pid:
            pids.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", recorded_fork)
    lines: list = sacct_lines(500, seed=5)
    lines.insert(300, None)  # not a line
    with open_store(str(tmp_path / "u.sqlite")) as s, pytest.raises(AttributeError):
        s.ingest("jz-site", parse_sacct(lines), batch=100)
    assert len(pids) == 1
    with pytest.raises(ChildProcessError):
        os.waitpid(pids[0], os.WNOHANG)  # the parser process is gone, and reaped


def consistent(s) -> None:
    """The rollup is the sum of the records (whole GPUs: no rounding of shares)."""
    rollup = sum(int(r[-3]) for r in s.rollup([], Filters()))
    assert rollup == int(s._all("SELECT COALESCE(SUM(gpu_seconds), 0) FROM usage_records_v")[0][0])


def test_failed_ingest_keeps_whole_transactions(tmp_path, parser_mode, monkeypatch):
    lines = sacct_lines(3000, seed=6, fractions=False)
    calls = 0
    insert = store.UsageStore._insert_new

    def failing(self, sid, cols):
        nonlocal calls
        calls += 1
        if calls == 12:
            raise sqlite3.OperationalError("disk I/O error")
        insert(self, sid, cols)

    path = tmp_path / "u.sqlite"
    with open_store(str(path)) as s:
        monkeypatch.setattr(store.UsageStore, "_insert_new", failing)
        with pytest.raises(sqlite3.OperationalError):
            s.ingest("jz-site", parse_sacct(lines), batch=500)
        monkeypatch.setattr(store.UsageStore, "_insert_new", insert)
        assert 0 < s.record_count() < 2500
        consistent(s)
        s.ingest("jz-site", parse_sacct(lines), batch=500)  # the same store: its caches must not lie
    reference = tmp_path / "ref.sqlite"
    with open_store(str(reference)) as s:
        s.ingest("jz-site", list(parse_sacct(lines)))
    assert snapshot(path) == snapshot(reference)


def _bulk_ingest(url: str, lines_file: Path, marker: str) -> subprocess.Popen:
    code = (
        "import sys; from gpuhub.accounting import sacct; from gpuhub.accounting.store import open_store\n"
        "sacct._FORK_MIN_LINES = 1\n"
        "lines = open(sys.argv[2]).read().splitlines()\n"
        "with open_store(sys.argv[1]) as s:\n"
        "    s.ingest('jz-site', sacct.parse_sacct(lines), batch=2000)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen([sys.executable, "-c", code, url, str(lines_file), marker], env=env)


def _processes_with(marker: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker.encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                pass
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parser is forked on Linux only")
def test_killed_bulk_ingest_then_rerun_gives_the_same_totals(tmp_path):
    lines = sacct_lines(120_000, seed=7, fractions=False)
    lines_file = tmp_path / "sacct.txt"
    lines_file.write_text("\n".join(lines) + "\n")
    url = str(tmp_path / "u.sqlite")
    with open_store(url):
        pass
    marker = f"marker-{uuid.uuid4().hex}"
    victim = _bulk_ingest(url, lines_file, marker)
    db = sqlite3.connect(url, timeout=30)
    deadline = time.time() + 120
    while db.execute("SELECT COUNT(*) FROM usage_records").fetchone()[0] == 0:
        assert victim.poll() is None and time.time() < deadline
        time.sleep(0.02)
    assert victim.poll() is None, "the ingest finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait(30)
    deadline = time.time() + 30
    while _processes_with(marker):  # the parser process goes too
        assert time.time() < deadline, "the forked parser outlived its parent"
        time.sleep(0.1)
    db.close()
    with open_store(url) as s:
        assert s.record_count() < len(lines)
        consistent(s)
    rerun = _bulk_ingest(url, lines_file, marker)
    assert rerun.wait(300) == 0
    reference = tmp_path / "ref.sqlite"
    with open_store(str(reference)) as s:
        s.ingest("jz-site", list(parse_sacct(lines)))
    assert snapshot(Path(url)) == snapshot(reference)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parser is forked on Linux only")
def test_two_bulk_ingests_at_once_count_each_run_once(tmp_path):
    lines = sacct_lines(30_000, seed=8)
    files = []
    for name, part in (("a", lines[:20_000]), ("b", lines[10_000:])):  # a third in both
        files.append(tmp_path / f"{name}.txt")
        files[-1].write_text("\n".join(part) + "\n")
    url = str(tmp_path / "u.sqlite")
    with open_store(url):
        pass
    procs = [_bulk_ingest(url, f, "two-at-once") for f in files]
    assert all(p.wait(300) == 0 for p in procs)
    reference = tmp_path / "ref.sqlite"
    with open_store(str(reference)) as s:
        s.ingest("jz-site", list(parse_sacct(lines)))
    assert snapshot(Path(url)) == snapshot(reference)


def test_which_inputs_get_a_forked_parser(tmp_path, monkeypatch):
    if not sys.platform.startswith("linux"):
        pytest.skip("the parser is forked on Linux only")
    monkeypatch.setattr(sacct, "_FORK_MIN_LINES", 10)
    monkeypatch.setattr(sacct, "_FORK_MIN_BYTES", 1000)
    lines = sacct_lines(400, seed=10)
    path = tmp_path / "sacct.txt"
    path.write_text("\n".join(lines) + "\n")
    assert sacct._fork_worthwhile(lines) and not sacct._fork_worthwhile(lines[:9])
    assert not sacct._fork_worthwhile(iter(lines))  # reading an iterator may do things of its own
    assert not sacct._fork_worthwhile(io.StringIO("\n".join(lines)))
    forks = []
    real = sacct._forked_chunks
    monkeypatch.setattr(sacct, "_forked_chunks", lambda *args: forks.append(1) or real(*args))
    with open(path) as src:
        assert sacct._fork_worthwhile(src)
        forked = tmp_path / "forked.sqlite"
        with open_store(str(forked)) as s:
            s.ingest("jz-site", parse_sacct(src), batch=100)
    assert forks == [1]
    reference = tmp_path / "ref.sqlite"
    with open_store(str(reference)) as s:
        s.ingest("jz-site", list(parse_sacct(lines)))
    assert snapshot(forked) == snapshot(reference)
