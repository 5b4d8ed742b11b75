"""How `gpuhub sites show` describes a site: pure text from the validated site and its files.

Computed when the sites are validated and kept in the site cache, so showing a site loads no model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpuhub.cli.output import table
from gpuhub.paths import user_sites_dir
from gpuhub.units import format_walltime

if TYPE_CHECKING:
    from gpuhub.registry import SiteSource
    from gpuhub.site import Site


def describe(site: Site, sources: list[SiteSource]) -> str:
    def mark(path: str) -> str:
        return " (unverified)" if site.is_unverified(path) else ""

    out = [f"{site.name}: {site.description}".rstrip(": "), f"  scheduler     {site.scheduler}"]
    if site.connection:
        c = site.connection
        target = f"{c.user + '@' if c.user else ''}{c.host}{':' + str(c.port) if c.port else ''}"
        out.append(f"  login         {target}{mark('connection.host')}")
        if c.proxy_jump:
            out.append(f"  proxy jump    {c.proxy_jump}")
        if c.ip_restricted:
            out.append("  access        registered client addresses only (use a VPN or a proxy jump)")
    if site.account.format or site.account.required:
        req = "required" if site.account.required else "optional"
        out.append(f"  account       {site.account.format or '{project}'} ({req}){mark('account')}")
    if site.defaults.project or site.defaults.account:
        out.append(f"  your default  project={site.defaults.project} account={site.defaults.account}")
    for label, items, path in [
        ("directives", site.directives, "directives"),
        ("setup", site.setup, "setup"),
    ]:
        if items:
            out.append(f"  {label:<13} {'; '.join(items)}{mark(path)}")
    if site.env:
        out.append(f"  env           {' '.join(f'{k}={v}' for k, v in site.env.items())}{mark('env')}")
    out.append("")
    rows = []
    for key, p in site.partitions.items():
        base = f"partitions.{key}"
        star = "*" if key == site.partition_key() else ""
        qos = ", ".join(
            f"{q.name}<={format_walltime(q.max_walltime)}" if q.max_walltime else q.name for q in p.qos
        )
        rows.append(
            (
                key + star,
                (p.partition or "(default)") + mark(f"{base}.partition"),
                (p.gpu_model or "-") + mark(f"{base}.gpu_model"),
                str(p.gpus_per_node) + mark(f"{base}.gpus_per_node"),
                (str(p.cpus_per_gpu) if p.cpus_per_gpu else "-") + mark(f"{base}.cpus_per_gpu"),
                (format_walltime(p.max_walltime) if p.max_walltime else "-") + mark(f"{base}.max_walltime"),
                (qos or "-") + mark(f"{base}.qos"),
            )
        )
    out.append(table(["partition", "slurm name", "gpu", "gpus/node", "cpus/gpu", "max time", "qos"], rows))
    out.append("  (* = default partition)")
    if site.accounting.normalization:
        factors = ", ".join(f"{m}={f:g}" for m, f in site.accounting.normalization.items())
        out.append(f"\nGPU-hour normalisation: {factors}{mark('accounting.normalization')}")
    if site.unverified:
        out.append(f"\nUnverified values (check on the live site): {', '.join(site.unverified)}")
    out.append("\nFiles (lowest layer first):")
    out.extend(f"  {src.layer:<12} {src.path}" for src in sources)
    out.append(f"Your overrides go in {user_sites_dir() / (site.name + '.yaml')}")
    return "\n".join(out)
