"""Submitting and following jobs: the one place where rendering meets a transport and the ledger.

``submit`` is ``render`` plus sending: the same :func:`gpuhub.render.render` output is what goes
out. Every submission carries a token (Slurm ``--comment=gpuhub:TOKEN``); when the connection
drops mid-submit, the retry first looks for that token and adopts the job instead of sending a
second copy. A submitter killed mid-way leaves a ``submitting`` row that ``refresh`` (``gpuhub
status``) settles: see :mod:`gpuhub.inflight`.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from gpuhub import inflight
from gpuhub.backends import backend_for
from gpuhub.errors import ConfigError, GpuhubError, NoFreeGpus, RequestError
from gpuhub.ledger import JobRecord, Ledger
from gpuhub.prepare import new_token, prepare
from gpuhub.registry import load_site
from gpuhub.requestdata import array_size, build, plain
from gpuhub.states import JobStatus, State
from gpuhub.transport import CommandTimeout, transport_for
from gpuhub.transport.base import CommandError, Transport, TransportError

if TYPE_CHECKING:
    from gpuhub.backends.base import Backend
    from gpuhub.render import RenderedJob
    from gpuhub.request import JobRequest
    from gpuhub.site import Site

# A dropped connection shows up as one of these; the job may or may not have reached the site.
_LOST = (TransportError, CommandTimeout, OSError, EOFError)


def submit(
    request: JobRequest | None = None,
    *,
    site: Site | str = "local",
    ledger: Ledger | None = None,
    timeout: float = 60.0,
    attempt_of: int | None = None,
    attempt: int = 1,
    **fields: Any,
) -> Job:
    """Submit a job and record it; returns a :class:`Job` handle.

    ``gpuhub.submit(command=["python", "train.py"], site="jean-zay", gpus=8, project="abc")``

    Whatever goes wrong once the row is recorded, the row never stays behind as a job nobody can
    follow: it gets its scheduler id, or ends as ``failed`` with a one-line reason, or (when the
    site could not be asked whether the job arrived) stays ``submitting`` for ``status`` to settle.
    """
    request = request or build(fields)
    ledger = ledger or Ledger()
    site_obj = load_site(site) if isinstance(site, str) else site
    token = new_token()
    job = prepare(site_obj, request, token)
    backend = backend_for(site_obj.scheduler)
    with inflight.hold(ledger, token):
        try:
            record = ledger.add(
                token=token,
                site=site_obj.name,
                scheduler=site_obj.scheduler,
                name=request.name,
                request=plain(request).record(),
                plan=job.allocation.summary(),
                script=job.files[job.main_file],
                attempt_of=attempt_of,
                attempt=attempt,
            )
        except sqlite3.Error as exc:
            raise GpuhubError(f"cannot record the job in the ledger {ledger.path}: {exc}; nothing was sent") from None
        try:
            scheduler_id = _send(site_obj, backend, job, token, timeout)
        except (KeyboardInterrupt, SystemExit):
            raise  # the row stays `submitting`: `gpuhub status` finds out whether the job arrived
        except BaseException as exc:
            scheduler_id = _after_failed_send(site_obj, backend, record, ledger, exc, timeout)
        out, err = backend.log_paths(scheduler_id, request.name, site_obj.log_dir)
        try:
            record = ledger.mark_submitted(record.id, scheduler_id, out, err)
        except sqlite3.Error as exc:
            raise GpuhubError(
                f"job sent to {site_obj.name} as {scheduler_id}, but the ledger {ledger.path} could not record it "
                f"({exc}); once the ledger is writable, `gpuhub status` adopts it"
            ) from None
    return Job(record, ledger, backend.submit_notes(token))


def _one_line(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, GpuhubError) else f"{type(exc).__name__}: {exc}"
    return (text.strip().splitlines() or [type(exc).__name__])[0][:300]


def _after_failed_send(site: Site, backend: Backend, record: JobRecord, ledger: Ledger, exc: BaseException,
                       timeout: float) -> str:
    """The send raised: adopt the job if it reached the site anyway, else end the row as failed.

    Returns the scheduler id of an adopted job; raises a one-line GpuhubError otherwise.
    """
    why = _one_line(exc)
    if isinstance(exc, NoFreeGpus):
        ledger.mark_failed_submit(record.id, why)  # the host said no: the job never runs
        raise exc
    if isinstance(exc, RequestError | ConfigError):
        ledger.mark_failed_submit(record.id, why)  # refused before anything was sent
        raise GpuhubError(why) from None
    if isinstance(exc, _Unknown):  # the connection went and the site could not be asked since
        ledger.set_reason(record.id, f"submission interrupted: {why}")
        raise GpuhubError(
            f"submitting job {record.id} to {site.name} was interrupted and whether it reached the site is "
            f"unknown ({why}): `gpuhub status` will find out"
        ) from None
    if isinstance(exc, CommandError):  # the site answered: the submit command refused the job
        with contextlib.suppress(Exception):
            backend.abandon(transport_for(site), [record.token], timeout=timeout)
        ledger.mark_failed_submit(record.id, why)
        raise GpuhubError(f"submitting job {record.id} to {site.name} failed: {why}") from None
    try:
        transport = transport_for(site)
        found = backend.find_by_tokens(transport, [record.token], timeout=timeout).get(record.token)
        if found is None:
            backend.abandon(transport, [record.token], timeout=timeout)
    except Exception as lookup:  # the site cannot be asked: leave the row for `status` to settle
        ledger.set_reason(record.id, f"submission interrupted: {why}")
        raise GpuhubError(
            f"submitting job {record.id} to {site.name} failed: {why}; whether it reached the site is unknown "
            f"({_one_line(lookup)}): `gpuhub status` will find out"
        ) from None
    if found is not None:
        return found
    ledger.mark_failed_submit(record.id, why)
    raise GpuhubError(f"submitting job {record.id} to {site.name} failed: {why}") from None


class _Unknown(GpuhubError):
    """The connection dropped during the submit, and looking for the job failed too."""


def _send(site: Site, backend: Backend, job: RenderedJob, token: str, timeout: float) -> str:
    try:
        return backend.submit(transport_for(site), job, token, timeout=timeout)
    except _LOST as lost:
        # The submit command may have run before the connection went: look before sending again.
        try:
            transport = transport_for(site)
            found = backend.find_by_tokens(transport, [token], timeout=timeout).get(token)
        except Exception as exc:
            raise _Unknown(f"{_one_line(lost)}; then {_one_line(exc)}") from None
        if found:
            return found
        return backend.submit(transport, job, token, timeout=timeout)


def resolve(ref: str | int, ledger: Ledger) -> JobRecord:
    """A gpuhub id (``42``), ``SITE:SCHEDULER_ID`` (``jean-zay:123456``) or ``last``."""
    text = str(ref).strip()
    if text == "last":
        newest = ledger.jobs(limit=1)
        if not newest:
            raise GpuhubError("no job recorded yet, so there is no `last` job")
        return newest[0]
    if text.isascii() and text.isdigit() and len(text) <= 18:
        return ledger.get(int(text))
    site, sep, scheduler_id = text.partition(":")
    if not sep or not site or not scheduler_id:
        raise GpuhubError(f"job {text!r}: give a gpuhub id (42), SITE:SCHEDULER_ID (jean-zay:123456) or last")
    record = ledger.by_ref(site, scheduler_id)
    if record is None:
        raise GpuhubError(f"job {text!r} is not in the ledger; `gpuhub jobs --site {site}` lists known ones")
    return record


def refresh(records: Iterable[JobRecord], ledger: Ledger, timeout: float = 60.0) -> tuple[list[JobRecord], list[str]]:
    """Poll every unfinished job: one scheduler call per site. Returns fresh records and per-site errors.

    Rows left ``submitting`` by a submitter that died are settled first (:mod:`gpuhub.inflight`).
    """
    records = list(records)
    orphaned: dict[str, list[JobRecord]] = defaultdict(list)
    for rec in inflight.orphans(records, ledger):
        orphaned[rec.site].append(rec)
    errors = []
    adopted: dict[int, JobRecord] = {}
    for site_name, recs in orphaned.items():
        try:
            site = load_site(site_name)
            found = inflight.reconcile(site, backend_for(site.scheduler), recs, ledger, timeout)
            adopted.update((r.id, r) for r in found)
        except GpuhubError as exc:
            errors.append(f"{site_name}: {exc.message}")
    by_site: dict[str, list[JobRecord]] = defaultdict(list)
    for rec in records:
        rec = adopted.get(rec.id, rec)
        if not rec.state.finished and rec.scheduler_id:
            by_site[rec.site].append(rec)
    for site_name, recs in by_site.items():
        try:
            site = load_site(site_name)
            backend = backend_for(site.scheduler)
            tasks = {r.scheduler_id: array_size(r.request["array"]) for r in recs if r.request.get("array")}
            found = backend.poll(transport_for(site), [r.scheduler_id for r in recs], timeout=timeout, tasks=tasks)
        except GpuhubError as exc:
            errors.append(f"{site_name}: {exc.message}")
            continue
        updates: list[tuple[int, JobStatus]] = []
        for rec in recs:
            status = found.get(rec.scheduler_id or "")
            if status is None:
                # Gone from the scheduler's memory and no accounting: say so rather than guess.
                if time.time() - (rec.submitted_at or 0) > 60:
                    status = JobStatus(State.UNKNOWN, reason="no longer known to the scheduler")
                else:
                    continue
            updates.append((rec.id, status))
        ledger.update_status(updates)
    return [ledger.get(r.id) for r in records], errors


def cancel(records: Iterable[JobRecord], ledger: Ledger, timeout: float = 60.0) -> None:
    """Cancel jobs, one scheduler call per site. A row still ``submitting`` is looked for by its token
    first: a job that reached the site is adopted and cancelled, one that did not never starts."""
    records = list(records)
    unsent: dict[str, list[JobRecord]] = defaultdict(list)
    for rec in records:
        if rec.state == State.SUBMITTING and rec.scheduler_id is None:
            unsent[rec.site].append(rec)
    adopted: dict[int, JobRecord] = {}
    for site_name, recs in unsent.items():
        site = load_site(site_name)
        found = inflight.reconcile(site, backend_for(site.scheduler), recs, ledger, timeout,
                                   gone_state=State.CANCELLED, gone_reason="cancelled before it reached the site")
        adopted.update((r.id, r) for r in found)
    by_site: dict[str, list[JobRecord]] = defaultdict(list)
    for rec in records:
        rec = adopted.get(rec.id, rec)
        if rec.scheduler_id and not rec.state.finished:
            by_site[rec.site].append(rec)
    for site_name, recs in by_site.items():
        site = load_site(site_name)
        backend_for(site.scheduler).cancel(transport_for(site), [r.scheduler_id for r in recs], timeout=timeout)
    refresh([r for recs in by_site.values() for r in recs], ledger, timeout)


def cancel_if_pending(record: JobRecord, timeout: float = 60.0) -> None:
    """Cancel ``record`` only while it is pending: a job that started meanwhile keeps running."""
    if not record.scheduler_id:
        return
    site = load_site(record.site)
    backend_for(site.scheduler).cancel_pending(transport_for(site), [record.scheduler_id], timeout=timeout)


def read_log(record: JobRecord, stderr: bool = False) -> str:
    path = record.log_err if stderr else record.log_out
    if not path:
        raise GpuhubError(f"job {record.id} has no log file recorded")
    result = _log_transport(record).run(["cat", "--", path], check=False)
    if not result.ok:
        raise GpuhubError(f"log {path} of job {record.id} is not readable yet: {result.stderr.strip()}")
    return result.stdout


def follow_log(
    record: JobRecord, stderr: bool = False, ledger: Ledger | None = None, poll: float = 5.0, grace: float = 2.0
) -> Iterator[str]:
    """The log from its start, then each line as it is written, until the job is over.

    While following, the job's state is asked every ``poll`` seconds (as ``gpuhub status`` does);
    once it has ended, lines keep coming until the log has been quiet for ``grace`` seconds, so
    the last words of the job are never cut. Like ``tail --pid``, for every kind of site.
    """
    path = record.log_err if stderr else record.log_out
    if not path:
        raise GpuhubError(f"job {record.id} has no log file recorded")
    lines = _log_transport(record).stream(["tail", "-n", "+1", "-F", "--", path], idle=min(grace, poll) / 2)
    return _until_over(lines, record, ledger or Ledger(), poll, grace)


def _until_over(lines: Iterator[str], record: JobRecord, ledger: Ledger, poll: float, grace: float) -> Iterator[str]:
    ended = time.monotonic() if record.state.finished else None
    next_poll = time.monotonic() + min(poll, 1.0)
    unknown = 0  # polls in a row that found the job nowhere: twice means it is gone
    quiet_since = time.monotonic()
    try:
        for chunk in lines:
            now = time.monotonic()
            if chunk:
                quiet_since = now
                yield chunk
            if ended is None and now >= next_poll:
                next_poll = now + poll
                try:
                    fresh, errors = refresh([record], ledger)
                except GpuhubError as exc:  # e.g. a record from another ledger: keep following
                    fresh, errors = [record], [exc.message]
                if not errors:
                    record = fresh[0]
                    unknown = unknown + 1 if record.state == State.UNKNOWN else 0
                    if record.state.finished or unknown >= 2:
                        ended = now
            if ended is not None and now - max(ended, quiet_since) >= grace:
                return
    finally:
        lines.close()  # type: ignore[attr-defined]


def _log_transport(record: JobRecord) -> Transport:
    site = load_site(record.site)
    return backend_for(site.scheduler).job_transport(site, record.scheduler_id or "")


class Job:
    """A submitted job: ``state``, ``wait()``, ``logs()``, ``cancel()``."""

    def __init__(self, record: JobRecord, ledger: Ledger, notes: list[str] | None = None) -> None:
        self.record = record
        self.ledger = ledger
        self.notes = notes or []  # what the site said about the submission (where it went and why)

    def __repr__(self) -> str:
        return f"<Job {self.record.id} {self.record.ref} {self.record.state.value}>"

    @property
    def id(self) -> int:
        return self.record.id

    @property
    def scheduler_id(self) -> str | None:
        return self.record.scheduler_id

    @property
    def state(self) -> State:
        return self.refresh().state

    def refresh(self) -> JobRecord:
        records, errors = refresh([self.record], self.ledger)
        if errors:
            raise GpuhubError(errors[0])
        self.record = records[0]
        return self.record

    def wait(self, timeout: float | None = None, interval: float = 1.0, max_interval: float = 30.0) -> State:
        """Block until the job ends; polls back off up to ``max_interval`` and survive a failed poll or two."""
        deadline = None if timeout is None else time.monotonic() + timeout
        failures = 0
        while True:
            try:
                state = self.state
                failures = 0
            except GpuhubError:
                failures += 1
                if failures > 3:
                    raise
                state = self.record.state
            if state.finished:
                return state
            if deadline is not None and time.monotonic() > deadline:
                raise GpuhubError(f"job {self.id} still {state.value} after {timeout:g} s")
            time.sleep(interval)
            interval = min(interval * 1.5, max_interval)

    def logs(self, stderr: bool = False) -> str:
        return read_log(self.record, stderr)

    def cancel(self) -> None:
        cancel([self.record], self.ledger)
        self.record = self.ledger.get(self.record.id)
