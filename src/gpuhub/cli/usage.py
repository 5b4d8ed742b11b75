"""``gpuhub usage``: collect GPU-hour accounting from sites, report it."""

from __future__ import annotations

import json
import re
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import click

from gpuhub.cli.output import complete_site, note
from gpuhub.limits import MAX_LIST_LIMIT

_DATE_RE = re.compile(r"^(\d{4})-(\d{2})(?:-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2}))?)?)?$")
DATE_HELP = "UTC date: YYYY-MM, YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS]"


def parse_when(text: str, *, end: bool = False) -> str:
    """A UTC instant ``YYYY-MM-DDTHH:MM:SS`` from a date a person typed.

    As an end (``--until``), a month or a day includes all of it: ``--until 2026-03`` is up to
    2026-04-01T00:00:00 (exclusive); a full time is taken as is.
    """
    m = _DATE_RE.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a date; use {DATE_HELP}")
    year, month, day, hour, minute, second = m.groups()
    try:
        first = date(int(year), int(month), int(day or 1))
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from None
    if hour is not None:
        if int(hour) > 23 or int(minute) > 59 or int(second or 0) > 59:
            raise ValueError(f"{text!r}: no such time of day")
        return f"{first.isoformat()}T{hour}:{minute}:{second or '00'}"
    if end:
        if day is None:
            first = date(first.year + first.month // 12, first.month % 12 + 1, 1)
        else:
            first += timedelta(days=1)
    return f"{first.isoformat()}T00:00:00"


def _since(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    try:
        return parse_when(value) if value else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def _until(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    try:
        return parse_when(value, end=True) if value else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def _seconds(ctx: click.Context, param: click.Parameter, value: str) -> int:
    from gpuhub.units import parse_walltime

    try:
        return parse_walltime(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def _by(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    from gpuhub.accounting.report import DIMENSIONS

    dims = [d.strip().replace("-", "_") for d in value.split(",") if d.strip()]
    dims = ["gpu_model" if d in ("model", "gpu") else d for d in dims]
    bad = [d for d in dims if d not in DIMENSIONS]
    if bad or not dims:
        raise click.BadParameter(f"{', '.join(bad) or 'nothing'}: choose from {', '.join(DIMENSIONS)}",
                                 ctx=ctx, param=param)
    if len(set(dims)) != len(dims):
        raise click.BadParameter(f"{value!r} names a grouping twice", ctx=ctx, param=param)
    return dims


def _split(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(v.strip() for item in values for v in item.split(",") if v.strip())


db_option = click.option(
    "--db", envvar="GPUHUB_USAGE_DB", metavar="URL",
    help="Usage database: postgresql://USER@HOST/DB for a team, or a SQLite file "
         "(default: the gpuhub ledger file; env GPUHUB_USAGE_DB).")


@click.group()
def usage() -> None:
    """Collect GPU-hour accounting from sites and report it.

    \b
    Examples:
      gpuhub usage collect --site jean-zay --since 2026-01
      gpuhub usage collect                       # the sites collected before, from where they stopped
      gpuhub usage report --by project,month
      gpuhub usage report --by user --since 2026-01 --until 2026-03 --normalized --format csv -o q1.csv
      gpuhub usage report --format html -o usage.html
    """


@usage.command("collect")
@click.option("--site", "-s", "sites", multiple=True, metavar="NAME", shell_complete=complete_site,
              help="Site to collect (repeatable or comma-separated). Default: the sites collected before.")
@click.option("--all", "all_sites", is_flag=True, help="Collect every configured site.")
@click.option("--since", callback=_since, metavar="DATE",
              help=f"Collect from this date instead of the site's watermark ({DATE_HELP}). "
                   "First collection of a site: from the start of the previous month.")
@click.option("--until", callback=_until, metavar="DATE", help="End of the window (default: now).")
@click.option("--overlap", default="1h", show_default=True, callback=_seconds,
              help="Collect again this much before the watermark (late accounting records).")
@click.option("--chunk", default="1d", show_default=True, callback=_seconds,
              help="Window of one sacct call; the watermark moves after each.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome per site as JSON.")
@db_option
def collect(sites: tuple[str, ...], all_sites: bool, since: str | None, until: str | None, overlap: int, chunk: int,
            as_json: bool, db: str | None) -> None:
    """Bring job runs from sites into the usage database.

    Slurm sites are read with sacct (every user's jobs when sacct allows it, else your own),
    HTCondor pools with condor_history and condor_q, local and lab-server sites (and any site
    with `accounting.source: ledger`) from the gpuhub ledger. Collecting again never counts a run
    twice; runs still going are stored as provisional and finalised by a later collection.
    A failing site is reported and the others are still collected (exit code 1).

    \b
    Examples:
      gpuhub usage collect --site jean-zay --since 2026-01
      gpuhub usage collect --all
      gpuhub usage collect --db postgresql://gpuhub@db.lab.example/usage
    """
    from gpuhub.accounting.collect import collect_site
    from gpuhub.accounting.store import open_store
    from gpuhub.registry import load_site, site_names
    from gpuhub.transport import close_all

    if since and until and since >= until:
        raise click.BadParameter("--since must be before --until", param_hint="--since")
    store = open_store(db)
    try:
        names = list(dict.fromkeys(_split(sites)))
        if all_sites:
            names = site_names()
        elif not names:
            names = store.collected_sites()
            if not names:
                raise click.UsageError("name the sites to collect: --site NAME (repeatable) or --all; "
                                       "later runs default to the sites collected before")
        loaded = [load_site(name) for name in names]  # an unknown site is a usage error: nothing collected
        outcomes = []
        for site in loaded:
            outcome = collect_site(store, site, since=since, until=until, overlap=overlap, chunk=chunk,
                                   progress=note)
            outcomes.append(outcome)
            for warning in outcome.warnings:
                note(f"warning: {warning}")
            if not outcome.ok:
                note(f"error: site {site.name}: {outcome.error}")
    finally:
        close_all()
        store.close()
    if as_json:
        click.echo(json.dumps([o.to_dict() for o in outcomes], indent=2))
    else:
        for o in outcomes:
            if o.ok and o.supported:
                r = o.result
                click.echo(f"{o.site}: {r.seen} GPU runs ({r.new} new, {r.updated} updated, {r.unchanged} unchanged, "
                           f"{r.provisional} running), {o.window[0]} .. {o.window[1]} UTC"  # type: ignore[index]
                           + (f", {o.scope}" if o.scope else ""))
            elif o.ok:
                click.echo(f"{o.site}: skipped ({o.scheduler}: collection not supported yet)")
            else:
                click.echo(f"{o.site}: FAILED: {o.error}")
    failed = [o.site for o in outcomes if not o.ok]
    if failed:
        raise SystemExit(1)


@usage.command("report")
@click.option("--by", "by", default="project,month", show_default=True, callback=_by,
              help="Group by, comma-separated: user, project, account, site, gpu_model, partition, month.")
@click.option("--since", callback=_since, metavar="DATE", help=f"From this date ({DATE_HELP}).")
@click.option("--until", callback=_until, metavar="DATE",
              help="Up to this date; a month or a day is included whole (--until 2026-03 ends on March 31).")
@click.option("--site", "-s", "sites", multiple=True, metavar="NAME", shell_complete=complete_site,
              help="Only these sites (repeatable).")
@click.option("--project", "projects", multiple=True, metavar="NAME", help="Only these projects (repeatable).")
@click.option("--user", "users", multiple=True, metavar="NAME", help="Only these users (repeatable).")
@click.option("--account", "accounts", multiple=True, metavar="NAME", help="Only these accounts (repeatable).")
@click.option("--normalized", is_flag=True,
              help="Weight GPU hours by the site's accounting.normalization factor of each GPU model.")
@click.option("--top", type=click.IntRange(1, MAX_LIST_LIMIT),
              help="Only the N largest rows (per month when grouped by month).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "markdown", "html"]), default="table",
              show_default=True, help="Output format; html is one self-contained file with charts.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write to this file.")
@db_option
def report(by: list[str], since: str | None, until: str | None, sites: tuple[str, ...], projects: tuple[str, ...],
           users: tuple[str, ...], accounts: tuple[str, ...], normalized: bool, top: int | None, fmt: str,
           output: Path | None, db: str | None) -> None:
    """GPU hours (GPUs x elapsed) grouped as asked, from the usage database.

    A job's project is its account without the "@..." suffix (Jean Zay: abc@a100 -> abc).
    Runs crossing a month end are split pro rata of time; months are UTC.

    \b
    Examples:
      gpuhub usage report --by project,month
      gpuhub usage report --by user,gpu_model --site jean-zay --since 2026-01 --until 2026-06
      gpuhub usage report --by project --normalized --format markdown
      gpuhub usage report --format json | jq '.total'
      gpuhub usage report --format html -o usage.html
    """
    from gpuhub.accounting.formats import render
    from gpuhub.accounting.report import SiteFactors, build_report, chart_reports
    from gpuhub.accounting.store import Filters, open_store

    if since and until and since >= until:
        raise click.BadParameter("--since must be before --until", param_hint="--since")
    filters = Filters(_split(sites), _split(projects), _split(users), _split(accounts))
    factors = SiteFactors() if normalized else None
    with open_store(db, must_exist=True) as store:
        _check_filters(filters, store.known_values())
        result = build_report(store, by, filters, since, until, factors, top=top)
        charts = chart_reports(store, filters, since, until, factors) if fmt == "html" else None
    for warning in result.warnings:
        note(f"warning: {warning}")
    text = render(result, fmt, charts)
    if output is None:
        click.echo(text)
        return
    try:
        output.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    except OSError as exc:
        raise click.FileError(str(output), hint=exc.strerror or str(exc)) from None
    note(f"wrote {output}")


def _check_filters(filters: Any, known: dict[str, list[str]]) -> None:
    """A filter value no record has would make a silent zero report (a typo billed as 0 hours): refuse it."""
    import difflib

    for field, option in (("sites", "--site"), ("projects", "--project"), ("users", "--user"),
                          ("accounts", "--account")):
        values = known[field]
        for value in getattr(filters, field):
            if value in values:
                continue
            folded = {v.lower(): v for v in values}
            close = folded.get(value.lower()) or next(iter(difflib.get_close_matches(value, values, 1)), None)
            guess = f"did you mean {close!r}? " if close else ""
            listed = ", ".join(values[:20]) + (f" and {len(values) - 20} more" if len(values) > 20 else "")
            if not values:
                listed = "none yet"
            how = f"; collect it with `gpuhub usage collect --site {value}`" if field == "sites" else ""
            raise click.BadParameter(
                f"{value!r} has no usage records{how}; {guess}known {field}: {listed}", param_hint=option
            )
