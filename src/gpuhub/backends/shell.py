"""Lab servers with no scheduler (``ssh``) and this machine (``local``): a plain bash script.

A job is a directory, ``~/.gpuhub/jobs/<token>`` on the machine that runs it (on this machine,
``$GPUHUB_LOCAL_JOBS_DIR/<token>`` when that variable is set). The token is the job's id. The
directory holds everything the job is:

=============  ==============================================================================
``job.sh``     the rendered script, run with bash in this directory
``job.out``    its standard output; ``job.err`` its standard error
``pid``        ``PID START EPOCH``: the process-group leader, its start time in clock ticks
               (field 22 of ``/proc/PID/stat``, so a reused pid is never taken for the job) and
               the start time in epoch seconds
``exitcode``   ``CODE EPOCH``: the exit status (128+N after signal N) and the end time; written
               last, atomically, so its presence means the job is over
``cancelled``  marker left by :func:`cancel`
``launch.lock``  made once by the launcher so a repeated submit never starts the job twice
=============  ==============================================================================

The job runs in its own session (``setsid``), detached from every terminal and stream, so it
survives gpuhub exiting and the SSH connection closing. Polling and cancelling many jobs each
take one command on the site.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from gpuhub.backends.base import Backend
from gpuhub.backends.capabilities import CAPABILITIES, Capabilities
from gpuhub.backends.common import job_env, setup_lines
from gpuhub.backends.shell_scripts import CANCEL, LAUNCHER, MAIN_FILE, POLL, STARTED, STDERR_FILE, STDOUT_FILE
from gpuhub.errors import GpuhubError
from gpuhub.states import JobStatus, State

if TYPE_CHECKING:

    from gpuhub.exporter.readings import SiteReading
    from gpuhub.plan import Allocation
    from gpuhub.render import RenderedJob
    from gpuhub.site import Site
    from gpuhub.transport.base import Transport

JOBS_ROOT = "~/.gpuhub/jobs"
LOCAL_JOBS_ENV = "GPUHUB_LOCAL_JOBS_DIR"

# A token becomes a directory name: no '/', no leading '.', nothing the shell could mangle.
_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def _check_id(value: str) -> str:
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise GpuhubError(f"{value!r} is not a valid job token (letters, digits, '_', '.', '-')")
    return value


def jobs_root() -> str:
    """Where job directories live: ``~/.gpuhub/jobs``, or ``$GPUHUB_LOCAL_JOBS_DIR`` (meant for tests)."""
    override = os.environ.get(LOCAL_JOBS_ENV)
    return (override.rstrip("/") or "/") if override else JOBS_ROOT


def job_dir(token: str) -> str:
    return f"{jobs_root()}/{_check_id(token)}"



class ShellBackend(Backend):
    """Jobs as detached processes in their own directory; no queue, so no arrays or dependencies."""

    name = "shell"
    files: ClassVar[dict[str, str]] = {MAIN_FILE: "shell.sh.j2"}

    def context(self, alloc: Allocation, token: str | None) -> dict[str, Any]:
        env = job_env(alloc)
        if token:
            env["GPUHUB_TOKEN"] = token
        return {"directives": [], "env": env, "setup": setup_lines(alloc), "array_var": None}

    def submit_argv(self) -> list[str]:
        return ["bash", MAIN_FILE]

    def submit(self, transport: Transport, job: RenderedJob, token: str, timeout: float = 60.0) -> str:
        """Write the job's files into its directory and start it detached; the token is its id.

        Submitting the same token again does not start a second copy.
        """
        directory = job_dir(token)
        if job.main_file != MAIN_FILE:
            raise GpuhubError(f"a shell job's main file must be {MAIN_FILE!r}, not {job.main_file!r}")
        for name, text in job.files.items():
            transport.put_text(f"{directory}/{name}", text, 0o755 if name == MAIN_FILE else 0o644)
        limit = str(job.allocation.time_limit or "")  # empty: no time limit
        result = transport.run(["bash", "-c", LAUNCHER, "gpuhub-launch", directory, limit], timeout=timeout)
        self.parse_submit(result.stdout, directory)
        return token

    def parse_submit(self, stdout: str, directory: str = "the job directory") -> str:
        """The launcher prints the job's pid last."""
        lines = stdout.strip().splitlines()
        if not lines or not lines[-1].strip().isdigit():
            raise GpuhubError(f"starting the job in {directory} answered {stdout.strip()!r}, not a pid")
        return lines[-1].strip()

    def find_by_tokens(self, transport: Transport, tokens: list[str], timeout: float = 60.0) -> dict[str, str]:
        """The tokens whose job has started (its directory has a pid file); a token is its job's id."""
        if not tokens:
            return {}
        result = transport.run(
            ["bash", "-c", STARTED, "gpuhub-find", jobs_root()], stdin=_ids(tokens), timeout=timeout
        )
        started = set(result.stdout.split())
        return {t: t for t in tokens if t in started}

    def abandon(self, transport: Transport, tokens: list[str], timeout: float = 60.0) -> None:
        """Leave the ``cancelled`` mark in each directory: a launch still in flight then never runs the job."""
        self.cancel(transport, tokens, timeout)

    def poll(
        self, transport: Transport, ids: list[str], timeout: float = 60.0, tasks: dict[str, int] | None = None
    ) -> dict[str, JobStatus]:
        """Status of every id (UNKNOWN for one that has no directory), in one command."""
        if not ids:
            return {}
        result = transport.run(["bash", "-c", POLL, "gpuhub-poll", jobs_root()], stdin=_ids(ids), timeout=timeout)
        found = parse_poll(result.stdout)
        return {i: found.get(i, JobStatus(State.UNKNOWN, reason="no answer from the status check")) for i in ids}

    def cancel(self, transport: Transport, ids: list[str], timeout: float = 60.0) -> None:
        """Stop the jobs (their whole process groups): TERM, then KILL after 5 s; one command."""
        if ids:
            transport.run(["bash", "-c", CANCEL, "gpuhub-cancel", jobs_root()], stdin=_ids(ids), timeout=timeout)

    def log_paths(self, scheduler_id: str, job_name: str, log_dir: str, task: int | None = None) -> tuple[str, str]:
        """Standard output and error files of a job; they live in its directory (``log_dir`` is not used).

        Under the default root they are relative to the home directory (``.gpuhub/jobs/ID/job.out``),
        like Slurm's log paths: that is where commands start over SSH, and what SFTP paths are
        relative to, so ``cat``/``tail`` and ``get_text`` all read them without any ``~`` expansion.
        """
        directory = job_dir(scheduler_id)
        if directory.startswith("~/"):
            directory = directory[2:]
        return f"{directory}/{STDOUT_FILE}", f"{directory}/{STDERR_FILE}"

    def read_gpus(self, site: Site, transport: Transport, deadline: float) -> SiteReading:
        from gpuhub.exporter import nvidia

        host = site.connection.host if site.connection else "localhost"
        declared = any(p.gpus_per_node for p in site.partitions.values())
        return nvidia.read(transport, deadline, host, expect_gpus=declared)


class LocalBackend(ShellBackend):
    """This machine."""

    name = "local"
    capabilities = CAPABILITIES["local"]

    def log_paths(self, scheduler_id: str, job_name: str, log_dir: str, task: int | None = None) -> tuple[str, str]:
        """Absolute: on this machine they mean the same file whatever ``HOME`` is later."""
        out, err = super().log_paths(scheduler_id, job_name, log_dir, task)
        return str(Path.home() / out), str(Path.home() / err)


class SSHBackend(ShellBackend):
    """A machine reached over SSH (a lab GPU server)."""

    name = "ssh"
    capabilities = Capabilities(connection="required", time_limit="gpuhub", accounts=False, qos=False,
                                directives=False)


def _ids(ids: list[str]) -> str:
    for i in ids:
        _check_id(i)
    return "\n".join(ids) + "\n"


def _epoch(text: str) -> float | None:
    try:
        return float(text) if text.strip() else None
    except ValueError:
        return None


def _exit_reason(code: str) -> str:
    if not code.isdigit():
        return f"exit code {code}"
    number = int(code)
    if number > 128:
        try:
            return f"killed by {signal.Signals(number - 128).name} (exit code {number})"
        except ValueError:
            pass
    return f"exit code {number}"


_WORDS = {
    "running": (State.RUNNING, None),
    "pending": (State.PENDING, "starting"),
    "lost": (State.FAILED, "the job's process ended without recording an exit code (killed, or machine restarted)"),
    "nostart": (State.UNKNOWN, "the job directory exists but the job was never started"),
    "nodir": (State.UNKNOWN, "no job directory (never submitted to this machine, or removed)"),
}


def parse_poll(stdout: str) -> dict[str, JobStatus]:
    """Lines ``id|word|exit code|start epoch|end epoch`` (from :data:`POLL`) -> {id: status}."""
    out: dict[str, JobStatus] = {}
    for line in stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 5 or not parts[0]:
            continue
        job_id, word, code, start, end = (p.strip() for p in parts)
        if word in _WORDS:
            state, reason = _WORDS[word]
        else:
            try:
                state = State(word)
            except ValueError:
                state = State.UNKNOWN
            reason = None if state != State.UNKNOWN else f"unexpected status {word!r}"
        if state == State.FAILED and code:
            reason = _exit_reason(code)
        elif state == State.CANCELLED:
            reason = "cancelled"
        elif state == State.TIMEOUT:
            reason = f"time limit reached: stopped by gpuhub ({_exit_reason(code)})" if code else "time limit reached"
        out[job_id] = JobStatus(
            state=state,
            reason=reason,
            exit_code=code or None,
            start=_epoch(start),
            end=_epoch(end) if state.finished else None,
        )
    return out
