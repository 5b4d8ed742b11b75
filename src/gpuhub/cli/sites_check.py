"""``gpuhub sites check SITE``: the site file against the live site, each mismatch with the line to fix."""

from __future__ import annotations

from typing import Any

import click

from gpuhub.cli.output import emit_json
from gpuhub.cli.params import BoundedFloat


def _where(sources: list[Any], path: str) -> str:
    from gpuhub.registry import _line_of, _owner

    loc = tuple(path.split("."))
    src = _owner(loc, sources)
    return f"{src.path}:{_line_of(src.path, loc)}" if src else "?"


@click.command("check", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("site")
@click.option("--all", "show_all", is_flag=True, help="Also list every value that checks out.")
@click.option("--timeout", type=BoundedFloat(1, 600), default=60.0, show_default=True,
              help="Seconds allowed for each command on the site.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable findings.")
def check_cmd(site: str, show_all: bool, timeout: float, as_json: bool) -> None:
    """Compare a Slurm site file with the live site (sinfo, scontrol, sacctmgr).

    Partitions, GPU type and count per node, constraint features, maximum walltime and nodes,
    QoS limits, and whether the default project's account is yours. Each mismatch is printed
    with the file and line to fix and the value the site reports; values listed under
    `unverified:` that check out are reported so they can be marked verified. Exit 1 when
    anything differs.

    \b
    Examples:
      gpuhub sites check jean-zay
      gpuhub sites check ruche --all --json
    """
    from gpuhub import registry
    from gpuhub.backends import backend_for
    from gpuhub.transport import transport_for

    site_obj = registry.load_site(site)
    sources = registry.site_sources(site)
    findings = backend_for(site_obj.scheduler).check_live(site_obj, transport_for(site_obj), timeout)
    rows = []
    for f in findings:
        rows.append({"field": f.path, "ok": f.ok, "message": f.message, "fix": f.fix,
                     "unverified": site_obj.is_unverified(f.path), "where": _where(sources, f.path)})
    bad = [r for r in rows if not r["ok"]]
    if as_json:
        emit_json({"site": site, "findings": rows})
    else:
        for r in rows:
            if not r["ok"]:
                key = r["field"].rsplit(".", 1)[-1]
                fix = f"; fix: `{key}: {r['fix']}`" if r["fix"] is not None else ""
                click.echo(f"{r['where']}: {r['field']}: {r['message']}{fix}")
            elif r["unverified"]:
                click.echo(f"{r['where']}: {r['field']}: checks out ({r['message']}); listed under `unverified:`,"
                           " it can be removed from there")
            elif show_all:
                click.echo(f"ok  {r['field']}: {r['message']}")
        click.echo(f"{site}: {len(rows)} value(s) checked, {len(bad)} differ")
    if bad:
        raise SystemExit(1)
