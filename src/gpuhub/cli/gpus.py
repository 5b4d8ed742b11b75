"""``gpuhub gpus``: free and allocated GPUs per site and model, right now, from the sites' probes.

Lab servers (GPUs reserved by gpuhub's own locks) also get one row per GPU: free, held by a
gpuhub job (user, job, since when), foreign (used outside gpuhub), reserved or unavailable.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import click

from gpuhub.cli.output import complete_site, emit_json, table
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
@click.option("--site", "-s", "site", multiple=True, metavar="SITE", shell_complete=complete_site,
              help="Only this site (repeatable); lab servers show each GPU and who holds it.")
@click.option("--refresh", is_flag=True, help="Probe again even if a recent reading is cached.")
@click.option("--probe-timeout", type=BoundedFloat(0.1, 600), help="Longest wait for one site, in seconds.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def gpus(sites: str | None, site: tuple[str, ...], refresh: bool, probe_timeout: float | None,
         as_json: bool) -> None:
    """Free and allocated GPUs per site and GPU model, across all sites, right now.

    Each site is probed once (in parallel, each within its timeout; the reading is shared with
    `gpuhub plan` for a few seconds); a site that does not answer is listed with its reason.
    On lab servers every GPU is listed too: free, held (by whom, which job, for how long), used
    outside gpuhub, reserved; and the jobs waiting for GPUs.

    \b
    Examples:
      gpuhub gpus
      gpuhub gpus --sites jean-zay,ruche --refresh
      gpuhub gpus --site my-lab-server
      gpuhub gpus --json | jq '.gpus[] | select(.free > 0)'
    """
    from gpuhub.broker.candidates import candidate_sites
    from gpuhub.broker.config import load_config
    from gpuhub.cli import lab_gpus

    config = load_config()
    names = list(dict.fromkeys([*(s.strip() for s in (sites or "").split(",") if s.strip()), *site])) or None
    site_objs, broken = candidate_sites(names, config)
    timeout = probe_timeout or config.probe_timeout
    readings: dict[str, Any] = {}
    errors: dict[str, str] = dict(broken)
    lab: dict[str, dict[str, Any]] = {}
    job_of = lab_gpus.job_namer()

    def probe(site: Any, prober: Any) -> None:
        try:
            if prober is None:  # a lab server: each GPU and its holder, a probe of its own, never cached
                lab[site.name] = lab_gpus.probe(site, timeout, job_of)
                readings[site.name] = (lab[site.name]["reading"],)
            else:
                readings[site.name] = prober.reading(site, refresh)
        except Exception as exc:
            errors[site.name] = " ".join((getattr(exc, "message", None) or str(exc) or type(exc).__name__).split())

    # Lab servers first: their hosts work on the probe while this process loads the rest.
    labs = [s for s in site_objs if lab_gpus.is_lab(s)]
    threads = [threading.Thread(target=probe, args=(s, None), daemon=True) for s in labs]
    for thread in threads:
        thread.start()
    others = [s for s in site_objs if s.name not in {lab_site.name for lab_site in labs}]
    if others:
        from gpuhub.broker.api import live_cache
        from gpuhub.broker.state import Prober

        prober = Prober(live_cache(config), timeout, estimator=None)
        threads += [threading.Thread(target=probe, args=(s, prober), daemon=True) for s in others]
        for thread in threads[len(labs):]:
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
    unreachable = [{"site": s, "reason": r} for s, r in errors.items()]
    unreachable += [{"site": f"{u['site']}/{u['host']}", "reason": u["reason"]} for g in lab.values()
                    for u in g["unreachable"]]
    lab_rows = [r for g in lab.values() for r in g["gpus"]]
    lab_queue = [r for g in lab.values() for r in g["queue"]]
    if as_json:
        emit_json({"gpus": rows, "lab_gpus": lab_rows, "lab_queue": lab_queue, "unreachable": unreachable})
        return
    if rows:
        keys = ["site", "model", "total", "allocated", "free", "unavailable", "queued"]
        click.echo(table(keys, [[r[k] for k in keys] for r in rows]))
    if lab_rows or lab_queue:
        click.echo()
        lab_gpus.print_tables(lab_rows, lab_queue, {name: g["now"] for name, g in lab.items()})
    for item in unreachable:
        click.echo(f"{item['site']}: {item['reason']}", err=True)
