"""HTCondor end to end through the real CLI: over the testbed's sshd to the fake pool of
scripts/testbed/htcondor.sh (condor_* played on HTCondor's own bindings), and on this machine."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ssh]
SITES = Path(__file__).parent / "data" / "sites"


@pytest.fixture
def gpuhub(condor_testbed, tmp_path, monkeypatch):
    monkeypatch.setenv("GPUHUB_SITES", f"{tmp_path}:{SITES}")
    monkeypatch.setenv("GPUHUB_LEDGER", str(tmp_path / "ledger.sqlite"))

    def run(*args: str, check: bool = True, timeout: float = 120):
        proc = subprocess.run([sys.executable, "-m", "gpuhub", *args], capture_output=True, text=True,
                              timeout=timeout, env=dict(os.environ))
        if check:
            assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        return proc

    return run


def stored_runs(db: str) -> dict[tuple[str, int, int], tuple]:
    """The usage database's runs of the pool: (job id, submit, start) -> what is stored of them."""
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT job_id, submit_time, start_time, end_time, wall_seconds, gpus, state "
                            "FROM usage_records_v WHERE site = 'testbed-condor'").fetchall()
    return {(r[0], r[1], r[2]): r[3:] for r in rows}


def status(gpuhub, ref: str) -> dict:
    return json.loads(gpuhub("status", ref, "--json").stdout)[0]


def wait_for(gpuhub, ref: str, states: set[str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while (row := status(gpuhub, ref))["state"] not in states:
        assert time.monotonic() < deadline, row
        time.sleep(0.5)
    return row


def test_submit_status_logs_follow_cancel_usage(gpuhub, tmp_path):
    script = "for i in 1 2 3; do echo line $i; sleep 0.3; done; echo on $CUDA_VISIBLE_DEVICES >&2"
    out = gpuhub("submit", "--site", "testbed-condor", "--gpus", "2", "--name", "condor-ok", "--",
                 "bash", "-c", script).stdout
    assert out.startswith("submitted job 1 (testbed-condor:")
    follow = subprocess.Popen([sys.executable, "-m", "gpuhub", "logs", "1", "-f"], stdout=subprocess.PIPE,
                              text=True, env=dict(os.environ))
    try:
        got = [follow.stdout.readline().strip() for _ in range(3)]
    finally:
        follow.terminate()
        follow.wait(10)
    assert got == ["line 1", "line 2", "line 3"]
    done = wait_for(gpuhub, "1", {"completed", "failed"})
    assert done["state"] == "completed" and done["exit_code"] == 0 and done["gpus"] == 2
    assert gpuhub("logs", "1").stdout == "line 1\nline 2\nline 3\n"
    assert gpuhub("logs", "1", "--stderr").stdout.startswith("on GPU-")

    gpuhub("submit", "--site", "testbed-condor", "--gpus", "1", "--", "sleep", "300")
    wait_for(gpuhub, "2", {"running"})
    assert "cancelled" in gpuhub("cancel", "2").stdout
    row = status(gpuhub, "2")
    assert row["state"] == "cancelled" and row["reason"].startswith("removed: via condor_rm")

    db = str(tmp_path / "usage.db")
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 600))
    collected = json.loads(gpuhub("usage", "collect", "--site", "testbed-condor", "--since", since, "--db", db,
                                  "--json").stdout)
    assert collected[0]["ok"] and collected[0]["new"] >= 2
    ours = {status(gpuhub, ref)["scheduler_id"] for ref in ("1", "2")}
    ours = {i if "." in i else f"{i}.0" for i in ours}
    before = stored_runs(db)
    assert ours <= {key[0] for key in before}
    again = json.loads(gpuhub("usage", "collect", "--site", "testbed-condor", "--since", since, "--db", db,
                              "--json").stdout)
    after = stored_runs(db)
    # Collecting again changes nothing of ours; other tests' jobs on the shared pool may have
    # started or ended in between, and exactly those are counted.
    assert {k: v for k, v in after.items() if k[0] in ours} == {k: v for k, v in before.items() if k[0] in ours}
    assert again[0]["new"] == len(after.keys() - before.keys())
    assert again[0]["updated"] == sum(1 for k in before.keys() & after.keys() if before[k] != after[k])
    report = json.loads(gpuhub("usage", "report", "--db", db, "--site", "testbed-condor", "--by", "project",
                               "--format", "json").stdout)
    assert report["rows"] and report["rows"][0]["project"]


def test_array_and_gpu_constraints(gpuhub):
    gpuhub("submit", "--site", "testbed-condor", "--gpus", "1", "--array", "0-4%2", "--", "bash", "-c",
           "echo task $GPUHUB_ARRAY_INDEX")
    row = wait_for(gpuhub, "1", {"completed", "failed"})
    assert row["state"] == "completed" and "5 completed" in row["reason"]
    # capability 8.0 and 39 GB: only the A100 machine of the pool fits
    gpuhub("submit", "--site", "testbed-condor", "--partition", "a100", "--gpus", "1", "--", "true")
    assert wait_for(gpuhub, "2", {"completed", "running"})["hosts"] == "gpu01.fake-pool"


def test_refusals_are_one_line(gpuhub):
    proc = gpuhub("submit", "--site", "testbed-condor", "--after", "1", "--", "true", check=False)
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1
    proc = gpuhub("submit", "--site", "testbed-condor", "--dependency", "afterok:1", "--", "true", check=False)
    assert proc.returncode == 2 and "dependencies are not available" in proc.stderr
    proc = gpuhub("submit", "--site", "testbed-condor", "--gpus", "8", "--", "true", check=False)
    assert proc.returncode == 2 and "single-node jobs only" in proc.stderr


def test_on_this_machine(gpuhub, tmp_path, monkeypatch):
    """A site without `connection`: condor_* run here (as this user), logs under $HOME."""
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "condor-here.yaml").write_text(
        "name: condor-here\nscheduler: htcondor\npartitions:\n  gpu:\n    gpus_per_node: 4\n")
    gpuhub("submit", "--site", "condor-here", "--gpus", "1", "--wait", "--", "bash", "-c", "echo here")
    assert gpuhub("logs", "1").stdout == "here\n"
    assert (tmp_path / "home" / "gpuhub-logs").is_dir()


def test_live_gpus_of_the_pool_through_the_interface(gpuhub, monkeypatch):
    """The exporter's probe (condor_status slots, condor_q demand), as the backend serves it."""
    from gpuhub.backends import backend_for
    from gpuhub.registry import load_site
    from gpuhub.transport import close_all, transport_for

    gpuhub("submit", "--site", "testbed-condor", "--gpus", "2", "--", "sleep", "60")
    wait_for(gpuhub, "1", {"running"})
    site = load_site("testbed-condor")
    try:
        reading = backend_for("htcondor").read_gpus(site, transport_for(site), time.monotonic() + 30)
    finally:
        close_all()
        gpuhub("cancel", "1")
    nodes = {(n.name, n.available): n for n in reading.nodes}
    assert nodes[("gpu01.fake-pool", True)].total == {"a100": 4}
    assert nodes[("gpu02.fake-pool", True)].total == {"v100": 4}
    assert nodes[("gpu03.fake-pool", False)].total == {"h100": 2}  # drained: its GPUs cannot be handed out
    assert sum(sum(n.used.values()) for n in reading.nodes) >= 2
    assert any(job.state == "running" and job.gpus == {"": 2} for job in reading.jobs or [])
