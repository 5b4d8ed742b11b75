"""The broker as one call: sites + request -> a ranked :class:`BrokerPlan` (live or offline)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpuhub.broker.cache import LiveCache
from gpuhub.broker.candidates import candidate_sites
from gpuhub.broker.choose import BrokerPlan, choose, fits
from gpuhub.broker.config import load_config
from gpuhub.broker.feasible import SiteFit
from gpuhub.broker.state import Prober
from gpuhub.paths import user_cache_dir

if TYPE_CHECKING:
    from gpuhub.broker.config import BrokerConfig
    from gpuhub.request import JobRequest


def live_cache(config: BrokerConfig) -> LiveCache:
    return LiveCache(user_cache_dir() / "live", config.cache_ttl)


def broker_plan(
    request: JobRequest,
    *,
    sites: list[str] | None = None,
    offline: bool = False,
    refresh: bool = False,
    timeout: float | None = None,
    prefer: list[str] | None = None,
    prober: Prober | None = None,
) -> BrokerPlan:
    config = load_config(prefer)
    site_objs, broken = candidate_sites(sites, config)
    fitted: list[SiteFit] = fits(site_objs, request, config)
    states = None
    if not offline:
        prober = prober or Prober(live_cache(config), timeout or config.probe_timeout)
        states = prober.gather(fitted, refresh=refresh)
    result = choose(fitted, config, states)
    result.excluded.update(broken)
    return result
