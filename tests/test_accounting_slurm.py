"""Accounting against the real Slurm testbed (slurmdbd on MariaDB), over the loopback sshd, into
SQLite and PostgreSQL: GPU hours equal sacct's own numbers, re-collection and a killed or doubled
collector never count a run twice.

Other sessions use the same testbed at the same time: every check is on this module's own job ids,
or on invariants that hold whatever else runs (the rollup always equals the sum of the records).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import pg_url
from gpuhub.accounting.collect import collect_site
from gpuhub.accounting.records import from_epoch, to_epoch
from gpuhub.accounting.report import build_report
from gpuhub.accounting.sacct import FORMAT, parse_sacct
from gpuhub.accounting.store import Filters, open_store
from gpuhub.registry import load_site
from gpuhub.transport import close_all

pytestmark = [pytest.mark.slurm, pytest.mark.ssh]
REPO = Path(__file__).resolve().parent.parent
SITES = Path(__file__).parent / "data" / "sites"
TRUTH_FORMAT = "JobIDRaw,Submit,Start,End,ElapsedRaw,AllocTRES,Account,State"


@pytest.fixture(params=["sqlite", "postgresql"])
def new_url(request, tmp_path):
    """A factory of fresh, empty usage databases of one kind."""
    schemas: list[str] = []

    def make() -> str:
        if request.param == "sqlite":
            return str(tmp_path / f"usage-{uuid.uuid4().hex[:6]}.sqlite")
        url = pg_url()  # skips (fails in CI) without PostgreSQL or without the psycopg extra
        import psycopg

        schema = f"test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        schemas.append(schema)
        return f"{url}?options=-csearch_path%3D{schema}"

    yield make
    if schemas:
        import psycopg

        with psycopg.connect(pg_url(), autocommit=True) as conn:
            for schema in schemas:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")


def _sbatch(*args: str) -> str:
    out = subprocess.run(["sbatch", "--parsable", "-p", "gpu", "-t", "5", "-o", "/dev/null", *args],
                         capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.strip().split(";")[0]


def _state(job: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()


def _wait_running(job: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while _state(job) != "RUNNING":
        assert time.time() < deadline, f"job {job} did not start"
        time.sleep(0.3)


def _truth_lines(ids: list[str], window: tuple[str, str] | None = None) -> list[str]:
    """sacct's lines for these jobs (and their array tasks); with a window, those of its lines that
    are runs of ``ids`` (raw ids, tasks included), as a collection over the window gets them."""
    select = ["--allusers", "-S", window[0], "-E", window[1]] if window else ["-j", ",".join(ids)]
    out = subprocess.run(["env", "TZ=UTC", "sacct", "-X", "-D", "-P", "-n", "--noconvert", *select,
                          f"--format={TRUTH_FORMAT}"], capture_output=True, text=True, check=True, timeout=60)
    lines = out.stdout.splitlines()
    return [line for line in lines if line.split("|")[0] in ids] if window else lines


def sacct_truth(ids: list[str]) -> dict[tuple[str, str, str], tuple[int, str]]:
    """sacct's own numbers, read independently of gpuhub: (JobIDRaw, Submit, Start) -> (ElapsedRaw x
    gres/gpu, account), for every run that started."""
    truth = {}
    for line in _truth_lines(ids):
        raw, submit, start, _end, elapsed, tres, account, _state = line.split("|")
        m = re.search(r"(?:^|,)gres/gpu=(\d+)", tres)
        if start in ("Unknown", "None") or not m:
            continue
        truth[(raw, submit, start)] = (int(elapsed) * int(m.group(1)), account)
    return truth


@pytest.fixture(scope="module")
def jobs(testbed):
    """Jobs of known shape, all finished: plain, requeued once, an array, cancelled while running,
    two nodes. Returns (job ids, window start, window end)."""
    tag = f"acct-{uuid.uuid4().hex[:6]}"
    start = from_epoch(time.time() - 5)
    plain = _sbatch("-J", tag, "-A", "physics", "--gres=gpu:a100:2", "--wrap", "sleep 3")
    requeued = _sbatch("-J", tag, "-A", "astro", "--gres=gpu:v100:1", "--requeue", "--wrap", "sleep 6")
    array = _sbatch("-J", tag, "-A", "astro", "--array=0-2", "--gres=gpu:1", "--wrap", "sleep 2")
    cancelled = _sbatch("-J", tag, "-A", "lsst", "--gres=gpu:a100:1", "--wrap", "sleep 120")
    two_nodes = _sbatch("-J", tag, "-A", "abc@a100", "-N", "2", "--gres=gpu:v100:2", "--wrap", "srun sleep 2")
    _wait_running(requeued)
    time.sleep(2)
    subprocess.run(["scontrol", "requeue", requeued], check=True)
    for _ in range(100):  # a requeued job waits ~2 min before it may start again: release it now
        if _state(requeued) == "PENDING":
            subprocess.run(["scontrol", "update", f"jobid={requeued}", "StartTime=now"], check=True)
            break
        time.sleep(0.2)
    _wait_running(cancelled)
    time.sleep(2)
    subprocess.run(["scancel", cancelled], check=True)
    ids = [plain, requeued, array, cancelled, two_nodes]
    deadline = time.time() + 240
    while True:
        lines = _truth_lines(ids)
        ends = [line.split("|")[3] for line in lines]
        runs_of_requeued = sum(1 for line in lines if line.split("|")[0] == requeued)
        settled = lines and "Unknown" not in ends and runs_of_requeued == 2 and len(lines) == 8
        # slurmdbd may still be settling a run (a restart that failed at once, under load): wait
        # until a query over the window, as the collection makes it, sees every run too.
        raw = sorted({line.split("|")[0] for line in lines})
        if settled and sorted(_truth_lines(raw, (start, from_epoch(time.time() + 1)))) == sorted(lines):
            break
        assert time.time() < deadline, f"jobs not finished: {lines}"
        time.sleep(1)
    time.sleep(1)
    return ids, start, from_epoch(time.time() + 1)


@pytest.fixture
def site(testbed, monkeypatch):
    monkeypatch.setenv("GPUHUB_SITES", str(SITES))
    yield load_site("testbed")
    close_all()


def mine(store, truth) -> dict[tuple[str, str, str], int]:
    """This module's runs as stored: natural key -> GPU-seconds."""
    ids = sorted({k[0] for k in truth})
    rows = store._all(
        "SELECT job_id, submit_time, start_time, gpus, wall_seconds FROM usage_records_v WHERE site = 'testbed' "
        f"AND job_id IN ({', '.join('?' * len(ids))})", ids)
    return {(r[0], r[1], r[2]): round(r[3] * r[4]) for r in rows}


def foreign_runs(store, ids) -> int:
    """How many stored runs of this site belong to jobs other than ``ids``."""
    rows = store._all(
        "SELECT COUNT(*) FROM usage_records_v WHERE site = 'testbed' "
        f"AND job_id NOT IN ({', '.join('?' * len(ids))})", sorted(set(ids)))
    return int(rows[0][0])


def consistent(store) -> int:
    """The rollup and the records agree (nothing counted twice); returns total GPU-seconds."""
    rollup = sum(int(r[-3]) for r in store.rollup([], Filters()))
    records = int(store._all("SELECT COALESCE(SUM(gpu_seconds), 0) FROM usage_records_v")[0][0])
    assert rollup == records
    return rollup


def test_gpu_hours_equal_sacct_and_recollect_changes_nothing(jobs, site, new_url):
    ids, since, until = jobs
    truth = sacct_truth(ids)
    requeued = ids[1]
    assert sum(1 for k in truth if k[0] == requeued) == 2  # the earlier run and the final one
    assert len(truth) == 8  # plain, 2 runs, 3 array tasks, cancelled, 2 nodes
    with open_store(new_url()) as store:
        first = collect_site(store, site, since=since, until=until)
        assert first.ok and first.scope == "all users", first.error
        assert mine(store, truth) == {k: v[0] for k, v in truth.items()}
        total = consistent(store)
        ours = {k[0] for k in truth}
        before = foreign_runs(store, ours)
        second = collect_site(store, site, since=since, until=until)
        # Nothing of ours is new; others' jobs on the shared cluster may have appeared in the window.
        assert second.ok and second.result.new == foreign_runs(store, ours) - before
        assert mine(store, truth) == {k: v[0] for k, v in truth.items()}
        assert consistent(store) >= total  # others' running jobs may have grown; nothing doubled

    # The report on exactly these runs equals sacct's numbers, by project and month.
    lines = subprocess.run(["env", "TZ=UTC", "sacct", "-X", "-D", "-P", "-n", "--noconvert", "-j", ",".join(ids),
                            f"--format={FORMAT}"],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    with open_store(new_url()) as store:
        store.ingest("testbed", parse_sacct(lines))
        report = build_report(store, ["project", "month"])
    expected: dict[str, int] = {}
    for seconds, account in truth.values():
        expected[account.split("@")[0]] = expected.get(account.split("@")[0], 0) + seconds
    assert {r["project"]: round(r["gpu_hours"] * 3600) for r in report.rows} == expected
    assert {r["month"] for r in report.rows} <= {since[:7], until[:7]}
    assert report.total_jobs == 8 and report.provisional_gpu_hours == 0


def _collector(url: str, until: str, since: str | None = None) -> subprocess.Popen:
    argv = [sys.executable, "-m", "gpuhub", "usage", "collect", "--site", "testbed", "--until", until,
            "--chunk", "3m", "--db", url]
    if since:
        argv += ["--since", since]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "GPUHUB_SITES": str(SITES)}
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _final_runs(store) -> dict[tuple[str, ...], tuple]:
    rows = store._all("SELECT cluster, job_id, submit_time, start_time, end_time, wall_seconds, gpus, account "
                      "FROM usage_records_v WHERE final = 1")
    return {tuple(r[:4]): tuple(r[4:]) for r in rows}


def _same_as_reference(store, reference, truth) -> None:
    assert mine(store, truth) == mine(reference, truth) == {k: v[0] for k, v in truth.items()}
    consistent(store)
    ours, theirs = _final_runs(store), _final_runs(reference)
    both = ours.keys() & theirs.keys()
    assert len(both) >= len(truth)
    assert {k: ours[k] for k in both} == {k: theirs[k] for k in both}


def test_killed_collector_resumes_to_the_same_totals(jobs, site, new_url):
    ids, _, until = jobs
    since = from_epoch(to_epoch(until) - 3 * 3600)  # 60 chunks of 3 minutes: a few seconds of sacct calls
    truth = sacct_truth(ids)
    reference_url, url = new_url(), new_url()
    with open_store(reference_url) as reference:
        assert collect_site(reference, site, since=since, until=until, chunk=180).ok
        victim = _collector(url, until, since)
        with open_store(url) as store:
            deadline = time.time() + 120
            while store.watermark("testbed") is None:
                assert victim.poll() is None, victim.communicate()
                assert time.time() < deadline
                time.sleep(0.05)
            time.sleep(0.3)
            assert victim.poll() is None, "the collector finished before it could be killed"
            mark = store.watermark("testbed")
            assert mark is not None and mark < until  # stopped half way
            victim.send_signal(signal.SIGKILL)
            victim.wait(30)
            consistent(store)  # a killed transaction leaves nothing half done
        rerun = _collector(url, until)  # no --since: from the watermark, one overlap earlier
        _, err = rerun.communicate(timeout=300)
        assert rerun.returncode == 0, err
        with open_store(url) as store:
            assert store.watermark("testbed") == until
            _same_as_reference(store, reference, truth)


def test_two_collectors_at_once_never_double_count(jobs, site, new_url):
    ids, since, until = jobs
    truth = sacct_truth(ids)
    reference_url, url = new_url(), new_url()
    with open_store(url):
        pass  # the schema exists before the two start
    first, second = _collector(url, until, since), _collector(url, until, since)
    for proc in (first, second):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    with open_store(reference_url) as reference, open_store(url) as store:
        assert collect_site(reference, site, since=since, until=until, chunk=180).ok
        _same_as_reference(store, reference, truth)
