"""The broker as one call: sites + request -> a ranked :class:`BrokerPlan` (live or offline)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpuhub.broker.cache import LiveCache
from gpuhub.broker.choose import BrokerPlan, choose, fits
from gpuhub.broker.config import load_config
from gpuhub.broker.feasible import SiteFit
from gpuhub.broker.state import Prober
from gpuhub.errors import ConfigError, shown
from gpuhub.paths import user_cache_dir

if TYPE_CHECKING:
    from gpuhub.broker.config import BrokerConfig
    from gpuhub.request import JobRequest
    from gpuhub.site import Site


def live_cache(config: BrokerConfig) -> LiveCache:
    return LiveCache(user_cache_dir() / "live", config.cache_ttl)


def candidate_sites(names: list[str] | None, config: BrokerConfig) -> tuple[list[Site], dict[str, str]]:
    """The sites to consider (``--sites``, else broker.yaml ``sites``, else every configured site)
    and, for those whose file does not load, the reason."""
    from gpuhub.registry import load_sites, site_names

    known = site_names()
    wanted = names or config.sites or known
    unknown = [n for n in wanted if n not in known]
    if unknown:
        where = "--sites" if names else "broker.yaml `sites`"
        listed = ", ".join(shown(n) for n in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise ConfigError(f"unknown site(s) {listed} in {where}; known sites: {', '.join(known)}")
    sites, broken = load_sites(wanted)
    return sites, {name: f"site file does not load: {why}" for name, why in broken.items()}


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
