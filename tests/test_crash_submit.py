"""`kill -9` of `gpuhub submit` at spread-out moments: afterwards every job is tracked or never started.

For each site, one unkilled submit measures how long a submit takes (``d``); then N submits are
killed after delays spread over ``[0.35 d, 1.15 d]`` in random order, so the kills land in the
interpreter start, the ledger write, the send and the recording of the answer. After
:data:`gpuhub.inflight.SETTLE`, ``gpuhub status`` settles the rows left ``submitting``. Then:

* no row is still ``submitting``;
* the submitter recorded the job, or ``status`` adopted it, or the row says "never started";
* every job that exists on the site (a job directory that started / a Slurm job with one of
  the test's names) has a ledger row carrying its id: none escaped the ledger;
* every row without an id ended as "never started", and no job with its name exists or runs.

``GPUHUB_CRASH_N`` sets N (default 20 per site). The counts per outcome are printed. Sites: this
machine, Slurm over SSH, the fake HTCondor pool over SSH and the real OAR over SSH.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from gpuhub import inflight
from gpuhub.ledger import Ledger

N = int(os.environ.get("GPUHUB_CRASH_N", "20"))
SITES = Path(__file__).parent / "data" / "sites"


def gpuhub(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpuhub", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def kill_runs(submit_args: list[str], names: list[str], env: dict[str, str]) -> list[float]:
    """Measure one full submit, then start one per name and SIGKILL it after a spread-out delay."""
    began = time.monotonic()
    probe = gpuhub("submit", "--name", f"{names[0]}-probe", *submit_args, env=env)
    assert probe.returncode == 0, probe.stderr
    took = time.monotonic() - began
    delays = [took * (0.35 + 0.8 * i / max(1, len(names) - 1)) for i in range(len(names))]
    random.shuffle(delays)
    for name, delay in zip(names, delays, strict=True):
        proc = subprocess.Popen([sys.executable, "-m", "gpuhub", "submit", "--name", name, *submit_args],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return delays


def settle(env: dict[str, str]) -> dict[str, dict]:
    """Wait out SETTLE, run `gpuhub status` (it settles the orphaned rows); return rows by name."""
    time.sleep(inflight.SETTLE + 1)
    before = time.time()
    status = gpuhub("status", "--json", env=env)
    assert status.returncode in (0, 1) and "Traceback" not in status.stderr, status.stderr
    book = Ledger(Path(env["GPUHUB_LEDGER"]))
    try:
        return {r.name: {"state": r.state.value, "id": r.scheduler_id, "reason": r.reason, "token": r.token,
                         "adopted": (r.submitted_at or 0) >= before} for r in book.jobs()}
    finally:
        book.close()


def outcome(row: dict | None) -> str:
    if row is None:
        return "killed before the row was written"
    if row["id"]:
        return "adopted by status" if row["adopted"] else "recorded by submit"
    return "never started" if inflight.NEVER_STARTED in (row["reason"] or "") else f"other: {row}"


def check_rows(names: list[str], rows: dict[str, dict], on_site: dict[str, str]) -> Counter:
    """``on_site``: job name -> scheduler id, for every job of the test that exists on the site."""
    counts: Counter = Counter()
    for name in names:
        row = rows.get(name)
        kind = outcome(row)
        counts[kind] += 1
        assert not kind.startswith("other"), kind
        if name in on_site:
            assert row is not None and row["id"] == on_site[name], f"{name}: job {on_site[name]} not tracked ({row})"
        elif row is not None:
            assert row["id"] is None or row["state"] != "submitting", row
    assert all(r["state"] != "submitting" for r in rows.values()), rows
    return counts


def test_kill_9_local_submits(tmp_path):
    env = {**os.environ, "GPUHUB_LEDGER": str(tmp_path / "ledger.sqlite"),
           "GPUHUB_LOCAL_JOBS_DIR": str(tmp_path / "jobs"), "HOME": str(tmp_path)}
    evidence = tmp_path / "ran"
    evidence.mkdir()
    tag = uuid.uuid4().hex[:6]
    names = [f"crash-{tag}-{i}" for i in range(N)]
    # The job says it ran by leaving a file named after its job name.
    args = ["--site", "local", "--", "bash", "-c", f'touch {evidence}/"$GPUHUB_JOB_NAME"; sleep 2']
    delays = kill_runs(args, names, env)
    rows = settle(env)
    time.sleep(3)  # anything that could still start would have by now
    started = {d.name for d in (tmp_path / "jobs").iterdir() if (d / "pid").exists()}
    token_to_name = {r["token"]: n for n, r in rows.items()}
    assert started <= set(token_to_name), "a job directory that started has no ledger row"
    on_site = {token_to_name[t]: t for t in started if token_to_name[t] in names}
    ran = {p.name for p in evidence.iterdir()}
    assert ran <= {n for n in rows if rows[n]["id"]}, "a job ran that the ledger does not track"
    counts = check_rows(names, rows, on_site)
    print(f"\nlocal: {N} kills at {min(delays):.2f}..{max(delays):.2f} s: {dict(counts)}")


def slurm_jobs(testbed: dict[str, str], since: str) -> list[tuple[str, str]]:
    """(name, id) of hubuser's Slurm jobs since ``since`` (sacct keeps finished ones too)."""
    listing = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-u", testbed["TESTBED_SSH_USER"], "-S", since, "--format=JobID,JobName"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    return [(name, job_id) for job_id, _, name in (line.partition("|") for line in listing.splitlines())]


def condor_jobs(testbed: dict[str, str], since: str) -> list[tuple[str, str]]:
    """(batch name, cluster) of every job of the fake pool, queued or in the history."""
    out = []
    for argv in (["condor_q", "-allusers"], ["condor_history"]):
        text = subprocess.run([*argv, "-json", "-attributes", "ClusterId,JobBatchName"], capture_output=True,
                              text=True, timeout=60, check=True).stdout
        out += [(ad["JobBatchName"], str(ad["ClusterId"])) for ad in (json.loads(text) if text.strip() else [])]
    return out


def oar_jobs(testbed: dict[str, str], since: str) -> list[tuple[str, str]]:
    """(name, id gpuhub tracks: the array id) of every OAR job named crash-*, in any state."""
    from gpuhub.backends.oar_parse import parse_oarstat

    text = subprocess.run(["oarstat", "-fJ", "--sql", "name LIKE 'crash-%'"], capture_output=True, text=True,
                          timeout=60, check=True).stdout
    return [(job.name, job.array_id) for job in parse_oarstat(text).values()]


@pytest.mark.slurm
@pytest.mark.ssh
@pytest.mark.parametrize(("site", "listing"), [("testbed", slurm_jobs), ("testbed-condor", condor_jobs),
                                               ("oar-testbed", oar_jobs)])
def test_kill_9_remote_submits_over_ssh(testbed, request, tmp_path, site, listing):
    if site == "testbed-condor":
        request.getfixturevalue("condor_testbed")
    if site == "oar-testbed":
        request.getfixturevalue("oar_testbed")
    env = {**os.environ, "GPUHUB_LEDGER": str(tmp_path / "ledger.sqlite"), "GPUHUB_SITES": str(SITES)}
    tag = uuid.uuid4().hex[:6]
    names = [f"crash-{tag}-{i}" for i in range(N)]
    # One GPU on OAR: a job without GPUs there takes a whole host, and 20 of them would queue.
    args = ["--site", site, "--gpus", "1" if site == "oar-testbed" else "0", "--time", "5m", "--", "sleep", "1"]
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 5))
    delays = kill_runs(args, names, env)
    rows = settle(env)
    on_site: dict[str, str] = {}
    for name, job_id in listing(testbed, since):
        if name.startswith(f"crash-{tag}-") and not name.endswith("-probe"):
            assert name not in on_site, f"two jobs named {name} on {site}: {on_site[name]} and {job_id}"
            on_site[name] = job_id
    counts = check_rows(names, rows, on_site)
    print(f"\n{site} over ssh: {N} kills at {min(delays):.2f}..{max(delays):.2f} s: {dict(counts)}")
