"""Failover: a job still pending after ``--failover-after`` moves to the next site of its plan.

One logical job, several attempts: attempt 1 is the job first submitted; each later attempt is a
ledger row pointing back to it (``attempt_of``), so ``gpuhub status`` shows them together. Moving
an attempt is: record the intent (``moving``), cancel it *only if still pending* (a job that
starts meanwhile is kept: never two running at once), see it cancelled on the scheduler, then
submit the next target. Each step is re-derived from the ledger and the scheduler on every call,
so a process killed at any point leaves a state the next :func:`advance` finishes correctly. A
lock file keeps two processes (the watcher and a ``gpuhub status``) from moving the same job.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from gpuhub.ledger import Failover, JobRecord, Ledger
from gpuhub.states import State

MIN_AFTER, MAX_AFTER = 1, 30 * 86400  # seconds


@dataclass(frozen=True)
class Ops:
    """What failover does to the world; real ones by default, replaceable in tests."""

    refresh: Callable[[JobRecord, Ledger], JobRecord]
    cancel_pending: Callable[[JobRecord], None]
    submit: Callable[[JobRecord, dict[str, Any], Ledger], JobRecord]


def _refresh(record: JobRecord, ledger: Ledger) -> JobRecord:
    from gpuhub.jobs import refresh

    records, errors = refresh([record], ledger)
    if errors:
        raise RuntimeError(errors[0])
    return records[0]


def _cancel_pending(record: JobRecord) -> None:
    from gpuhub.jobs import cancel_if_pending

    cancel_if_pending(record)


def _submit(previous: JobRecord, target: dict[str, Any], ledger: Ledger) -> JobRecord:
    from gpuhub.jobs import submit
    from gpuhub.request import JobRequest

    fields = {**previous.request, "partition": target["partition"], "gpu_type": target.get("gpu_model")}
    fields.pop("gpu_mem", None)  # already met by the target, chosen with it
    request = JobRequest(**fields)
    first = previous.attempt_of or previous.id
    attempt = len(ledger.attempts(first)) + 1
    return submit(request, site=target["site"], ledger=ledger, attempt_of=first, attempt=attempt).record


REAL = Ops(_refresh, _cancel_pending, _submit)


@contextmanager
def _locked(ledger: Ledger, job_id: int) -> Iterator[bool]:
    path = ledger.path.parent / f".failover-{job_id}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def advance(ledger: Ledger, job_id: int, now: float | None = None, ops: Ops = REAL) -> str:
    """Take the logical job ``job_id`` one step further; says what it did or waits for."""
    with _locked(ledger, job_id) as mine:
        if not mine:
            return "another gpuhub process is moving this job"
        failover = ledger.failover(job_id)
        if failover is None:
            return "no failover set for this job"
        if failover.done:
            return failover.done
        return _step(ledger, failover, now if now is not None else time.time(), ops)


def _step(ledger: Ledger, fo: Failover, now: float, ops: Ops) -> str:
    current = ledger.attempts(fo.job_id)[-1]
    where = f"attempt {current.attempt} on {current.site}"
    if current.state == State.SUBMITTING:
        return f"{where} is being submitted"
    if current.scheduler_id and not current.state.finished:
        current = ops.refresh(current, ledger)
    state = current.state
    if fo.moving == current.id:
        if state == State.PENDING:
            ops.cancel_pending(current)
            current = ops.refresh(current, ledger)
            state = current.state
        if state == State.CANCELLED:
            return _next(ledger, fo, current, ops)
        if state == State.PENDING:
            return f"{where}: cancel sent, waiting for the scheduler"
        return _finish(ledger, fo, f"{where} became {state.value} before it could be moved; it stays")
    if state != State.PENDING:
        return _finish(ledger, fo, f"{where} is {state.value}; no more moves")
    waited = now - (current.submitted_at or now)
    if waited < fo.after:
        return f"{where} pending; moves in {fo.after - waited:.0f} s if still pending"
    if not _untried(ledger, fo):
        return _finish(ledger, fo, f"{where} pending, no other site left in the plan; it stays queued")
    ledger.set_failover(fo.job_id, moving=current.id)
    ops.cancel_pending(current)
    current = ops.refresh(current, ledger)
    if current.state == State.CANCELLED:
        return _next(ledger, fo, current, ops)
    if current.state == State.PENDING:
        return f"{where}: pending for {waited:.0f} s, cancel sent"
    return _finish(ledger, fo, f"{where} became {current.state.value} before it could be moved; it stays")


def _untried(ledger: Ledger, fo: Failover) -> list[dict[str, Any]]:
    tried = {(a.site, a.plan.get("partition_key")) for a in ledger.attempts(fo.job_id)}
    return [t for t in fo.targets if (t["site"], t["partition"]) not in tried]


def _next(ledger: Ledger, fo: Failover, previous: JobRecord, ops: Ops) -> str:
    ledger.set_failover(fo.job_id, moving=None)
    problems = []
    for target in _untried(ledger, fo):
        try:
            new = ops.submit(previous, target, ledger)
        except Exception as exc:
            problems.append(f"{target['site']}: {getattr(exc, 'message', None) or exc}")
            continue
        if new.state == State.FAILED:
            problems.append(f"{target['site']}: {new.reason}")
            continue
        return f"moved: attempt {previous.attempt} on {previous.site} -> attempt {new.attempt} on {new.site}"
    detail = f" ({'; '.join(problems)})" if problems else ""
    return _finish(ledger, fo, f"attempt {previous.attempt} on {previous.site} was moved, but no other site "
                               f"took the job{detail}")


def _finish(ledger: Ledger, fo: Failover, message: str) -> str:
    ledger.set_failover(fo.job_id, done=message, moving=None)
    return message


def watch(ledger: Ledger, job_id: int, interval: float = 10.0, ops: Ops = REAL) -> str:
    """Advance until the failover is done (the detached watcher started by ``submit``)."""
    while True:
        message = advance(ledger, job_id, ops=ops)
        failover = ledger.failover(job_id)
        if failover is None or failover.done:
            return message
        current = ledger.attempts(job_id)[-1]
        due = (current.submitted_at or time.time()) + failover.after - time.time()
        time.sleep(min(interval, max(0.5, due)))
