"""submit / status / jobs / logs / cancel on the local site, through the real console command."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest


@pytest.fixture
def gpuhub(isolated, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # local jobs live under ~/.gpuhub/jobs
    monkeypatch.chdir(tmp_path)

    def run(*args: str, check: bool = True):
        proc = subprocess.run([sys.executable, "-m", "gpuhub", *args], capture_output=True, text=True, timeout=120)
        if check:
            assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        return proc

    return run


def test_submit_wait_status_logs(gpuhub, tmp_path):
    (tmp_path / "hello.py").write_text("import os; print('hi from', os.environ['GPUHUB_SITE'])\n")
    out = gpuhub("submit", "--wait", "--name", "greet", "--", sys.executable, "hello.py").stdout
    assert out.startswith("submitted job 1 (local:") and "job 1 completed (exit 0)" in out
    status = json.loads(gpuhub("status", "1", "--json").stdout)
    assert status[0]["state"] == "completed" and status[0]["name"] == "greet"
    assert gpuhub("logs", "last").stdout == "hi from local\n"
    assert "greet" in gpuhub("jobs").stdout


def test_failed_job_wait_exit_code_and_stderr_log(gpuhub):
    proc = gpuhub("submit", "--wait", "--", "bash", "-c", "echo oops >&2; exit 4", check=False)
    assert proc.returncode == 1 and "failed (exit 4)" in proc.stdout
    assert gpuhub("logs", "last", "--stderr").stdout == "oops\n"


def test_job_outlives_the_cli_and_cancel(gpuhub):
    gpuhub("submit", "--", "sleep", "300")  # the CLI process has exited here
    time.sleep(0.5)
    assert json.loads(gpuhub("status", "last", "--json").stdout)[0]["state"] == "running"
    assert "cancelled" in gpuhub("cancel", "last").stdout
    assert json.loads(gpuhub("jobs", "--json").stdout)[0]["state"] == "cancelled"


def masked(script: str) -> str:
    """A script with its submission token (16 hex digits) replaced: the one part that differs per run."""
    return re.sub(r"\b[0-9a-f]{16}\b", "TOKEN", script)


def test_dry_run_is_render(gpuhub):
    dry = gpuhub("submit", "--dry-run", "--", "python", "x.py")
    rendered = gpuhub("render", "--", "python", "x.py")
    assert masked(dry.stdout) == masked(rendered.stdout) and dry.stdout.startswith("#!/bin/bash")
    assert "no jobs recorded yet" in gpuhub("jobs").stdout


def test_dry_run_shows_what_submit_sends_token_included(gpuhub):
    from gpuhub.ledger import Ledger

    dry = gpuhub("render", "--name", "same", "--", "true").stdout
    assert "export GPUHUB_TOKEN=" in dry
    gpuhub("submit", "--wait", "--name", "same", "--", "true")
    book = Ledger()
    try:
        sent = book.jobs()[0]
    finally:
        book.close()
    assert f"export GPUHUB_TOKEN={sent.token}" in sent.script
    assert masked(sent.script) == masked(dry)


def test_unknown_job_reference(gpuhub):
    proc = gpuhub("status", "99", check=False)
    assert proc.returncode == 1 and "no job 99 in the ledger" in proc.stderr
    proc = gpuhub("logs", "bogus", check=False)
    assert "give a gpuhub id (42), SITE:SCHEDULER_ID" in proc.stderr


def test_python_api_handle(isolated, tmp_path, monkeypatch):
    import gpuhub
    from gpuhub.ledger import Ledger

    monkeypatch.setenv("HOME", str(tmp_path))
    ledger = Ledger(tmp_path / "l.sqlite")
    job = gpuhub.submit(command=["bash", "-c", "echo api"], site="local", ledger=ledger)
    assert job.wait(timeout=60, interval=0.2) == gpuhub.State.COMPLETED
    assert job.logs() == "api\n"
    assert ledger.get(job.id).state == gpuhub.State.COMPLETED
