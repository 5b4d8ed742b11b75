"""From sites, a request and what the probes saw, to a ranked plan with every exclusion explained (pure)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from gpuhub.broker.feasible import SiteFit, fit_site
from gpuhub.broker.live import partition_live
from gpuhub.broker.rank import Row, make_row, over_allocation, rank
from gpuhub.errors import RequestError
from gpuhub.exporter.readings import SiteReading
from gpuhub.exporter.samples import GpuModels
from gpuhub.record import Factory, Record

if TYPE_CHECKING:
    from gpuhub.broker.config import BrokerConfig
    from gpuhub.request import JobRequest
    from gpuhub.site import Site


class SiteState(Record):
    """What one site's probe said: a reading, or why there is none."""

    reading: SiteReading | None = None
    error: str | None = None  # the site could not be probed: it is skipped with this reason
    starts: dict[str, tuple[datetime | None, str]] = Factory(dict)  # partition key -> (start, note)
    refused: dict[str, str] = Factory(dict)  # partition key -> the scheduler's refusal
    age: float = 0.0  # seconds since the probe ran (cached readings are older than 0)


class BrokerPlan(Record, frozen=False):
    rows: list[Row]
    excluded: dict[str, str]  # site -> reason
    live: bool

    @property
    def chosen(self) -> Row | None:
        return self.rows[0] if self.rows else None

    def to_json(self) -> dict[str, object]:
        return {
            "live": self.live,
            "chosen": self.rows[0].to_json() if self.rows else None,
            "candidates": [r.to_json() for r in self.rows],
            "excluded": [{"site": s, "reason": why} for s, why in self.excluded.items()],
        }

    def require(self) -> Row:
        """The chosen row, or a RequestError listing every site's reason."""
        if self.rows:
            return self.rows[0]
        lines = [f"  {site}: {why}" for site, why in self.excluded.items()] or ["  no site is configured"]
        raise RequestError("no site can run this:\n" + "\n".join(lines))


def fits(sites: list[Site], request: JobRequest, config: BrokerConfig) -> list[SiteFit]:
    return [fit_site(site, request, config) for site in sites]


def choose(fitted: list[SiteFit], config: BrokerConfig, states: dict[str, SiteState] | None) -> BrokerPlan:
    """Rank every feasible partition; ``states`` None plans from the site files alone (--offline)."""
    rows: list[Row] = []
    excluded: dict[str, str] = {}
    for fit in fitted:
        name = fit.site.name
        if not fit.feasible:
            excluded[name] = fit.reason()
            continue
        state = (states or {}).get(name) if states is not None else None
        if state is not None and state.error:
            excluded[name] = f"skipped: {state.error}"
            continue
        models = GpuModels(fit.site)
        site_rows, refusals = [], {}
        for alloc in fit.allocations:
            live = None
            if state is not None and state.refused.get(alloc.partition_key):
                refusals[alloc.partition_key] = state.refused[alloc.partition_key]
                continue
            if state is not None and state.reading is not None:
                live = partition_live(state.reading, alloc, models)
                start, note = state.starts.get(alloc.partition_key, (None, ""))
                live = type(live)(**{**live.__dict__, "start": start, "start_note": note})
            row = make_row(alloc, live, config)
            too_much = over_allocation(row)
            if too_much:
                refusals[alloc.partition_key] = too_much
                continue
            site_rows.append(row)
        if site_rows:
            rows.extend(site_rows)
        else:
            excluded[name] = SiteFit(fit.site, [], refusals).reason()
    return BrokerPlan(rank(rows), excluded, live=states is not None)
