"""The shell backend (``local`` and ``ssh`` sites) with real processes.

Jobs are rendered by the real pipeline and started through a real transport; they run in
``$GPUHUB_LOCAL_JOBS_DIR`` (a temporary directory) on this machine, or in the testbed user's
home over the loopback sshd.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from conftest import connection_yaml
from gpuhub.backends import backend_for, shell
from gpuhub.errors import GpuhubError
from gpuhub.plan import plan
from gpuhub.registry import load_site
from gpuhub.render import render
from gpuhub.request import JobRequest
from gpuhub.states import JobStatus, State
from gpuhub.transport.local import LocalTransport

SHELL = backend_for("local")
HAS_PROC = Path("/proc/self/stat").exists()
needs_proc = pytest.mark.skipif(not HAS_PROC, reason="inspects processes through /proc (Linux)")


class CountingTransport(LocalTransport):
    """A local transport that records every command it runs."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def run(self, argv, stdin=None, timeout=60.0, check=True):  # type: ignore[no-untyped-def]
        self.calls.append(list(argv))
        return super().run(argv, stdin=stdin, timeout=timeout, check=check)


@pytest.fixture
def jobs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "jobs"
    monkeypatch.setenv(shell.LOCAL_JOBS_ENV, str(root))
    return root


@pytest.fixture
def transport(jobs_dir: Path):
    """A counting local transport; every job started through it is cancelled at the end."""
    t = CountingTransport()
    yield t
    if jobs_dir.is_dir():
        SHELL.cancel(LocalTransport(), [d.name for d in jobs_dir.iterdir()])


def new_token() -> str:
    return uuid.uuid4().hex


def rendered(token: str, site: str = "local", **request):
    request.setdefault("name", "shell-test")
    return render(plan(load_site(site), JobRequest(**request)), token)


def start(transport, **request) -> str:
    token = new_token()
    assert SHELL.submit(transport, rendered(token, **request), token) == token
    return token


def wait_for(transport, job_id: str, states: set[State], timeout: float = 30.0) -> JobStatus:
    deadline = time.monotonic() + timeout
    while True:
        status = SHELL.poll(transport, [job_id])[job_id]
        if status.state in states:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {status} after {timeout} s, wanted {states}")
        time.sleep(0.1)


def job_pid(jobs_dir: Path, job_id: str) -> int:
    return int((jobs_dir / job_id / "pid").read_text().split()[0])


def proc_stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat from field 3 (state) on."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def live_group(pgid: int) -> list[int]:
    """Processes of a process group that are still alive (zombies do not count)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = proc_stat(int(entry.name))
        except (OSError, ValueError):
            continue
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def wait_group_gone(pgid: int, timeout: float = 5.0) -> None:
    """The group's processes may take a moment to be reaped by the kernel after KILL."""
    deadline = time.monotonic() + timeout
    while live_group(pgid):
        assert time.monotonic() < deadline, f"process group {pgid} still has {live_group(pgid)}"
        time.sleep(0.05)


def wait_group_size(pgid: int, size: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(live_group(pgid)) < size:
        assert time.monotonic() < deadline, f"process group {pgid} never reached {size} processes"
        time.sleep(0.05)


# --- pure parts ----------------------------------------------------------------------------------


def test_parse_poll_states():
    out = shell.parse_poll(
        "a|running||1700000000|\n"
        "b|completed|0|1700000000|1700000060\n"
        "c|failed|3|1700000000|1700000005\n"
        "d|failed|137|1700000000|1700000005\n"
        "e|cancelled|143|1700000000|1700000009\n"
        "f|cancelled||1700000000|\n"
        "g|pending|||\n"
        "h|lost||1700000000|\n"
        "i|nostart|||\n"
        "j|nodir|||\n"
    )
    assert out["a"] == JobStatus(State.RUNNING, start=1700000000.0)
    assert out["b"] == JobStatus(State.COMPLETED, exit_code="0", start=1700000000.0, end=1700000060.0)
    assert out["c"].state == State.FAILED and out["c"].exit_code == "3" and out["c"].reason == "exit code 3"
    assert out["d"].state == State.FAILED and out["d"].reason == "killed by SIGKILL (exit code 137)"
    assert out["e"] == JobStatus(
        State.CANCELLED, reason="cancelled", exit_code="143", start=1700000000.0, end=1700000009.0
    )
    assert out["f"].state == State.CANCELLED and out["f"].exit_code is None
    assert out["g"] == JobStatus(State.PENDING, reason="starting")
    assert out["h"].state == State.FAILED and "without recording an exit code" in (out["h"].reason or "")
    assert out["i"].state == State.UNKNOWN and "never started" in (out["i"].reason or "")
    assert out["j"].state == State.UNKNOWN and "no job directory" in (out["j"].reason or "")


def test_parse_poll_tolerates_noise():
    out = shell.parse_poll(
        "\n"
        "motd: welcome to the lab server\n"
        "x|running||not-a-number|\n"
        "y|weird|||\n"
        "|running|||\n"
        "z|completed|0|1|2|extra\n"
    )
    assert set(out) == {"x", "y"}
    assert out["x"] == JobStatus(State.RUNNING)
    assert out["y"].state == State.UNKNOWN and "weird" in (out["y"].reason or "")


def test_parse_poll_running_has_no_end():
    assert shell.parse_poll("a|running||5|9\n")["a"].end is None


def test_job_dir_and_log_paths(monkeypatch):
    monkeypatch.delenv(shell.LOCAL_JOBS_ENV, raising=False)
    assert shell.job_dir("abc123") == "~/.gpuhub/jobs/abc123"
    # on a lab server: relative to the home directory, where commands start and SFTP paths begin
    assert backend_for("ssh").log_paths("abc123", "my job", "gpuhub-logs") == (
        ".gpuhub/jobs/abc123/job.out",
        ".gpuhub/jobs/abc123/job.err",
    )
    # on this machine: absolute, so they stay right whatever HOME is later
    monkeypatch.setenv("HOME", "/home/ana")
    assert SHELL.log_paths("abc123", "my job", "gpuhub-logs")[0] == "/home/ana/.gpuhub/jobs/abc123/job.out"
    monkeypatch.setenv(shell.LOCAL_JOBS_ENV, "/tmp/x/jobs/")
    assert shell.job_dir("abc123") == "/tmp/x/jobs/abc123"
    assert SHELL.log_paths("abc123", "my job", "gpuhub-logs")[1] == "/tmp/x/jobs/abc123/job.err"


@pytest.mark.parametrize("bad", ["", "..", ".hidden", "a/b", "a b", "a;b", "$(id)", "x" * 200])
def test_bad_tokens_are_refused(bad):
    with pytest.raises(GpuhubError):
        shell.job_dir(bad)


def test_no_ids_no_command(transport):
    assert SHELL.poll(transport, []) == {}
    SHELL.cancel(transport, [])
    assert transport.calls == []


# --- real processes on this machine ---------------------------------------------------------------


def test_lifecycle_completed(transport, jobs_dir):
    job_id = start(transport, script='echo "out $GPUHUB_JOB_NAME $PWD"; echo err >&2; sleep 1', name="hello")
    assert len(transport.calls) == 1  # the launcher; the file went through put_text
    assert (jobs_dir / job_id / "job.sh").stat().st_mode & 0o777 == 0o755
    assert SHELL.find_by_tokens(transport, [job_id]).get(job_id) == job_id

    running = SHELL.poll(transport, [job_id])[job_id]
    assert running.state == State.RUNNING and running.start and running.end is None

    done = wait_for(transport, job_id, {State.COMPLETED, State.FAILED})
    assert done.state == State.COMPLETED
    assert done.exit_code == "0" and done.reason is None
    assert done.start and done.end and done.start <= done.end

    out, err = SHELL.log_paths(job_id, "hello", "gpuhub-logs")
    # the job runs in its own directory
    assert transport.get_text(out) == f"out hello {jobs_dir / job_id}\n"
    assert transport.get_text(err) == "err\n"
    assert transport.run(["cat", "--", err]).stdout == "err\n"


def test_failing_command_reports_its_exit_code(transport):
    job_id = start(transport, command=["bash", "-c", "echo about to fail >&2; exit 3"])
    status = wait_for(transport, job_id, {State.COMPLETED, State.FAILED})
    assert status.state == State.FAILED
    assert status.exit_code == "3" and status.reason == "exit code 3"


def test_submitting_the_same_token_twice_starts_one_job(transport, jobs_dir):
    token = new_token()
    job = rendered(token, command=["sleep", "30"])
    SHELL.submit(transport, job, token)
    first = (jobs_dir / token / "pid").read_text()
    assert SHELL.submit(transport, job, token) == token
    assert (jobs_dir / token / "pid").read_text() == first
    assert SHELL.poll(transport, [token])[token].state == State.RUNNING


def test_find_by_token_unknown(transport):
    assert SHELL.find_by_tokens(transport, [new_token()]) == {}


@needs_proc
def test_cancel_kills_the_whole_process_group(transport, jobs_dir):
    job_id = start(transport, command=["bash", "-c", "sleep 300 & sleep 300; wait"])
    wait_for(transport, job_id, {State.RUNNING})
    pgid = job_pid(jobs_dir, job_id)
    wait_group_size(pgid, 5)  # wrapper, job.sh, bash -c and two sleeps
    fields = proc_stat(pgid)
    assert int(fields[2]) == pgid and int(fields[3]) == pgid  # leader of its own group and session

    began = time.monotonic()
    SHELL.cancel(transport, [job_id])
    assert time.monotonic() - began < 4  # TERM was enough: no wait for the KILL follow-up

    status = wait_for(transport, job_id, {State.CANCELLED, State.FAILED, State.COMPLETED}, timeout=10)
    assert status.state == State.CANCELLED
    assert status.exit_code == "143"
    assert live_group(pgid) == []


@needs_proc
def test_cancel_kills_a_job_that_ignores_term(transport, jobs_dir):
    job_id = start(transport, command=["bash", "-c", "trap '' TERM; sleep 300 & sleep 300; wait"])
    wait_for(transport, job_id, {State.RUNNING})
    pgid = job_pid(jobs_dir, job_id)
    wait_group_size(pgid, 5)

    began = time.monotonic()
    SHELL.cancel(transport, [job_id])
    assert 4 < time.monotonic() - began < 15  # TERM, a grace period, then KILL
    wait_group_gone(pgid)
    assert SHELL.poll(transport, [job_id])[job_id].state == State.CANCELLED


def test_cancel_before_start_prevents_the_run(transport, jobs_dir):
    token = new_token()
    job = rendered(token, command=["bash", "-c", "echo ran"])
    transport.put_text(f"{shell.job_dir(token)}/job.sh", job.files["job.sh"], 0o755)
    assert SHELL.poll(transport, [token])[token].state == State.PENDING
    SHELL.cancel(transport, [token])
    assert SHELL.poll(transport, [token])[token].state == State.CANCELLED
    SHELL.submit(transport, job, token)  # a submit that was in flight when the cancel came
    status = wait_for(transport, token, {State.CANCELLED, State.COMPLETED, State.FAILED})
    assert status.state == State.CANCELLED
    assert not (jobs_dir / token / "job.out").exists()


def test_cancel_after_completion_keeps_completed(transport):
    job_id = start(transport, command=["true"])
    wait_for(transport, job_id, {State.COMPLETED})
    SHELL.cancel(transport, [job_id])
    assert SHELL.poll(transport, [job_id])[job_id].state == State.COMPLETED


@needs_proc
def test_job_outlives_its_submitter(transport, jobs_dir):
    token = new_token()
    code = textwrap.dedent(
        """
        import sys
        from gpuhub.backends import backend_for
        from gpuhub.plan import plan
        from gpuhub.registry import load_site
        from gpuhub.render import render
        from gpuhub.request import JobRequest
        from gpuhub.transport.local import LocalTransport

        token = sys.argv[1]
        job = render(plan(load_site("local"), JobRequest(script="sleep 2; echo survived", name="orphan")), token)
        print(backend_for("local").submit(LocalTransport(), job, token))
        """
    )
    submitter = subprocess.run(
        [sys.executable, "-c", code, token], capture_output=True, text=True, timeout=60, env=dict(os.environ)
    )
    assert submitter.returncode == 0, submitter.stderr
    assert submitter.stdout.strip() == token

    # The submitter is gone; the job lives on in a session of its own.
    pid = job_pid(jobs_dir, token)
    assert int(proc_stat(pid)[3]) == pid
    assert SHELL.poll(transport, [token])[token].state == State.RUNNING
    assert SHELL.find_by_tokens(transport, [token]).get(token) == token
    status = wait_for(transport, token, {State.COMPLETED, State.FAILED})
    assert status.state == State.COMPLETED
    assert transport.get_text(SHELL.log_paths(token, "orphan", "gpuhub-logs")[0]) == "survived\n"


def test_poll_and_cancel_many_jobs_take_one_command_each(transport):
    ids = [start(transport, command=["sleep", "300"], name=f"many-{i}") for i in range(50)]
    unknown = new_token()
    transport.calls.clear()

    statuses = SHELL.poll(transport, [*ids, unknown])
    assert len(transport.calls) == 1
    assert {statuses[i].state for i in ids} == {State.RUNNING}
    assert statuses[unknown].state == State.UNKNOWN

    transport.calls.clear()
    SHELL.cancel(transport, ids)
    assert len(transport.calls) == 1

    transport.calls.clear()
    after = SHELL.poll(transport, ids)
    assert len(transport.calls) == 1
    assert {after[i].state for i in ids} == {State.CANCELLED}


@needs_proc
def test_reused_pid_is_not_taken_for_the_job(transport, jobs_dir):
    """A pid file naming a live process with another start time (the pid was reused) is not running."""
    token = new_token()
    directory = jobs_dir / token
    directory.mkdir(parents=True)
    (directory / "job.sh").write_text("true\n")
    my_start = proc_stat(os.getpid())[19]  # field 22

    (directory / "pid").write_text(f"{os.getpid()} {int(my_start) + 12345} 1700000000\n")
    reused = SHELL.poll(transport, [token])[token]
    assert reused.state == State.FAILED and "without recording an exit code" in (reused.reason or "")
    SHELL.cancel(transport, [token])  # must not signal this test process
    assert os.path.exists(f"/proc/{os.getpid()}")

    (directory / "cancelled").unlink()
    (directory / "pid").write_text(f"{os.getpid()} {my_start} 1700000000\n")
    assert SHELL.poll(transport, [token])[token].state == State.RUNNING  # the check itself works


def test_directory_without_pid_is_pending_then_unknown(transport, jobs_dir):
    token = new_token()
    directory = jobs_dir / token
    directory.mkdir(parents=True)
    (directory / "job.sh").write_text("true\n")
    assert SHELL.poll(transport, [token])[token].state == State.PENDING
    old = time.time() - 600
    os.utime(directory / "job.sh", (old, old))
    status = SHELL.poll(transport, [token])[token]
    assert status.state == State.UNKNOWN and "never started" in (status.reason or "")


# --- the same over SSH, on the testbed's loopback sshd ----------------------------------------------


@pytest.fixture
def ssh_site(testbed, tmp_path, monkeypatch):
    try:
        from gpuhub.transport import ssh as ssh_module
    except ImportError as exc:
        pytest.skip(f"gpuhub.transport.ssh is not importable yet ({exc})")
    sites = tmp_path / "sites"
    sites.mkdir()
    (sites / "shell-testbed.yaml").write_text(
        "name: shell-testbed\ndescription: the testbed's sshd seen as a lab server without a scheduler\n"
        f"scheduler: ssh\n{connection_yaml(testbed)}partitions:\n  cpu:\n    gpus_per_node: 0\n"
    )
    monkeypatch.setenv("GPUHUB_SITES", str(sites))
    monkeypatch.delenv(shell.LOCAL_JOBS_ENV, raising=False)  # jobs go to the remote ~/.gpuhub/jobs
    site = load_site("shell-testbed")
    return site, lambda: ssh_module.SSHTransport(site.name, site.connection)


REMOTE_GROUP = r"""ps -A -o pgid= -o stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/' | wc -l"""
REMOTE_CLEANUP = r"""for id in "$@"; do rm -rf -- "$HOME/.gpuhub/jobs/$id"; done"""


@pytest.mark.ssh
def test_lifecycle_over_ssh(ssh_site):
    site, connect = ssh_site
    done_id, long_id = new_token(), new_token()
    first = connect()
    try:
        assert (
            SHELL.submit(first, rendered(done_id, site.name, script="sleep 2; echo out; echo err >&2; exit 4"), done_id)
            == done_id
        )
        assert (
            SHELL.submit(
                first, rendered(long_id, site.name, command=["bash", "-c", "sleep 300 & sleep 300; wait"]), long_id
            )
            == long_id
        )
    finally:
        first.close()  # the SSH session that started the jobs is over

    t = connect()
    try:
        assert SHELL.find_by_tokens(t, [done_id]).get(done_id) == done_id
        assert SHELL.find_by_tokens(t, [new_token()]) == {}
        both = SHELL.poll(t, [done_id, long_id])
        assert both[done_id].state == State.RUNNING and both[long_id].state == State.RUNNING

        done = wait_for(t, done_id, {State.COMPLETED, State.FAILED})
        assert done.state == State.FAILED and done.exit_code == "4"
        out, err = backend_for(site.scheduler).log_paths(done_id, "shell-test", site.log_dir)
        assert t.get_text(out) == "out\n" and t.get_text(err) == "err\n"
        # read the way `gpuhub logs` does: plain argv, no shell to expand anything
        assert t.run(["cat", "--", out]).stdout == "out\n"
        assert t.run(["tail", "-n", "+1", "--", err]).stdout == "err\n"

        pgid = t.get_text(f"{shell.job_dir(long_id)}/pid").split()[0]
        SHELL.cancel(t, [long_id])
        assert wait_for(t, long_id, {State.CANCELLED, State.FAILED, State.COMPLETED}).state == State.CANCELLED
        assert t.run(["bash", "-c", REMOTE_GROUP, "group", pgid]).stdout.strip() == "0"
    finally:
        SHELL.cancel(t, [done_id, long_id])
        t.run(["bash", "-c", REMOTE_CLEANUP, "cleanup", done_id, long_id], check=False)
        t.close()


# --- time limits (no scheduler: gpuhub's watchdog keeps them) -------------------------------------


def launch_with_limit(transport, jobs_dir: Path, script: str, limit: int, grace: int) -> str:
    """Start a job through the real launcher with a time limit and a short TERM-to-KILL grace."""
    token = new_token()
    job = rendered(token, command=["bash", "-c", script])
    transport.put_text(f"{shell.job_dir(token)}/job.sh", job.files["job.sh"], 0o755)
    transport.run(["bash", "-c", shell.LAUNCHER, "gpuhub-launch", shell.job_dir(token), str(limit), str(grace)])
    return token


@needs_proc
@pytest.mark.parametrize("script", ["sleep 300 & sleep 300; wait", "trap '' TERM; sleep 300 & sleep 300; wait"],
                         ids=["honours-term", "ignores-term"])
def test_time_limit_stops_the_whole_job(transport, jobs_dir, script):
    """TERM to the whole job at the limit; what ignores it is killed once the grace period is over."""
    job_id = launch_with_limit(transport, jobs_dir, script, limit=2, grace=2)
    wait_for(transport, job_id, {State.RUNNING})
    pgid = job_pid(jobs_dir, job_id)
    status = wait_for(transport, job_id, {State.TIMEOUT, State.FAILED, State.COMPLETED}, timeout=20)
    assert status.state == State.TIMEOUT and status.exit_code == "143"  # job.sh itself died of TERM
    assert "time limit reached" in (status.reason or "")
    wait_group_gone(pgid, timeout=15)  # every process, the watchdog last


@needs_proc
def test_job_within_its_limit_completes_and_leaves_nothing_behind(transport, jobs_dir):
    job_id = start(transport, command=["bash", "-c", "echo quick"], time="1h")
    status = wait_for(transport, job_id, {State.COMPLETED, State.FAILED, State.TIMEOUT})
    assert status.state == State.COMPLETED
    wait_group_gone(job_pid(jobs_dir, job_id))  # the watchdog does not outlive the job
    assert not (jobs_dir / job_id / "timedout").exists()


@needs_proc
def test_cancel_of_a_time_limited_job(transport, jobs_dir):
    job_id = start(transport, command=["sleep", "300"], time="1h")
    wait_for(transport, job_id, {State.RUNNING})
    pgid = job_pid(jobs_dir, job_id)
    SHELL.cancel(transport, [job_id])
    assert wait_for(transport, job_id, {State.CANCELLED, State.FAILED}).state == State.CANCELLED
    wait_group_gone(pgid)
