"""submit / status / jobs / logs / cancel on the local site, through the real console command."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

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
    script = "for i in $(seq 1 30); do echo line$i >&2; done; exit 4"
    proc = gpuhub("submit", "--wait", "--", "bash", "-c", script, check=False)
    assert proc.returncode == 4 and "failed (exit 4)" in proc.stdout
    # The end of the error log is shown at once; no advice to follow a job that is over.
    assert "line30" in proc.stderr and "line21" in proc.stderr and "line20" not in proc.stderr
    assert "logs 1 -f" not in proc.stderr
    assert gpuhub("logs", "last", "--stderr").stdout.endswith("line29\nline30\n")
    assert json.loads(gpuhub("jobs", "--json").stdout)[0]["exit_code"] == 4


def test_wait_on_a_killed_job_exits_with_its_status(gpuhub):
    proc = gpuhub("submit", "--wait", "--", "bash", "-c", "kill -KILL $$", check=False)
    assert proc.returncode == 137 and "failed (exit 137)" in proc.stdout
    assert "last lines of its error log" in proc.stderr and "Killed" in proc.stderr


def test_logs_follow_stops_when_the_job_ends(gpuhub):
    """`logs -f` used to follow forever; now it ends (like tail --pid) with the job's last lines."""
    gpuhub("submit", "--", "bash", "-c", "echo start; sleep 3; echo done")
    started = time.monotonic()
    proc = gpuhub("logs", "last", "-f")
    assert proc.stdout == "start\ndone\n"
    assert "job 1 completed" in proc.stderr
    assert time.monotonic() - started < 30


def test_logs_follow_of_a_finished_job_prints_it_and_ends(gpuhub):
    gpuhub("submit", "--wait", "--", "bash", "-c", "echo one; echo two")
    proc = gpuhub("logs", "1", "-f")
    assert proc.stdout == "one\ntwo\n"


def test_logs_follow_ends_when_the_job_is_cancelled(gpuhub):
    gpuhub("submit", "--", "bash", "-c", "echo waiting; sleep 300")
    time.sleep(0.5)
    follower = subprocess.Popen([sys.executable, "-m", "gpuhub", "logs", "last", "-f"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    assert follower.poll() is None  # still following a running job
    gpuhub("cancel", "last")
    out, err = follower.communicate(timeout=60)
    assert out == "waiting\n" and follower.returncode == 0 and "cancelled" in err


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


def _job_schema() -> dict:
    text = (Path(__file__).resolve().parent.parent / "docs" / "json-output.md").read_text(encoding="utf-8")
    return json.loads(text.split("```json\n", 1)[1].split("```", 1)[0])


def test_job_json_follows_the_documented_schema(gpuhub, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    check = jsonschema.Draft202012Validator(_job_schema())
    submitted = json.loads(gpuhub("submit", "--wait", "--json", "--", "bash", "-c", "echo x; exit 3",
                                  check=False).stdout)
    listed = json.loads(gpuhub("jobs", "--json").stdout)
    polled = json.loads(gpuhub("status", "1", "--json").stdout)
    for record in (submitted, *listed, *polled):
        assert not list(check.iter_errors(record)), list(check.iter_errors(record))
        assert record["exit_code"] == 3 and record["nodes"] == 1 and record["gpus"] == 0
        times = [record[k] for k in ("created_at", "submitted_at", "started_at", "ended_at")]
        assert None not in times and times == sorted(times)
        assert record["log_out"].startswith(str(tmp_path)) and record["log_out"].endswith("job.out")
    assert Path(submitted["log_out"]).read_text() == "x\n"


def test_sites_show_json_is_a_site_file(gpuhub):
    data = json.loads(gpuhub("sites", "show", "jean-zay", "--json").stdout)
    assert not [k for k in data if k.startswith("_")]
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(gpuhub("sites", "schema").stdout)
    assert not list(jsonschema.Draft202012Validator(schema).iter_errors(data))


def _ghost(ledger_path: str, age: float) -> int:
    """A row left by a submission that died before the site answered (as a kill -9 leaves it)."""
    from gpuhub.ledger import Ledger

    ledger = Ledger(Path(ledger_path))
    rec = ledger.add(token=f"ghost{age}", site="local", scheduler="local", name="ghost", request={}, plan={},
                     script="")
    ledger.db.execute("UPDATE jobs SET updated_at = updated_at - ? WHERE id = ?", (age, rec.id))
    return rec.id


def test_jobs_forget_and_prune(gpuhub, tmp_path, monkeypatch):
    monkeypatch.setenv("GPUHUB_LEDGER", str(tmp_path / "ledger.sqlite"))
    gpuhub("submit", "--wait", "--", "true")                       # 1: completed
    gpuhub("submit", "--", "sleep", "300")                         # 2: running
    ghost = _ghost(str(tmp_path / "ledger.sqlite"), 3600)          # 3: submission never got through
    young = _ghost(str(tmp_path / "ledger.sqlite"), 0)             # 4: a submission still in progress

    refused = gpuhub("jobs", "forget", "2", check=False)
    assert refused.returncode == 2 and "may still be running" in refused.stderr and "--force" in refused.stderr

    dry = json.loads(gpuhub("jobs", "prune", "--older-than", "0", "--dry-run", "--json").stdout)
    assert sorted(r["id"] for r in dry) == [1, ghost]
    assert len(json.loads(gpuhub("jobs", "--json").stdout)) == 4   # a dry run changes nothing

    out = gpuhub("jobs", "prune", "--older-than", "0").stdout
    assert f"removed job {ghost}" in out and "2 job(s) pruned" in out
    assert sorted(r["id"] for r in json.loads(gpuhub("jobs", "--json").stdout)) == [2, young]

    forgotten = json.loads(gpuhub("jobs", "forget", "2", str(young), "--force", "--json").stdout)
    assert sorted(r["id"] for r in forgotten) == [2, young]
    assert "no jobs recorded yet" in gpuhub("jobs").stdout
    assert gpuhub("jobs", "forget", "2", check=False).returncode == 1
    # Nothing was sent to the site: the forgotten job still runs, until this test stops it.
    import os
    import signal

    for pid_file in (tmp_path / ".gpuhub" / "jobs").glob("*/pid"):
        if not (pid_file.parent / "exitcode").exists():
            os.killpg(int(pid_file.read_text().split()[0]), signal.SIGKILL)
            killed = True
    assert killed


def test_jobs_prune_keeps_recent_jobs_and_checks_its_age(gpuhub):
    gpuhub("submit", "--wait", "--", "true")
    assert "0 job(s) pruned" in gpuhub("jobs", "prune").stdout   # default: older than 30 days
    bad = gpuhub("jobs", "prune", "--older-than", "soon", check=False)
    assert bad.returncode == 2 and "--older-than" in bad.stderr and "age 'soon' is not understood" in bad.stderr
    assert gpuhub("jobs", "prune", "--older-than", "200000d", check=False).returncode == 2


def test_time_limit_is_kept_on_this_machine(gpuhub):
    """--time on a site without a scheduler: TERM to the whole job at the limit; the job is `timeout`."""
    proc = gpuhub("submit", "--wait", "--time", "2s", "--", "bash", "-c", "echo start; sleep 60 & wait; echo never",
                  check=False)
    assert proc.returncode == 143 and "timeout (exit 143)" in proc.stdout
    record = json.loads(gpuhub("jobs", "--json").stdout)[0]
    assert record["state"] == "timeout" and "time limit reached" in record["reason"]
    assert record["ended_at"] - record["started_at"] < 20
    assert gpuhub("logs", "last").stdout == "start\n"
    rendered = gpuhub("render", "--time", "2s", "--", "true").stderr
    assert "time limit 00:00:02 kept by gpuhub" in rendered
    assert "no time limit" in gpuhub("render", "--", "true").stderr
