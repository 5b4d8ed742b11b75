"""GPU-hour reports from the usage store: grouping and normalisation (formats: formats.py, html.py).

GPU hours = GPUs x elapsed. A run crossing a month boundary is spread pro rata of time over the
months it covers (months are UTC). Whole-month periods read the monthly rollups kept at ingest;
other periods are computed from the runs, clipped to the period the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpuhub.accounting.records import effective_end, window_shares
from gpuhub.accounting.store import DIMENSION_COLUMNS, Filters, UsageStore

DIMENSIONS = tuple(DIMENSION_COLUMNS)
DEFAULT_BY = ("project", "month")
FORMATS = ("table", "csv", "json", "markdown", "html")
ATTRIBUTION = "GPU hours = GPUs x elapsed; runs crossing a month end are split pro rata of time (UTC months)"


@dataclass
class Report:
    by: list[str]
    rows: list[dict[str, Any]]
    total_gpu_hours: float
    total_jobs: int
    provisional_gpu_hours: float
    normalized: bool
    since: str | None
    until: str | None
    sites: list[str]
    warnings: list[str] = field(default_factory=list)

    @property
    def value_column(self) -> str:
        return "normalized_gpu_hours" if self.normalized else "gpu_hours"

    def to_dict(self) -> dict[str, Any]:
        return {
            "by": self.by,
            "since": self.since,
            "until": self.until,
            "sites": self.sites,
            "normalized": self.normalized,
            "attribution": ATTRIBUTION,
            "rows": self.rows,
            "total": {self.value_column: round(self.total_gpu_hours, 6), "jobs": self.total_jobs,
                      "provisional_gpu_hours": round(self.provisional_gpu_hours, 6)},
            "warnings": self.warnings,
        }


Factors = Callable[[str, str], float]


class SiteFactors:
    """Normalisation factors from the site files' ``accounting.normalization``; unknown GPU models
    (and sites without a file) count with factor 1, with one warning each."""

    def __init__(self, load: Callable[[str], Mapping[str, float] | None] | None = None) -> None:
        self._load = load or _site_normalization
        self._tables: dict[str, Mapping[str, float] | None] = {}
        self.warnings: list[str] = []
        self._warned: set[tuple[str, str]] = set()

    def __call__(self, site: str, model: str) -> float:
        if site not in self._tables:
            self._tables[site] = self._load(site)
        table = self._tables[site]
        if table is None:
            self._warn(site, "", f"site {site}: no site file to read normalization factors from; factor 1 used")
            return 1.0
        if model in table:
            return float(table[model])
        shown = model or "(unknown)"
        self._warn(site, model, f"site {site}: no normalization factor for GPU model {shown}; factor 1 used")
        return 1.0

    def _warn(self, site: str, model: str, message: str) -> None:
        if (site, model) not in self._warned:
            self._warned.add((site, model))
            self.warnings.append(message)


def _site_normalization(site: str) -> Mapping[str, float] | None:
    from gpuhub.errors import GpuhubError
    from gpuhub.registry import load_site

    try:
        return load_site(site).accounting.normalization
    except GpuhubError:
        return None


def build_report(
    store: UsageStore,
    by: Sequence[str] = DEFAULT_BY,
    filters: Filters = Filters(),  # noqa: B008 - frozen dataclass
    since: str | None = None,
    until: str | None = None,
    factors: Factors | None = None,
    top: int | None = None,
) -> Report:
    """GPU hours grouped by ``by`` over ``[since, until)`` (UTC ``YYYY-MM-DDTHH:MM:SS``; None = open).

    ``factors(site, gpu_model)`` turns GPU hours into normalised GPU hours when given.
    """
    by = list(by)
    bad = [d for d in by if d not in DIMENSIONS]
    if bad:
        raise ValueError(f"unknown grouping {', '.join(bad)}; choose from {', '.join(DIMENSIONS)}")
    inner = ["site", "gpu_model", *(d for d in by if d not in ("site", "gpu_model"))]
    if _whole_months(since, until):
        raw = store.rollup(inner[2:], filters, since[:7] if since else None, until[:7] if until else None)
    else:
        raw = _from_runs(store, inner, filters, since or "0000-01-01T00:00:00", until or "9999-12-31T23:59:59")
    groups: dict[tuple[Any, ...], list[float]] = {}
    for row in raw:
        *keys, gpu_seconds, jobs, provisional = row
        if not gpu_seconds and not jobs:
            continue
        factor = factors(keys[0], keys[1]) if factors else 1.0
        named = dict(zip(inner, keys, strict=True))
        key = tuple(named[d] for d in by)
        g = groups.setdefault(key, [0.0, 0, 0.0])
        g[0] += float(gpu_seconds) * factor
        g[1] += int(jobs)
        g[2] += float(provisional) * factor
    value = "normalized_gpu_hours" if factors else "gpu_hours"
    rows = [{**dict(zip(by, key, strict=True)), value: round(g[0] / 3600, 6), "jobs": g[1],
             "provisional_gpu_hours": round(g[2] / 3600, 6)} for key, g in groups.items()]
    rows.sort(key=lambda r: (r.get("month", ""), -r[value], *(str(r[d]) for d in by)))
    if top:  # the N largest, per month when grouped by month (rows are sorted largest first per month)
        rank: dict[str, int] = {}
        kept = []
        for r in rows:
            month = r.get("month", "")
            rank[month] = rank.get(month, 0) + 1
            if rank[month] <= top:
                kept.append(r)
        rows = kept
    return Report(
        by=by, rows=rows,
        total_gpu_hours=sum(g[0] for g in groups.values()) / 3600,
        total_jobs=int(sum(g[1] for g in groups.values())),
        provisional_gpu_hours=sum(g[2] for g in groups.values()) / 3600,
        normalized=factors is not None, since=since, until=until, sites=list(filters.sites),
        warnings=list(getattr(factors, "warnings", [])),
    )


def _whole_months(since: str | None, until: str | None) -> bool:
    return all(t is None or t[7:] == "-01T00:00:00" for t in (since, until))


def _from_runs(
    store: UsageStore, inner: list[str], filters: Filters, since: str, until: str
) -> list[tuple[Any, ...]]:
    """The same sums as the rollup, computed from the runs clipped to ``[since, until)``."""
    sums: dict[tuple[Any, ...], list[float]] = {}
    for site, account, project, user, partition, model, gpus, start, end, wall in store.runs(filters, since, until):
        stop = effective_end(start, end, wall)
        total = round(gpus * wall)
        values = {"site": site, "account": account, "project": project, "user": user, "partition": partition,
                  "gpu_model": model}
        for month, share in window_shares(start, stop, total, since, until):
            values["month"] = month
            key = tuple(values[d] for d in inner)
            s = sums.setdefault(key, [0.0, 0, 0.0])
            s[0] += share
            if end is None:
                s[2] += share
        if since <= stop < until:  # a run counts as one job in the month it ends, as in the rollup
            values["month"] = stop[:7]
            sums.setdefault(tuple(values[d] for d in inner), [0.0, 0, 0.0])[1] += 1
    return [(*k, *v) for k, v in sums.items()]


# --- text formats ---------------------------------------------------------------------------------


def period(report: Report) -> str:
    since = report.since or "the first record"
    until = report.until or "now"
    return f"{since} .. {until} (UTC)"


def notes(report: Report) -> list[str]:
    out = []
    if report.provisional_gpu_hours:
        out.append(f"includes {report.provisional_gpu_hours:.2f} GPU hours of runs still going (provisional)")
    if report.normalized:
        out.append("normalized: GPU hours x the site's accounting.normalization factor of the GPU model")
    return out


def chart_reports(
    store: UsageStore, filters: Filters, since: str | None, until: str | None, factors: Factors | None
) -> dict[str, Report]:
    """What the HTML charts show: per month by project, top users, per site."""
    return {
        "month_project": build_report(store, ["month", "project"], filters, since, until, factors),
        "user": build_report(store, ["user"], filters, since, until, factors),
        "site": build_report(store, ["site"], filters, since, until, factors),
    }


