"""``gpuhub gpus``: free and allocated GPUs per site and model, right now, from the sites' probes."""

from __future__ import annotations

import threading
import time
from typing import Any

import click

from gpuhub.cli.output import emit_json, table
from gpuhub.cli.params import BoundedFloat


def gpu_rows(site_name: str, reading: Any, site: Any) -> list[dict[str, Any]]:
    """One row per GPU model: total, allocated, free, unavailable, queued (pending GPUs)."""
    from gpuhub.exporter.samples import GpuModels, site_samples

    samples = site_samples(site_name, reading, GpuModels(site))
    models: dict[str, dict[str, Any]] = {}

    def row(model: str) -> dict[str, Any]:
        return models.setdefault(model, {"site": site_name, "model": model, "total": 0, "allocated": 0,
                                         "free": 0, "unavailable": 0, "queued": 0})

    for family, field in [("gpuhub_gpus", "total"), ("gpuhub_gpus_allocated", "allocated"),
                          ("gpuhub_gpus_idle", "free"), ("gpuhub_gpus_unavailable", "unavailable")]:
        for (_site, model), value in samples.get(family, {}).items():
            row(model)[field] += int(value)
    for (_site, _partition, model, state), value in samples.get("gpuhub_jobs_gpus_requested", {}).items():
        if state == "pending":
            row(model)["queued"] += int(value)
    return sorted(models.values(), key=lambda r: r["model"])


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--sites", "sites", metavar="A,B,...", help="Only these sites (default: every configured site).")
@click.option("--refresh", is_flag=True, help="Probe again even if a recent reading is cached.")
@click.option("--probe-timeout", type=BoundedFloat(0.1, 600), help="Longest wait for one site, in seconds.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def gpus(sites: str | None, refresh: bool, probe_timeout: float | None, as_json: bool) -> None:
    """Free and allocated GPUs per site and GPU model, across all sites, right now.

    Each site is probed once (in parallel, each within its timeout; the reading is shared with
    `gpuhub plan` for a few seconds); a site that does not answer is listed with its reason.

    \b
    Examples:
      gpuhub gpus
      gpuhub gpus --sites jean-zay,ruche --refresh
      gpuhub gpus --json | jq '.gpus[] | select(.free > 0)'
    """
    from gpuhub.broker.api import candidate_sites, live_cache
    from gpuhub.broker.config import load_config
    from gpuhub.broker.state import Prober

    config = load_config()
    names = [s.strip() for s in sites.split(",") if s.strip()] if sites else None
    site_objs, broken = candidate_sites(names, config)
    timeout = probe_timeout or config.probe_timeout
    prober = Prober(live_cache(config), timeout, estimator=None)
    readings: dict[str, Any] = {}
    errors: dict[str, str] = dict(broken)

    def probe(site: Any) -> None:
        try:
            readings[site.name] = prober.reading(site, refresh)
        except Exception as exc:
            errors[site.name] = " ".join((getattr(exc, "message", None) or str(exc) or type(exc).__name__).split())

    threads = [threading.Thread(target=probe, args=(s,), daemon=True) for s in site_objs]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    rows = []
    for site in site_objs:
        if site.name in readings:
            rows += gpu_rows(site.name, readings[site.name][0], site)
        else:
            errors.setdefault(site.name, f"no answer within {timeout:g} s")
    if as_json:
        emit_json({"gpus": rows, "unreachable": [{"site": s, "reason": r} for s, r in errors.items()]})
        return
    if rows:
        keys = ["site", "model", "total", "allocated", "free", "unavailable", "queued"]
        click.echo(table(keys, [[r[k] for k in keys] for r in rows]))
    for site_name, reason in errors.items():
        click.echo(f"{site_name}: {reason}", err=True)
