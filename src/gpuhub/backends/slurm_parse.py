"""Pure parsers of Slurm command output (tested on recorded real output)."""

from __future__ import annotations

from datetime import datetime

from gpuhub.errors import GpuhubError
from gpuhub.states import JobStatus, State

_SLURM_STATES = {
    "PENDING": State.PENDING,
    "REQUEUED": State.PENDING,
    "REQUEUE_HOLD": State.PENDING,
    "REQUEUE_FED": State.PENDING,
    "RESV_DEL_HOLD": State.PENDING,
    "SPECIAL_EXIT": State.PENDING,
    "RESIZING": State.PENDING,
    "RUNNING": State.RUNNING,
    "CONFIGURING": State.RUNNING,
    "COMPLETING": State.RUNNING,
    "SUSPENDED": State.RUNNING,
    "STAGE_OUT": State.RUNNING,
    "SIGNALING": State.RUNNING,
    "STOPPED": State.RUNNING,
    "COMPLETED": State.COMPLETED,
    "FAILED": State.FAILED,
    "NODE_FAIL": State.FAILED,
    "BOOT_FAIL": State.FAILED,
    "OUT_OF_MEMORY": State.FAILED,
    "DEADLINE": State.FAILED,
    "CANCELLED": State.CANCELLED,
    "REVOKED": State.CANCELLED,
    "TIMEOUT": State.TIMEOUT,
    "PREEMPTED": State.PREEMPTED,
}

# squeue: job id (array tasks expanded as 123_4), state, reason, nodes, comment
SQUEUE_FORMAT = "%i|%T|%r|%N|%k"
SACCT_FIELDS = "JobIDRaw,JobID,State,ExitCode,Start,End,NodeList"


def slurm_state(text: str) -> State:
    """``CANCELLED by 1000`` -> CANCELLED; unknown words -> UNKNOWN."""
    word = text.strip().split(" ", 1)[0].rstrip("+").upper()
    return _SLURM_STATES.get(word, State.UNKNOWN)


def parse_submit(stdout: str) -> str:
    """``sbatch --parsable`` prints ``jobid`` or ``jobid;cluster``."""
    line = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    job_id = line.split(";", 1)[0].strip()
    if not job_id.isdigit():
        raise GpuhubError(f"sbatch answered {stdout.strip()!r}, not a job id")
    return job_id


def _time(text: str) -> float | None:
    text = text.strip()
    if not text or text in ("Unknown", "None", "N/A"):
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def parse_squeue(stdout: str) -> dict[str, tuple[JobStatus, str]]:
    """Lines of SQUEUE_FORMAT -> {job id: (status, comment)}."""
    out: dict[str, tuple[JobStatus, str]] = {}
    for line in stdout.splitlines():
        parts = line.split("|", 4)
        if len(parts) < 5:
            continue
        job_id, state, reason, nodes, comment = (p.strip() for p in parts)
        comment = "" if comment == "(null)" else comment
        status = JobStatus(
            state=slurm_state(state),
            reason=None if reason in ("None", "") else reason,
            nodes=nodes or None,
        )
        out[job_id] = (status, comment)
    return out


def parse_sacct(stdout: str) -> dict[str, JobStatus]:
    """``sacct -X -P -n --format=SACCT_FIELDS`` -> {JobID (123 or 123_4): status}.

    With -D a requeued job has several records; the last one (most recent) wins.
    """
    out: dict[str, JobStatus] = {}
    for line in stdout.splitlines():
        parts = line.split("|")
        if len(parts) < 7:
            continue
        _raw, job_id, state, exit_code, start, end, nodes = (p.strip() for p in parts[:7])
        out[job_id] = JobStatus(
            state=slurm_state(state),
            reason=state if slurm_state(state) == State.CANCELLED and " by " in state else None,
            nodes=nodes if nodes not in ("", "None assigned") else None,
            exit_code=exit_code or None,
            start=_time(start),
            end=_time(end),
        )
    return out
