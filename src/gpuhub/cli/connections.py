"""``gpuhub connections``: the SSH connections kept open between gpuhub commands; closing them."""

from __future__ import annotations

import time
from typing import Any

import click

from gpuhub.cli.output import complete_site, emit_json, table


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("site_names", nargs=-1, metavar="[SITE]...", shell_complete=complete_site)
@click.option("--close", is_flag=True, help="Close the kept connections (of these sites; of all without SITE).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def connections(site_names: tuple[str, ...], close: bool, as_json: bool) -> None:
    """SSH connections kept open between gpuhub commands, and closing them.

    The first gpuhub command that reaches a site over SSH leaves a small background process
    holding the connection (host key checked, logged in); later commands run through it and
    skip the SSH handshake. It ends after `connection.persist` seconds without a command
    (default 600; 0 in the site file, or GPUHUB_SSH_PERSIST=0 in the environment, keeps none),
    when the connection drops, or when a known_hosts file it was checked against changes.
    Only commands use it; `logs --follow` and file transfers connect directly.

    \b
    Examples:
      gpuhub connections
      gpuhub connections --json
      gpuhub connections --close jean-zay
      gpuhub connections --close
      GPUHUB_SSH_PERSIST=0 gpuhub status
    """
    from gpuhub.transport import keepers

    found = keepers.running()
    if site_names:
        found = [k for k in found if k["site"] in site_names]
    now = time.time()
    if close:
        closed = keepers.close(found)
        if as_json:
            emit_json({"closed": [_row(k, now) for k in closed]})
        else:
            click.echo(f"closed {len(closed)} kept connection(s)")
        return
    rows = [_row(k, now) for k in found]
    if as_json:
        emit_json({"connections": rows})
        return
    if not rows:
        click.echo("no kept connections")
        return
    click.echo(table(["site", "login", "via", "pid", "commands", "running", "idle", "closes in"], [
        [r["site"], r["target"], ",".join(r["jumps"]) or "-", r["pid"], r["commands"], r["running"],
         _age(r["idle_seconds"]), "closing" if r["closing"] else _age(r["persist"] - r["idle_seconds"])]
        for r in rows]))


def _row(keeper: dict[str, Any], now: float) -> dict[str, Any]:
    keys = ("site", "target", "jumps", "pid", "commands", "running", "persist", "closing", "socket")
    row = {k: keeper.get(k) for k in keys}
    row["jumps"] = list(row["jumps"] or [])
    row["idle_seconds"] = round(max(0.0, now - float(keeper.get("last_used") or now)), 1)
    row["started"] = keeper.get("started")
    return row
