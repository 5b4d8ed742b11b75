"""Collectors: bring a site's job runs into the usage store, incrementally and idempotently.

A site's watermark is the end of the last window collected. The next window starts one overlap
earlier (records reach slurmdbd late), and never after the start of a run still stored as
running, so that run is seen again and finalised. Windows are cut into chunks, each its own
``sacct`` call and transactions, with the watermark moved after each: a collector stopped at any
point resumes where it was, and the overlap is simply collected again (the store skips runs it
already has unchanged).
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone

from gpuhub.accounting.records import UsageRow, from_epoch, now_iso, to_epoch
from gpuhub.accounting.sacct import ModelResolver, ParseStats, parse_sacct, sacct_argv
from gpuhub.accounting.store import IngestResult, UsageStore
from gpuhub.errors import GpuhubError
from gpuhub.site import Site

OVERLAP = 3600
CHUNK = 86400
SACCT_TIMEOUT = 600.0

Progress = Callable[[str], None]


@dataclass
class Outcome:
    site: str
    scheduler: str
    ok: bool = True
    supported: bool = True
    error: str | None = None
    window: tuple[str, str] | None = None
    result: IngestResult = field(default_factory=IngestResult)
    warnings: list[str] = field(default_factory=list)
    scope: str | None = None  # "all users" / "own jobs" for Slurm

    def to_dict(self) -> dict[str, object]:
        return {
            "site": self.site, "scheduler": self.scheduler, "ok": self.ok, "supported": self.supported,
            "error": self.error, "since": self.window[0] if self.window else None,
            "until": self.window[1] if self.window else None, "scope": self.scope,
            "new": self.result.new, "updated": self.result.updated, "unchanged": self.result.unchanged,
            "running": self.result.provisional, "warnings": self.warnings,
        }


def default_since(now: str) -> str:
    """First collection of a site: from the first day of the previous month."""
    year, month = int(now[:4]), int(now[5:7])
    year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    return f"{year:04d}-{month:02d}-01T00:00:00"


def window(store: UsageStore, site: str, since: str | None, until: str, overlap: int) -> str:
    """Where this collection starts."""
    if since is not None:
        start = since
    else:
        mark = store.watermark(site)
        start = from_epoch(to_epoch(mark) - overlap) if mark else default_since(until)
    running = store.oldest_running_start(site)
    return min(start, running) if running else start


def collect_site(
    store: UsageStore,
    site: Site,
    *,
    since: str | None = None,
    until: str | None = None,
    overlap: int = OVERLAP,
    chunk: int = CHUNK,
    progress: Progress = lambda _: None,
) -> Outcome:
    """Collect one site; failures are reported in the outcome, not raised, so other sites go on."""
    out = Outcome(site.name, site.scheduler)
    if site.scheduler == "htcondor":
        out.supported = False
        out.warnings.append(f"site {site.name} (htcondor): collection not supported yet")
        return out
    end = until or now_iso()
    start = window(store, site.name, since, end, overlap)
    out.window = (start, end)
    try:
        if site.scheduler == "slurm":
            _collect_slurm(store, site, start, end, chunk, out, progress)
        else:
            _collect_ledger(store, site, start, end, out, progress)
    except GpuhubError as exc:
        out.ok, out.error = False, exc.message
    except Exception as exc:  # a database or parsing surprise on one site must not stop the others
        out.ok, out.error = False, f"{type(exc).__name__}: {exc}"
    return out


# --- Slurm ----------------------------------------------------------------------------------------


def model_resolver(site: Site) -> ModelResolver:
    """GPU model for reports: the site's ``gpu_model`` for a GRES type, else for the partition
    (only when the partition has a single model), else the GRES type itself."""
    by_gres: dict[str, str] = {}
    by_partition: dict[str, set[str]] = {}
    for part in site.partitions.values():
        if part.gpu_model:
            if part.gres_type:
                by_gres.setdefault(part.gres_type, part.gpu_model)
            if part.partition:
                by_partition.setdefault(part.partition, set()).add(part.gpu_model)

    def resolve(typed: str, partition: str) -> str:
        if typed:
            return "+".join(sorted({by_gres.get(t, t) for t in typed.split("+")}))
        models = by_partition.get(partition, set())
        return next(iter(models)) if len(models) == 1 else ""

    return resolve


def _collect_slurm(
    store: UsageStore, site: Site, start: str, end: str, chunk: int, out: Outcome, progress: Progress
) -> None:
    from gpuhub.transport import CommandError, transport_for

    transport = transport_for(site)
    resolve = model_resolver(site)
    running_before = {k for k in store.running_keys(site.name) if k[3] >= start}
    all_users = True
    saw_lines = saw_gpu = 0
    t0, t_end = to_epoch(start), to_epoch(end)
    while t0 < t_end:
        t1 = min(t_end, t0 + chunk)
        lo, hi = from_epoch(t0), from_epoch(t1)
        try:
            result = transport.run(sacct_argv(lo, hi, all_users), timeout=SACCT_TIMEOUT)
        except CommandError as exc:
            if not all_users:
                raise
            # --allusers refused (PrivateData, old sacct...): the user's own jobs are still worth having.
            all_users = False
            why = (exc.result.stderr.strip().splitlines() or ["refused"])[-1]
            out.warnings.append(f"site {site.name}: sacct --allusers failed ({why}); collecting your own jobs only")
            result = transport.run(sacct_argv(lo, hi, all_users), timeout=SACCT_TIMEOUT)
        stats = ParseStats()
        got = store.ingest(site.name, parse_sacct(result.stdout.splitlines(), resolve, stats, cross_off=running_before))
        store.set_watermark(site.name, hi)
        out.result.add(got)
        saw_lines += stats.lines - stats.pending
        saw_gpu += stats.rows
        if stats.malformed:
            out.warnings.append(f"site {site.name}: {stats.malformed} sacct line(s) not understood, "
                                f"first: {stats.first_bad!r}")
        progress(f"{site.name}: {lo} .. {hi}  {stats.rows} GPU runs ({got.new} new, {got.updated} updated, "
                 f"{stats.running} running)")
        t0 = t1
    out.scope = "all users" if all_users else "own jobs"
    if saw_lines and not saw_gpu:
        out.warnings.append(
            f"site {site.name}: {saw_lines} job run(s) but none with GPUs in AllocTRES; "
            "does the site's AccountingStorageTRES include gres/gpu?")
    if running_before:
        out.warnings.append(f"site {site.name}: {len(running_before)} run(s) stored as running were not returned "
                            "by sacct; they stay provisional")


# --- local and lab-server jobs: from the gpuhub ledger --------------------------------------------


def ledger_rows(site: Site, records: Iterable[object], since_epoch: float, now_epoch: float) -> Iterator[UsageRow]:
    """Ledger jobs of ``site`` that ran with GPUs and overlap ``[since, now]`` as usage rows."""
    if site.connection is not None:
        cluster = site.connection.host
        user = site.connection.user or getpass.getuser()
    else:
        cluster, user = socket.gethostname(), getpass.getuser()
    for rec in records:
        started, ended = rec.started_at, rec.ended_at  # type: ignore[attr-defined]
        plan, request = rec.plan, rec.request  # type: ignore[attr-defined]
        gpus = float(plan.get("gpus") or 0)
        if started is None or not gpus or (ended is not None and ended < since_epoch):
            continue
        if ended is None and rec.state.finished:  # type: ignore[attr-defined]
            ended = rec.updated_at  # type: ignore[attr-defined]
        stop = ended if ended is not None else now_epoch
        submitted = rec.submitted_at or rec.created_at  # type: ignore[attr-defined]
        account = plan.get("account") or request.get("account") or request.get("project") or ""
        yield UsageRow(
            cluster=cluster,
            job_id=rec.scheduler_id or rec.token,  # type: ignore[attr-defined]
            job_ref=None,
            submit=from_epoch(submitted),
            start=from_epoch(started),
            end=from_epoch(ended) if ended is not None else None,
            wall_seconds=max(0, int(stop) - int(started)),
            nnodes=int(plan.get("nodes") or 1),
            ncpus=int((plan.get("cpus_per_task") or 0) * (plan.get("ntasks_per_node") or 1)),
            user=user,
            account=str(account),
            partition=str(plan.get("partition_key") or ""),
            qos=str(plan.get("qos") or ""),
            state=rec.state.value.upper(),  # type: ignore[attr-defined]
            gpu_tres=f"plan:gpus={plan.get('gpus')}",
            gpus=gpus,
            gpu_model=str(plan.get("gpu_model") or ""),
        )


def _collect_ledger(store: UsageStore, site: Site, start: str, end: str, out: Outcome, progress: Progress) -> None:
    from gpuhub.jobs import refresh
    from gpuhub.ledger import Ledger

    ledger = Ledger()
    try:
        records = ledger.jobs(site=site.name)
        if any(not r.state.finished for r in records):
            # Ask the machine first, so a job that ended since the last `gpuhub status` is final here.
            records, errors = refresh(records, ledger)
            out.warnings.extend(f"site {site.name}: could not refresh job states: {e}" for e in errors)
            records = ledger.jobs(site=site.name)
        now = datetime.now(timezone.utc).timestamp()
        got = store.ingest(site.name, ledger_rows(site, records, to_epoch(start), now))
    finally:
        ledger.close()
    store.set_watermark(site.name, end)
    out.result.add(got)
    out.scope = "ledger"
    progress(f"{site.name}: {start} .. {end}  {got.seen} GPU runs from the gpuhub ledger "
             f"({got.new} new, {got.updated} updated, {got.provisional} running)")
