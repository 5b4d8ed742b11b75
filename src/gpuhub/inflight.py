"""Submissions in flight, and what becomes of those whose submitter died.

A row is recorded (state ``submitting``) before anything is sent, so a job can never exist on a
site without a ledger row. While it sends, the submitting process holds an exclusive lock on
``<ledger dir>/inflight/<token>.lock``; the kernel drops it when the process dies, ``kill -9``
included. A ``submitting`` row whose lock is free and that is older than :data:`SETTLE` seconds
(time for a submit command already started on the site to finish on its own) belongs to a dead
submitter. :func:`reconcile` then asks the backend to find the job by its token: found, it is
adopted (scheduler id, log paths, state ``pending``, polled as usual); not found, the backend
makes sure it never starts (:meth:`~gpuhub.backends.base.Backend.abandon`) and the row ends as
``failed`` with the reason "never started".
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from gpuhub.states import State

if TYPE_CHECKING:
    from gpuhub.backends.base import Backend
    from gpuhub.ledger import JobRecord, Ledger
    from gpuhub.site import Site

SETTLE = 20.0  # seconds: a submit command started on the site has answered by then
NEVER_STARTED = "never started: the submission was interrupted before the job reached the site"


def _lock_path(ledger: Ledger, token: str) -> Path:
    return ledger.path.parent / "inflight" / f"{token}.lock"


@contextlib.contextmanager
def hold(ledger: Ledger, token: str) -> Iterator[None]:
    """Hold the token's in-flight lock for the duration of a submission (best effort: a ledger
    directory where no lock can be made leaves :data:`SETTLE` as the only guard)."""
    path = _lock_path(ledger, token)
    fd = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        fd = None
    try:
        yield
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                path.unlink()
            os.close(fd)


def submitter_alive(ledger: Ledger, token: str) -> bool:
    """True while the process submitting ``token`` holds its lock."""
    try:
        fd = os.open(_lock_path(ledger, token), os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def orphans(records: Iterable[JobRecord], ledger: Ledger, now: float | None = None) -> list[JobRecord]:
    """``submitting`` rows whose submitter is gone and whose submit command has had time to end."""
    now = time.time() if now is None else now
    return [
        r for r in records
        if r.state == State.SUBMITTING and r.scheduler_id is None
        and now - r.created_at >= SETTLE and not submitter_alive(ledger, r.token)
    ]


def reconcile(site: Site, backend: Backend, records: list[JobRecord], ledger: Ledger, timeout: float,
              gone_state: State = State.FAILED, gone_reason: str = NEVER_STARTED) -> list[JobRecord]:
    """Adopt the jobs of ``records`` (``submitting`` rows of ``site``) that reached it; end the others
    as ``gone_state`` after making sure they never start. Returns the rows adopted."""
    from gpuhub.transport import transport_for

    if not records:
        return []
    transport = transport_for(site)
    tokens = [r.token for r in records]
    found = backend.find_by_tokens(transport, tokens, timeout=timeout)
    missing = [t for t in tokens if t not in found]
    if missing:
        backend.abandon(transport, missing, timeout=timeout)
        # A launch that was still in flight may have started the job just before the mark was left.
        found.update(backend.find_by_tokens(transport, missing, timeout=timeout))
    adopted = []
    for rec in records:
        scheduler_id = found.get(rec.token)
        if scheduler_id is None:
            ledger.mark_failed_submit(rec.id, gone_reason, state=gone_state)
            continue
        out, err = backend.log_paths(scheduler_id, rec.name, site.log_dir)
        ledger.mark_submitted(rec.id, scheduler_id, out, err)
        adopted.append(ledger.get(rec.id))
    return adopted
