"""The job lifecycle on the real Slurm testbed, through the loopback sshd, as a student uses it."""

from __future__ import annotations

import itertools
import subprocess
import time
from pathlib import Path

import pytest

from gpuhub import jobs as jobs_api
from gpuhub.backends import backend_for
from gpuhub.errors import GpuhubError
from gpuhub.ledger import Ledger
from gpuhub.registry import load_site
from gpuhub.request import JobRequest
from gpuhub.states import State
from gpuhub.transport import CommandTimeout, close_all, transport_for
from gpuhub.transport.base import TransportError

pytestmark = [pytest.mark.slurm, pytest.mark.ssh]
SITES = Path(__file__).parent / "data" / "sites"


@pytest.fixture
def site(testbed, monkeypatch):
    monkeypatch.setenv("GPUHUB_SITES", str(SITES))
    yield load_site("testbed")
    close_all()


@pytest.fixture
def ledger(tmp_path):
    book = Ledger(tmp_path / "ledger.sqlite")
    yield book
    book.close()


def submit(site, ledger, **kw):
    kw.setdefault("gpus", 1)
    kw.setdefault("time", "10m")
    return jobs_api.submit(JobRequest(**kw), site=site, ledger=ledger)


def test_submit_wait_logs(site, ledger):
    job = submit(site, ledger, command=["bash", "-c", "echo out-$GPUHUB_JOB_NAME; echo err >&2"], name="hello")
    assert job.scheduler_id and job.record.state == State.PENDING
    assert job.wait(timeout=120, interval=0.5) == State.COMPLETED
    assert job.logs() == "out-hello\n"
    assert job.logs(stderr=True) == "err\n"
    assert job.record.exit_code == "0:0"
    assert [s for s, _ in ledger.history(job.id)][:2] == ["submitting", "pending"]
    # the ledger keeps what was sent, token included
    assert f"#SBATCH --comment=gpuhub:{job.record.token}" in job.record.script


def test_failed_job_reports_exit_code(site, ledger):
    job = submit(site, ledger, command=["bash", "-c", "exit 3"])
    assert job.wait(timeout=120, interval=0.5) == State.FAILED
    assert job.record.exit_code == "3:0"


def test_two_node_job(site, ledger):
    job = submit(site, ledger, command=["srun", "bash", "-c", "echo $SLURMD_NODENAME; sleep 3"], nodes=2,
                 gpus_per_node=1, gpus=None)
    deadline = time.time() + 60
    while job.state != State.RUNNING and time.time() < deadline:
        time.sleep(0.3)
    assert job.record.nodes == "n[1-2]"
    assert job.wait(timeout=120, interval=0.5) == State.COMPLETED
    assert sorted(job.logs().split()) == ["n1", "n2"]


def test_array_of_50_is_one_submission(site, ledger):
    job = submit(site, ledger, command=["bash", "-c", "echo task $GPUHUB_ARRAY_INDEX"], array="0-49", gpus=0)
    assert job.wait(timeout=300, interval=1) == State.COMPLETED
    out, _ = backend_for("slurm").log_paths(job.scheduler_id, "gpuhub", site.log_dir, task=49)
    assert transport_for(site).get_text(out) == "task 49\n"
    assert "50 completed" in (job.record.reason or "")


def test_dependency_waits_for_parent(site, ledger):
    parent = submit(site, ledger, command=["sleep", "4"], gpus=0)
    child = submit(site, ledger, command=["true"], dependency=f"afterok:{parent.scheduler_id}", gpus=0)
    time.sleep(1)
    record = child.refresh()
    assert record.state == State.PENDING and record.reason == "Dependency"
    assert child.wait(timeout=120, interval=0.5) == State.COMPLETED
    assert child.record.started_at >= parent.refresh().ended_at


def test_cancel(site, ledger):
    job = submit(site, ledger, command=["sleep", "300"], gpus=0)
    job.cancel()
    assert job.wait(timeout=60, interval=0.5) == State.CANCELLED


class CountingTransport:
    """Counts scheduler calls made through the real transport."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def run(self, argv, **kw):
        self.calls.append(argv[0])
        return self.inner.run(argv, **kw)


def test_status_of_many_jobs_is_one_call_per_kind(site, ledger):
    jobs = [submit(site, ledger, command=["true"], gpus=0) for _ in range(30)]
    counting = CountingTransport(transport_for(site))
    found = backend_for("slurm").poll(counting, [j.scheduler_id for j in jobs])
    assert set(found) == {j.scheduler_id for j in jobs}
    assert counting.calls in (["squeue"], ["squeue", "sacct"])


def test_follow_log_streams_lines(site, ledger):
    job = submit(site, ledger, command=["bash", "-c", "for i in 1 2 3; do echo line $i; sleep 1; done; sleep 30"],
                 gpus=0)
    deadline = time.time() + 60
    while job.state == State.PENDING and time.time() < deadline:
        time.sleep(0.3)
    lines = jobs_api.follow_log(job.record)
    got = [line.strip() for line in itertools.islice(lines, 3)]
    lines.close()
    assert got == ["line 1", "line 2", "line 3"]
    job.cancel()


class DroppingTransport:
    """The real transport, but the connection is cut right after the submit command ran,
    before its answer is read: the job exists on Slurm, the client does not know its id."""

    def __init__(self, inner):
        self.inner, self.dropped = inner, False

    def run(self, argv, **kw):
        result = self.inner.run(argv, **kw)
        if argv[0] == "sbatch" and not self.dropped:
            self.dropped = True
            self.inner.close()
            raise TransportError("connection lost")
        return result

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_connection_lost_mid_submit_leaves_exactly_one_job(site, ledger, monkeypatch):
    real = transport_for(site)
    dropping = DroppingTransport(real)
    calls = iter([dropping])
    monkeypatch.setattr(jobs_api, "transport_for", lambda s: next(calls, None) or transport_for(s))
    job = jobs_api.submit(JobRequest(command=["sleep", "30"], name="once", gpus=0), site=site, ledger=ledger)
    assert dropping.dropped
    token = job.record.token
    listing = transport_for(site).run(["squeue", "-h", "--me", "-o", "%i %k"]).stdout
    assert [line.split()[0] for line in listing.splitlines() if line.endswith(f"gpuhub:{token}")] == [job.scheduler_id]
    job.cancel()


def test_scheduler_timeout_is_reported_clearly(site, ledger):
    """slurmctld frozen (SIGSTOP): squeue hangs, gpuhub gives up at its timeout and says which command."""
    pid = subprocess.run(["pgrep", "-x", "slurmctld"], capture_output=True, text=True).stdout.split()[0]
    transport = transport_for(site)
    transport.run(["true"])  # connect first, so only the scheduler is slow
    subprocess.run(["kill", "-STOP", pid], check=True)
    try:
        start = time.monotonic()
        with pytest.raises(CommandTimeout) as info:
            backend_for("slurm").poll(transport, ["1"], timeout=2)
        assert time.monotonic() - start < 10
    finally:
        subprocess.run(["kill", "-CONT", pid], check=True)
    assert "`squeue -h --me -r" in info.value.message and "did not finish within 2 s" in info.value.message


def test_submit_error_is_clear_and_recorded(site, ledger):
    with pytest.raises(GpuhubError) as info:
        submit(site, ledger, command=["true"], account="nosuchaccount")
    assert "sbatch" in info.value.message and "Invalid account" in info.value.message
    assert ledger.jobs()[0].state == State.FAILED


def test_follow_log_ends_with_the_job(site, ledger):
    """`gpuhub logs -f` over SSH stops once Slurm says the job is over, with its last lines."""
    job = submit(site, ledger, command=["bash", "-c", "echo first; sleep 4; echo last"])
    began = time.monotonic()
    lines = list(jobs_api.follow_log(job.record, ledger=ledger, poll=1.0, grace=1.0))
    assert "".join(lines) == "first\nlast\n" and time.monotonic() - began < 120
    record = ledger.get(job.id).to_dict()
    assert record["state"] == "completed" and record["exit_code"] == 0
    assert record["nodes"] == 1 and record["hosts"] and record["log_out"].startswith("~/")
    assert record["submitted_at"] <= record["started_at"] <= record["ended_at"]
