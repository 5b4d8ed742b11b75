"""A failed or interrupted submit never leaves a job nobody can follow (local site, real processes)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpuhub import inflight
from gpuhub import jobs as jobs_api
from gpuhub.backends import backend_for
from gpuhub.errors import GpuhubError
from gpuhub.ledger import Ledger
from gpuhub.registry import load_site
from gpuhub.request import JobRequest
from gpuhub.states import State
from gpuhub.transport.local import LocalTransport

LOCAL = backend_for("local")


@pytest.fixture
def jobs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "jobs"
    monkeypatch.setenv("GPUHUB_LOCAL_JOBS_DIR", str(root))
    yield root
    if root.is_dir():
        LOCAL.cancel(LocalTransport(), [d.name for d in root.iterdir()])


@pytest.fixture
def ledger(tmp_path: Path):
    book = Ledger(tmp_path / "ledger.sqlite")
    yield book
    book.close()


def orphan_row(ledger: Ledger, name: str):
    """A row as `gpuhub submit` records it before sending, whose submitter then died."""
    site = load_site("local")
    token = jobs_api.new_token()
    job = jobs_api.prepare(site, JobRequest(command=["sleep", "30"], name=name), token)
    record = ledger.add(token=token, site="local", scheduler="local", name=name, request={},
                        plan=job.allocation.summary(), script=job.files[job.main_file])
    return record, job


def test_any_exception_during_send_marks_the_row_failed(jobs_dir, ledger, monkeypatch):
    def broken(*args, **kwargs):
        raise AttributeError("'NoneType' object has no attribute 'run'")

    monkeypatch.setattr(LOCAL, "submit", broken)
    with pytest.raises(GpuhubError) as info:
        jobs_api.submit(JobRequest(command=["true"]), site="local", ledger=ledger)
    assert "AttributeError" in info.value.message and "\n" not in info.value.message
    row = ledger.jobs()[0]
    assert row.state == State.FAILED and row.reason.startswith("submission failed: AttributeError")


def test_os_error_on_the_job_directory_is_one_line_and_recorded(tmp_path, ledger, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("GPUHUB_LOCAL_JOBS_DIR", str(blocker))
    with pytest.raises(GpuhubError) as info:
        jobs_api.submit(JobRequest(command=["true"]), site="local", ledger=ledger)
    assert "\n" not in info.value.message and "Traceback" not in info.value.message
    assert ledger.jobs()[0].state == State.FAILED


def test_cli_reports_a_failed_submit_in_one_line(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("GPUHUB_LOCAL_JOBS_DIR", str(blocker))
    monkeypatch.setenv("GPUHUB_LEDGER", str(tmp_path / "ledger.sqlite"))
    proc = subprocess.run([sys.executable, "-m", "gpuhub", "submit", "--", "true"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "submitting job 1 to local failed" in proc.stderr
    jobs = subprocess.run([sys.executable, "-m", "gpuhub", "jobs"], capture_output=True, text=True, timeout=120)
    assert "failed" in jobs.stdout


def test_status_adopts_a_job_whose_submitter_died_after_sending(jobs_dir, ledger, monkeypatch):
    record, job = orphan_row(ledger, "sent")
    LOCAL.submit(LocalTransport(), job, record.token)  # the job started; its submitter died before recording it
    monkeypatch.setattr(inflight, "SETTLE", 0.0)
    [fresh], errors = jobs_api.refresh([record], ledger)
    assert not errors
    assert fresh.scheduler_id == record.token and fresh.state == State.RUNNING
    assert fresh.log_out and fresh.log_out.endswith("/job.out")


def test_status_ends_a_row_that_never_reached_the_site(jobs_dir, ledger, monkeypatch):
    record, job = orphan_row(ledger, "unsent")
    # Killed after writing the script, before the launcher ran: a later launch must not start it.
    LocalTransport().put_text(f"{jobs_dir}/{record.token}/job.sh", job.files["job.sh"], 0o755)
    monkeypatch.setattr(inflight, "SETTLE", 0.0)
    [fresh], _ = jobs_api.refresh([record], ledger)
    assert fresh.state == State.FAILED and inflight.NEVER_STARTED in (fresh.reason or "")
    LOCAL.submit(LocalTransport(), job, record.token)  # a launcher that was still in flight
    time.sleep(0.5)
    assert LOCAL.poll(LocalTransport(), [record.token])[record.token].state == State.CANCELLED
    assert not (jobs_dir / record.token / "job.out").exists()


def test_young_rows_and_live_submitters_are_left_alone(jobs_dir, ledger, monkeypatch):
    record, _ = orphan_row(ledger, "young")
    [fresh], _ = jobs_api.refresh([record], ledger)
    assert fresh.state == State.SUBMITTING  # younger than SETTLE: a submit command may still be running
    monkeypatch.setattr(inflight, "SETTLE", 0.0)
    with inflight.hold(ledger, record.token):
        assert inflight.submitter_alive(ledger, record.token)
        [fresh], _ = jobs_api.refresh([record], ledger)
        assert fresh.state == State.SUBMITTING
    assert not inflight.submitter_alive(ledger, record.token)


def test_cancel_of_submitting_rows(jobs_dir, ledger):
    sent, job = orphan_row(ledger, "sent")
    LOCAL.submit(LocalTransport(), job, sent.token)
    unsent, _ = orphan_row(ledger, "unsent")
    jobs_api.cancel([sent, unsent], ledger)  # no settle time: the user wants them gone now
    assert ledger.get(sent.id).state == State.CANCELLED and ledger.get(sent.id).scheduler_id == sent.token
    assert ledger.get(unsent.id).state == State.CANCELLED
    assert ledger.get(unsent.id).reason == "cancelled before it reached the site"
