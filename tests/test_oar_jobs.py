"""Jobs on the real OAR testbed through gpuhub, over the loopback sshd, as a user on GRICAD would."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path

import pytest

from gpuhub import jobs as jobs_api
from gpuhub.accounting.collect import collect_site
from gpuhub.accounting.records import from_epoch
from gpuhub.accounting.store import open_store
from gpuhub.backends import backend_for
from gpuhub.backends.oar import script_path
from gpuhub.ledger import Ledger
from gpuhub.plan import plan
from gpuhub.registry import load_site
from gpuhub.render import render
from gpuhub.request import JobRequest
from gpuhub.states import State
from gpuhub.transport import close_all, transport_for

pytestmark = [pytest.mark.oar, pytest.mark.ssh]
SITES = Path(__file__).parent / "data" / "sites"
GOLDEN = Path(__file__).parent / "golden" / "gricad-bigfoot"


@pytest.fixture
def site(oar_testbed, monkeypatch):
    monkeypatch.setenv("GPUHUB_SITES", str(SITES))
    try:
        yield load_site("oar-testbed")
    finally:
        close_all()


@pytest.fixture
def ledger(tmp_path):
    with closing(Ledger(tmp_path / "ledger.sqlite")) as book:
        yield book


def submit(site, ledger, **kw):
    """Through gpuhub's own submit, as `gpuhub submit --site oar-testbed` does (10 minutes unless said)."""
    return jobs_api.submit(JobRequest(**{"time": "10m", **kw}), site=site, ledger=ledger)


def wait_for(job, state: State, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while job.state != state:
        assert not job.record.state.finished or state.finished, job.record
        assert time.monotonic() < deadline, f"job {job.scheduler_id} still {job.record.state}, not {state}"
        time.sleep(0.3)


def oar_db(sql: str) -> list[list[str]]:
    """A query on OAR's own database (root on the testbed machine)."""
    out = subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-X", "-p", "5432", "-d", "oar", "-tAc", sql],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return [line.split("|") for line in out.split()]


def test_one_and_two_gpu_jobs_follow_oar_states_and_gpu_hours_match_oar(site, ledger, tmp_path):
    first = submit(site, ledger, command=["bash", "-c", "sleep 3; echo one on $(sort -u $OAR_NODEFILE)"],
                   name="one gpu", gpus=1)
    # The 2-GPU V100 job follows the first (OAR's -a): it waits until the first has ended.
    second = submit(site, ledger, command=["bash", "-c", "echo two; echo err >&2"], name="two", gpus=2,
                    gpu_type="v100", dependency=f"afterany:{first.scheduler_id}")
    assert second.state == State.PENDING
    wait_for(first, State.RUNNING)
    assert second.state == State.PENDING and "oarnode1" in (first.record.nodes or "")
    assert first.wait(timeout=90, interval=0.5) == State.COMPLETED
    assert second.wait(timeout=90, interval=0.5) == State.COMPLETED
    assert first.logs() == "one on oarnode1\n"
    assert second.logs() == "two\n" and second.logs(stderr=True) == "err\n"
    assert second.record.nodes == "oarnode2" and second.record.exit_code == "0:0"
    history = [s for s, _ in ledger.history(first.id)]
    assert history[:4] == ["submitting", "pending", "running", "completed"]

    ids = [first.scheduler_id, second.scheduler_id]
    store = open_store(str(tmp_path / "usage.sqlite"))
    stops = oar_db(f"SELECT min(start_time), max(stop_time) FROM jobs WHERE job_id IN ({','.join(ids)})")[0]
    outcome = collect_site(store, site, since=from_epoch(int(stops[0]) - 1), until=from_epoch(int(stops[1]) + 1))
    assert outcome.ok, outcome.error
    store.close()
    with sqlite3.connect(tmp_path / "usage.sqlite") as db:
        ours = dict(db.execute(f"SELECT job_id, gpu_seconds FROM usage_records_v WHERE job_id IN ({','.join(ids)})"))
    theirs = oar_db(
        "SELECT j.job_id, count(DISTINCT r.gpu) * (j.stop_time - j.start_time) FROM jobs j "
        "JOIN assigned_resources a ON a.moldable_job_id = j.assigned_moldable_job "
        f"JOIN resources r ON r.resource_id = a.resource_id WHERE j.job_id IN ({','.join(ids)}) "
        "GROUP BY j.job_id, j.start_time, j.stop_time")
    assert {k: int(v) for k, v in ours.items()} == {k: int(v) for k, v in theirs} and len(theirs) == 2
    gpus = dict(oar_db(f"SELECT j.job_id, count(DISTINCT r.gpu) FROM jobs j JOIN assigned_resources a "
                       f"ON a.moldable_job_id = j.assigned_moldable_job JOIN resources r USING (resource_id) "
                       f"WHERE j.job_id IN ({','.join(ids)}) GROUP BY j.job_id"))
    assert gpus == {first.scheduler_id: "1", second.scheduler_id: "2"}


def test_cancel_a_running_job(site, ledger):
    job = submit(site, ledger, command=["bash", "-c", "echo started; exec sleep 300"], name="to cancel", gpus=1)
    wait_for(job, State.RUNNING)
    deadline = time.monotonic() + 30
    out, _ = backend_for("oar").log_paths(job.scheduler_id, "to cancel", site.log_dir)
    while transport_for(site).run(["cat", out], check=False).stdout != "started\n":  # the command runs
        assert time.monotonic() < deadline
        time.sleep(0.3)
    job.cancel()
    assert job.wait(timeout=60, interval=0.5) == State.CANCELLED
    job.cancel()  # already killed: OAR's exit 6 is not an error


def test_array_tasks_have_their_index_and_log(site, ledger):
    job = submit(site, ledger, command=["bash", "-c", "echo task $GPUHUB_ARRAY_INDEX"], name="sweep", gpus=1,
                 array="4-6")
    assert job.wait(timeout=120, interval=0.5) == State.COMPLETED
    transport = transport_for(site)
    for task in (4, 5, 6):
        out, _ = backend_for("oar").log_paths(job.scheduler_id, "sweep", site.log_dir, task=task)
        assert transport.get_text(out) == f"task {task}\n"
    assert "3 completed" in (job.record.reason or "")


def test_lost_submission_is_found_by_its_token(site, ledger):
    backend = backend_for("oar")
    token = jobs_api.new_token()
    job = render(plan(site, JobRequest(command=["true"], gpus=1, time="5m", name="adopt")), token=token)
    transport = transport_for(site)
    scheduler_id = backend.submit(transport, job, token)
    assert backend.find_by_tokens(transport, [token, "ffff0000ffff0000"]) == {token: scheduler_id}
    assert transport.get_text(script_path(site.log_dir, "adopt", token)) == job.files["job.oar"]


def test_live_gpus_through_the_backend(site, ledger):
    job = submit(site, ledger, command=["sleep", "30"], name="probe", gpus=2, gpu_type="v100")
    wait_for(job, State.RUNNING)
    try:
        reading = backend_for("oar").read_gpus(site, transport_for(site), time.monotonic() + 30)
        nodes = {n.name: n for n in reading.nodes}
        assert nodes["oarnode2"].total == {"v100": 4} and nodes["oarnode2"].used.get("v100", 0) >= 2
        assert any(j.state == "running" and j.gpus.get("v100", 0) == 2 for j in reading.jobs or [])
    finally:
        job.cancel()


def test_shipped_bigfoot_scripts_are_accepted_by_oarsub(site):
    """The golden scripts of the shipped GRICAD site go through the real oarsub -S (held, then deleted)."""
    transport = transport_for(site)
    scripts = sorted(GOLDEN.glob("*/job.oar"))
    assert scripts
    transport.run(["mkdir", "-p", "gpuhub-oar-golden"])
    for path in scripts:
        remote = f"gpuhub-oar-golden/{path.parent.name}.oar"
        transport.put_text(remote, path.read_text(), 0o755)
        result = transport.run(["oarsub", "--hold", "-S", f"./{remote}"], check=False)
        assert result.returncode == 0, (path, result.stdout, result.stderr)
        backend = backend_for("oar")
        backend.cancel(transport, [backend.parse_submit(result.stdout)])  # every job of an array too


def test_requeue_resubmits_and_gpuhub_follows_the_new_run(site, ledger):
    """--requeue: OAR's checkpoint signal, exit 99, OAR resubmits (idempotent, ran > 60 s); gpuhub
    follows the new run under the same id and its log continues in the same file."""
    job = submit(site, ledger, command=["bash", "-c", "echo run $OAR_JOB_ID; exec sleep 300"], name="requeued",
                 gpus=1, requeue=True)
    transport = transport_for(site)
    try:
        wait_for(job, State.RUNNING)
        time.sleep(62)  # OAR resubmits only jobs that ran more than 60 s
        transport.run(["oardel", "-c", job.scheduler_id])  # the signal OAR sends before the walltime
        deadline = time.monotonic() + 60
        while not transport.run(["oarstat", "-J", "--sql", f"resubmit_job_id = {job.scheduler_id}"]).stdout.strip():
            assert time.monotonic() < deadline, "OAR did not resubmit the job"
            time.sleep(0.5)
        wait_for(job, State.RUNNING)
        deadline = time.monotonic() + 30
        while len(job.logs().splitlines()) < 2:
            assert time.monotonic() < deadline, job.logs()
            time.sleep(0.5)
        first, second = job.logs().splitlines()
        assert first == f"run {job.scheduler_id}" and second.startswith("run ") and second != first
        assert "time limit near" in job.logs(stderr=True)
    finally:
        job.cancel()
    assert job.wait(timeout=60, interval=0.5) == State.CANCELLED
