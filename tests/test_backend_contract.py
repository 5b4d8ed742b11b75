"""One contract, every backend: Slurm (real testbed, over SSH), the shell backend (this machine, and
a lab server over SSH), HTCondor (the fake pool of scripts/testbed/htcondor.sh, over SSH) and OAR (the
real OAR of scripts/testbed/oar.sh, over SSH).

Each goes through what a user calls (``gpuhub.jobs`` and ``usage`` collection) and must behave
alike: a job is found by its token, completes with its logs readable, a failing job is failed,
a running job is cancelled, many jobs are polled at once, and the GPU job's usage reaches the
accounting store (collecting twice changes nothing).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from conftest import connection_yaml
from gpuhub import jobs as jobs_api
from gpuhub.accounting.collect import collect_site
from gpuhub.accounting.records import from_epoch
from gpuhub.accounting.store import open_store
from gpuhub.backends import backend_for
from gpuhub.ledger import Ledger
from gpuhub.registry import load_site
from gpuhub.request import JobRequest
from gpuhub.states import State
from gpuhub.transport import close_all, transport_for

SITES = Path(__file__).parent / "data" / "sites"


def _shell_site(name: str, scheduler: str, connection: str) -> str:
    return f"name: {name}\nscheduler: {scheduler}\n{connection}partitions:\n  gpu:\n    gpus_per_node: 2\n"


@pytest.fixture(params=["slurm", "local", "ssh", "htcondor", "oar"])
def site(request, tmp_path, monkeypatch):
    kind = request.param
    sites = tmp_path / "sites"
    sites.mkdir()
    monkeypatch.setenv("GPUHUB_SITES", f"{sites}:{SITES}")
    if kind == "slurm":
        request.getfixturevalue("testbed")
        name = "testbed"
    elif kind == "htcondor":
        request.getfixturevalue("condor_testbed")
        name = "testbed-condor"
    elif kind == "oar":
        request.getfixturevalue("oar_testbed")
        name = "oar-testbed"
    elif kind == "ssh":
        # A lab server reserves GPUs through nvidia-smi: the testbed's fake one, on a fake host.
        from labbed import lab_env, make_host, remove_host

        testbed = request.getfixturevalue("testbed")
        host = make_host(lab_env(testbed), "lab", gpus=2)
        request.addfinalizer(lambda: remove_host(host))
        lab = f"lab:\n  nvidia_smi: {host.nvidia_smi}\n  lock_dir: {host.lock_dir}\n"
        (sites / "lab-testbed.yaml").write_text(_shell_site("lab-testbed", "ssh", connection_yaml(testbed)) + lab)
        name = "lab-testbed"
    else:
        monkeypatch.setenv("GPUHUB_LOCAL_JOBS_DIR", str(tmp_path / "jobs"))
        (sites / "local-gpu.yaml").write_text(_shell_site("local-gpu", "local", ""))
        name = "local-gpu"
    yield load_site(name)
    close_all()


@pytest.fixture
def ledger():
    book = Ledger()  # the default path (isolated per test): the one ledger-based usage reads
    yield book
    book.close()


def submit(site, ledger, **kw):
    kw.setdefault("gpus", 1)
    kw.setdefault("time", "10m")
    kw.setdefault("name", f"contract-{uuid.uuid4().hex[:6]}")
    return jobs_api.submit(JobRequest(**kw), site=site, ledger=ledger)


def wait_state(job, states, timeout=120.0):
    deadline = time.monotonic() + timeout
    while job.state not in states:
        assert time.monotonic() < deadline, f"job {job.record.ref} still {job.record.state.value}"
        time.sleep(0.5)
    return job.record.state


def test_submit_status_logs_cancel_usage(site, ledger, tmp_path):
    backend = backend_for(site.scheduler)
    since = from_epoch(time.time() - 120)
    ok = submit(site, ledger, command=["bash", "-c", 'echo "out-$GPUHUB_JOB_NAME"; echo err >&2'], name="ok-job")
    bad = submit(site, ledger, command=["bash", "-c", "exit 3"])
    long = submit(site, ledger, command=["sleep", "300"])
    jobs = [ok, bad, long]

    # Every submission is found again by its token, and only those.
    transport = transport_for(site)
    tokens = [j.record.token for j in jobs]
    assert backend.find_by_tokens(transport, [*tokens, "0123456789abcdef"]) == {
        j.record.token: j.scheduler_id for j in jobs}

    # One poll answers for all of them.
    polled = backend.poll(transport, [j.scheduler_id for j in jobs])
    assert set(polled) == {j.scheduler_id for j in jobs}

    assert ok.wait(timeout=120, interval=0.5) == State.COMPLETED
    assert ok.logs() == "out-ok-job\n" and ok.logs(stderr=True) == "err\n"
    assert ok.record.started_at and ok.record.ended_at
    assert bad.wait(timeout=120, interval=0.5) == State.FAILED
    assert "3" in (bad.record.exit_code or "") or "3" in (bad.record.reason or "")

    assert wait_state(long, {State.RUNNING}) == State.RUNNING
    long.cancel()
    assert long.wait(timeout=60, interval=0.5) == State.CANCELLED

    # Usage: the completed GPU job is in the store, once, whatever collects it.
    with open_store(str(tmp_path / "usage.db")) as store:
        deadline = time.monotonic() + 60
        while True:
            outcome = collect_site(store, site, since=since)
            assert outcome.ok, outcome.error
            rows = store._all("SELECT job_id, gpus, state FROM usage_records_v")
            mine = [r for r in rows if r[0] in {ok.scheduler_id, ok.record.token, f"{ok.scheduler_id}.0"}]
            if mine or time.monotonic() > deadline:  # slurmdbd records a job a moment after it ends
                break
            time.sleep(2)
        assert [(gpus, state) for _, gpus, state in mine] == [(1.0, "COMPLETED")]
        again = collect_site(store, site, since=since)  # (a job ending meanwhile may add its run)
        assert again.ok
        rows = store._all("SELECT job_id, gpus, state FROM usage_records_v")
        assert [r for r in rows if r[0] == mine[0][0]] == mine  # the same run, counted once
