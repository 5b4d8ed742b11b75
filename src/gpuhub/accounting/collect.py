"""Collectors: bring a site's job runs into the usage store, incrementally and idempotently.

The scheduler-specific part is the site's backend's ``collect_usage`` (Slurm: ``sacct``, in
:mod:`gpuhub.accounting.sacct_collect`; lab servers and this machine: the gpuhub ledger, in
:mod:`gpuhub.accounting.ledger_usage`); this module chooses the window and reports the outcome.

A site's watermark is the end of the last window collected. The next window starts one overlap
earlier (records reach slurmdbd late), and never after the start of a run still stored as
running, so that run is seen again and finalised. Windows are cut into chunks, each its own
``sacct`` call and transactions, with the watermark moved after each: a collector stopped at any
point resumes where it was, and the overlap is simply collected again (the store skips runs it
already has unchanged).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from gpuhub.accounting.records import from_epoch, now_iso, to_epoch
from gpuhub.accounting.store import IngestResult, UsageStore
from gpuhub.errors import GpuhubError
from gpuhub.site import Site

OVERLAP = 3600
CHUNK = 86400

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
    from gpuhub.backends import backend_for

    out = Outcome(site.name, site.scheduler)
    backend = backend_for(site.scheduler)
    if not backend.capabilities.usage:
        out.supported = False
        out.warnings.append(f"site {site.name} ({site.scheduler}): collection not supported yet")
        return out
    end = until or now_iso()
    start = window(store, site.name, since, end, overlap)
    out.window = (start, end)
    try:
        if site.accounting.source == "ledger" and backend.usage_source != "ledger":
            from gpuhub.accounting.ledger_usage import collect_ledger

            collect_ledger(store, site, start, end, out, progress)  # the site asks for gpuhub's own records
        else:
            backend.collect_usage(store, site, start, end, chunk, out, progress)
    except GpuhubError as exc:
        out.ok, out.error = False, exc.message
    except Exception as exc:  # a database or parsing surprise on one site must not stop the others
        out.ok, out.error = False, f"{type(exc).__name__}: {exc}"
    return out
