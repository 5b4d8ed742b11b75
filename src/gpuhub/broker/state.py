"""Live state for the broker: one probe per site, in parallel, each within its own time limit.

A site's reading comes from its backend's GPU probe (the one the exporter polls), and for each
candidate partition the scheduler's own start estimate where it gives one. Both are kept in a
:class:`LiveCache` for ``cache_ttl`` seconds, shared by every gpuhub command of the user. A site
that does not answer in time is reported with its reason and never holds up the others: the
probe runs in a daemon thread that is simply left behind.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gpuhub.broker.cache import LiveCache
from gpuhub.broker.choose import SiteState
from gpuhub.broker.feasible import SiteFit
from gpuhub.exporter.readings import NodeGpus, QueueJob, SiteReading
from gpuhub.plan import Allocation
from gpuhub.sitedata import Connection as PlainConnection
from gpuhub.sitedata import Site

if TYPE_CHECKING:
    # The transports load only when a site is probed, not for a plan from the cache; the aliases
    # are for annotations alone (subscripting Callable costs a millisecond at every start).
    from typing import TypeAlias

    from gpuhub.transport.base import Transport

    # (site, transport, monotonic deadline) -> reading
    Reader: TypeAlias = Callable[[Site, Transport, float], SiteReading]
    # (site, transport, allocation, timeout) -> (start or None, note); raises GpuhubError when refused
    Estimator: TypeAlias = Callable[[Site, Transport, Allocation, float], tuple[datetime | None, str]]


def reading_to_json(reading: SiteReading) -> dict[str, Any]:
    return {
        "nodes": [{**n.as_dict(), "partitions": list(n.partitions), "features": sorted(n.features)}
                  for n in reading.nodes],
        # Only what planning needs: no user or account names in the cache.
        "jobs": None if reading.jobs is None else [[j.state, j.gpus, j.partition] for j in reading.jobs],
        "default_partition": reading.default_partition,
    }


def reading_from_json(data: dict[str, Any]) -> SiteReading:
    nodes = [
        NodeGpus(n["name"], bool(n["available"]), dict(n["total"]), dict(n["used"]), tuple(n["partitions"]),
                 frozenset(n["features"]))
        for n in data["nodes"]
    ]
    jobs = None if data["jobs"] is None else [QueueJob(s, dict(g), p) for s, g, p in data["jobs"]]
    return SiteReading(nodes=nodes, jobs=jobs, default_partition=data.get("default_partition"))


def _site_key(site: Site) -> str:
    # A changed site file (another host, port, partitions) must not reuse an old reading.
    # Plain sites (gpuhub.sitedata) and models alike; a connection holds no walltime or size.
    # The repr of plain values (strings, numbers, None, a dict of fingerprints) is stable.
    conn = site.connection
    connection = None if conn is None else tuple(getattr(conn, name) for name in PlainConnection._fields)
    return repr((site.name, site.scheduler, connection))


def _start_key(site_key: str, alloc: Allocation) -> str:
    return site_key + repr(sorted(alloc.summary().items()))


def _transport_for(site: Site) -> Transport:
    """The site's transport, imported on the first probe: a plan from the cache opens none."""
    from gpuhub.transport import transport_for

    return transport_for(site)


def default_reader(site: Site, transport: Transport, deadline: float) -> SiteReading:
    from gpuhub.backends import backend_for

    return backend_for(site.scheduler).read_gpus(site, transport, deadline)


def default_estimator(site: Site, transport: Transport, alloc: Allocation, timeout: float
                      ) -> tuple[datetime | None, str]:
    from gpuhub.backends import backend_for

    return backend_for(site.scheduler).expected_start(transport, alloc, timeout)


class Prober:
    """Gathers :class:`SiteState` for the feasible sites of a plan."""

    def __init__(
        self,
        cache: LiveCache,
        timeout: float,
        reader: Reader = default_reader,
        estimator: Estimator | None = default_estimator,
        transport_for: Callable[[Site], Transport] | None = None,
    ) -> None:
        self.cache, self.timeout = cache, timeout
        self.reader, self.estimator = reader, estimator
        self.transport_for = transport_for or _transport_for

    def reading(self, site: Site, refresh: bool = False, deadline: float | None = None) -> tuple[SiteReading, float]:
        """(reading, age) from the cache or a fresh probe; raises what the probe raises."""
        key = _site_key(site)
        hit = None if refresh else self.cache.get("reading", key)
        if hit is not None:
            value, age = hit
            if "error" in value:
                raise _Cached(value["error"], age)
            return reading_from_json(value), age
        try:
            deadline = deadline if deadline is not None else time.monotonic() + self.timeout
            reading = self.reader(site, self.transport_for(site), deadline)
        except Exception as exc:
            self.cache.put("reading", key, {"error": _why(exc)})
            raise
        self.cache.put("reading", key, reading_to_json(reading))
        return reading, 0.0

    def _site_state(self, fit: SiteFit, refresh: bool, deadline: float) -> SiteState:
        site = fit.site
        try:
            reading, age = self.reading(site, refresh, deadline)
        except _Cached as exc:
            return SiteState(error=f"{exc.reason} (cached {exc.age:.0f} s ago)", age=exc.age)
        except Exception as exc:
            return SiteState(error=_why(exc))
        starts, refused = {}, {}
        site_key = _site_key(site)
        for alloc in fit.allocations if self.estimator else []:
            key = _start_key(site_key, alloc)
            hit = None if refresh else self.cache.get("start", key)
            if hit is None:
                try:
                    left = max(0.5, deadline - time.monotonic())
                    start, note = self.estimator(site, self.transport_for(site), alloc, left)  # type: ignore[misc]
                    value = {"start": start.isoformat() if start else None, "note": note}
                except Exception as exc:
                    value = {"refused": _why(exc)}
                self.cache.put("start", key, value)
            else:
                value = hit[0]
            _record_start(alloc.partition_key, value, starts, refused)
        return SiteState(reading=reading, starts=starts, refused=refused, age=age)

    def _from_cache(self, fit: SiteFit) -> SiteState | None:
        """The site's whole state when the cache holds all of it (no thread, no network), else None."""
        site_key = _site_key(fit.site)
        hit = self.cache.get("reading", site_key)
        if hit is None:
            return None
        value, age = hit
        if "error" in value:
            return SiteState(error=f"{value['error']} (cached {age:.0f} s ago)", age=age)
        starts, refused = {}, {}
        for alloc in fit.allocations if self.estimator else []:
            start_hit = self.cache.get("start", _start_key(site_key, alloc))
            if start_hit is None:
                return None
            _record_start(alloc.partition_key, start_hit[0], starts, refused)
        return SiteState(reading=reading_from_json(value), starts=starts, refused=refused, age=age)

    def gather(self, fitted: list[SiteFit], refresh: bool = False) -> dict[str, SiteState]:
        """A state for every feasible site, in parallel; a site silent past the timeout is skipped."""
        with self.cache.batch():  # one write of the cache for all the sites probed
            return self._gather(fitted, refresh)

    def _gather(self, fitted: list[SiteFit], refresh: bool) -> dict[str, SiteState]:
        results: dict[str, SiteState] = {}
        deadline = time.monotonic() + self.timeout
        threads = []
        for fit in fitted:
            if not fit.feasible:
                continue
            cached = None if refresh else self._from_cache(fit)
            if cached is not None:
                results[fit.site.name] = cached
                continue

            def work(fit: SiteFit = fit) -> None:
                results[fit.site.name] = self._site_state(fit, refresh, deadline)

            thread = threading.Thread(target=work, name=f"probe-{fit.site.name}", daemon=True)
            thread.start()
            threads.append((fit.site, thread))
        for _site, thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        out = {}
        for fit in fitted:
            name = fit.site.name
            if not fit.feasible:
                continue
            if name not in results:
                reason = f"no answer within {self.timeout:g} s"
                out[name] = SiteState(error=reason)
                self.cache.put("reading", _site_key(fit.site), {"error": reason})
            else:
                out[name] = results[name]
        return out


def _record_start(key: str, value: dict[str, Any], starts: dict[str, Any], refused: dict[str, str]) -> None:
    """A cached start estimate (or refusal) into the per-partition maps of a SiteState."""
    if value.get("refused"):
        refused[key] = value["refused"]
    else:
        start = datetime.fromisoformat(value["start"]) if value.get("start") else None
        starts[key] = (start, value.get("note", ""))


class _Cached(Exception):
    def __init__(self, reason: str, age: float) -> None:
        super().__init__(reason)
        self.reason, self.age = reason, age


def _why(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())[:300]
