"""One job state vocabulary for every scheduler."""

from __future__ import annotations

from enum import Enum

from gpuhub.record import Record


class State(str, Enum):
    SUBMITTING = "submitting"  # gpuhub is sending it; no scheduler id yet
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    PREEMPTED = "preempted"
    UNKNOWN = "unknown"

    @property
    def finished(self) -> bool:
        return self in FINISHED

    def __str__(self) -> str:
        return self.value


FINISHED = frozenset({State.COMPLETED, State.FAILED, State.CANCELLED, State.TIMEOUT, State.PREEMPTED})


class JobStatus(Record):
    """What a poll learned about one job (or array task)."""

    state: State
    reason: str | None = None  # why pending, or how it ended
    nodes: str | None = None
    exit_code: str | None = None
    start: float | None = None  # epoch seconds
    end: float | None = None


def exit_status(code: str | int | None) -> int | None:
    """The job's exit status as a shell reports it: ``3``; Slurm's ``CODE:SIGNAL`` ``0:15`` -> 143."""
    if code is None or isinstance(code, int):
        return code
    number, _, sig = code.strip().partition(":")
    try:
        status, signum = int(number), int(sig or 0)
    except ValueError:
        return None
    return 128 + signum if signum else status
