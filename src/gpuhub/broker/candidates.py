"""Which sites the broker (and ``gpuhub gpus``) considers: ``--sites``, else broker.yaml ``sites``,
else every configured site. Kept apart from the ranking code, which ``gpuhub gpus`` does not need."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpuhub.errors import ConfigError, shown

if TYPE_CHECKING:
    from gpuhub.broker.config import BrokerSettings
    from gpuhub.sitedata import Site


def candidate_sites(names: list[str] | None, config: BrokerSettings) -> tuple[list[Site], dict[str, str]]:
    """The sites to consider and, for those whose file does not load, the reason."""
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
