"""``gpuhub sites ...``: what sites exist, what one looks like, whether files are right."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from gpuhub import registry
from gpuhub.cli.output import complete_site, emit_json, note, printable, table
from gpuhub.errors import ConfigError

if TYPE_CHECKING:
    from gpuhub.site import Site


@click.group()
def sites() -> None:
    """List, show, validate and describe site configurations.

    \b
    Site files are looked up in layers (lowest first): shipped site_configs/,
    the system dir, your user dir, then the directories in $GPUHUB_SITES.
    A file in a higher layer with the same name overrides single fields.
    """


def _add_check() -> None:
    from gpuhub.cli.sites_check import check_cmd

    sites.add_command(check_cmd)


_add_check()


def _load_all() -> tuple[list[tuple[dict, list[registry.SiteSource]]], list[ConfigError]]:
    """(summary, files) of every valid site and the error of every invalid one, from the site cache."""
    good, bad = [], []
    for entry in registry.validated().values():
        if entry.error is not None:
            bad.append(registry.entry_error(entry))
        else:
            good.append((entry.summary, [registry.SiteSource(layer, Path(path), {}) for layer, path in entry.sources]))
    return good, bad


@sites.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(as_json: bool) -> None:
    """List every configured site.

    \b
    Examples:
      gpuhub sites list
      gpuhub sites list --json | jq -r '.[].name'
    """
    good, bad = _load_all()
    if as_json:
        emit_json([{**s, "files": [{"layer": src.layer, "path": str(src.path)} for src in srcs]} for s, srcs in good])
    else:
        rows = [
            (s["name"], s["scheduler"], s["host"] or "-", ",".join(s["gpu_models"]) or "-", _layers(srcs),
             s["description"])
            for s, srcs in good
        ]
        click.echo(table(["site", "scheduler", "host", "gpus", "from", "description"], rows))
    for exc in bad:
        note(f"gpuhub: invalid site file: {exc.message}")
    if bad:
        sys.exit(2)


def _layers(sources: list[registry.SiteSource]) -> str:
    return "+".join(dict.fromkeys(src.layer for src in sources))


@sites.command("show")
@click.argument("site", shell_complete=complete_site)
@click.option("--json", "as_json", is_flag=True,
              help="The merged site as JSON, in the site file format (the files it came from: `sites list --json`).")
def show_cmd(site: str, as_json: bool) -> None:
    """Show one site as gpuhub sees it, after every override, with unverified values marked.

    \b
    Examples:
      gpuhub sites show jean-zay
      gpuhub sites show jean-zay --json
    """
    entry = registry.site_entry(site)  # kept by the site cache: showing a site loads no model
    if as_json:
        # Exactly a site file (valid against `gpuhub sites schema`); `sites list --json` names the files.
        emit_json(entry.views["json"])
        return
    # A site file is data from elsewhere: its text must not drive the terminal.
    click.echo("\n".join(printable(line) for line in entry.views["text"].split("\n")))


@sites.command("validate")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
def validate_cmd(paths: tuple[Path, ...]) -> None:
    """Check site files; with no PATH, every configured site.

    A file named like a site of a lower layer is checked as the override it is,
    merged over that site. Exit code 2 if any file is invalid.

    \b
    Examples:
      gpuhub sites validate
      gpuhub sites validate my-cluster.yaml ~/.config/gpuhub/sites/
    """
    errors = 0
    checked = 0
    if not paths:
        good, bad = _load_all()
        for site, srcs in good:
            click.echo(f"ok  {site['name']}  ({', '.join(str(s.path) for s in srcs)})")
        for exc in bad:
            for line in _problems(exc):
                click.echo(f"gpuhub: {line}", err=True)
        checked, errors = len(good) + len(bad), len(bad)
    for path in _expand(paths):
        checked += 1
        try:
            site = _validate_path(path)
            click.echo(f"ok  {site.name}  ({path})")
        except ConfigError as exc:
            errors += 1
            for line in _problems(exc):
                click.echo(f"gpuhub: {line}", err=True)
    if checked == 0:
        raise click.UsageError("no site files found to validate")
    if errors:
        sys.exit(2)


def _problems(exc: ConfigError, most: int = 50) -> list[str]:
    problems = getattr(exc, "problems", None) or [exc.message]
    more = len(problems) - most
    return problems[:most] + ([f"... and {more} more"] if more > 0 else [])


def _expand(paths: tuple[Path, ...]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(p for p in sorted(path.iterdir()) if p.suffix in registry.SUFFIXES)
        elif not path.exists():
            raise click.BadParameter(f"{path}: no such file or directory", param_hint="PATH")
        else:
            out.append(path)
    return out


def _validate_path(path: Path) -> Site:
    resolved = path.resolve()
    lower = [s for s in registry.site_sources(path.stem) if s.path.resolve() != resolved]
    here = registry.SiteSource("file", path, registry.read_yaml(path))
    # Only layers below this file count (a file being checked must not be masked by higher ones).
    order = [layer.path.resolve() for layer in registry.layers()]
    if resolved.parent in order:
        rank = order.index(resolved.parent)
        lower = [s for s in lower if s.path.resolve().parent in order[:rank]]
    elif "scheduler" in here.data:
        lower = []  # a standalone, complete site file
    return registry.build_site(path.stem, [*lower, here])


@sites.command("schema")
def schema_cmd() -> None:
    """Print the JSON Schema of a site file, for editors.

    \b
    Example (VS Code / any yaml-language-server editor):
      gpuhub sites schema > ~/.config/gpuhub/site.schema.json
      # then, first line of a site file:
      # yaml-language-server: $schema=~/.config/gpuhub/site.schema.json
    """
    from gpuhub.site import Site

    schema = _without_required(Site.model_json_schema())
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "gpuhub site configuration"
    schema["description"] = (
        "A site file, or an override layered over one (only the keys that change). Required keys are "
        "checked on the merged site by `gpuhub sites validate`, not here."
    )
    click.echo(json.dumps(schema, indent=2))


def _without_required(node: object) -> object:
    """The schema with no key required: any file may be an override holding a single key."""
    if isinstance(node, dict):
        # `required` as a keyword is a list; Account's `required` property is a mapping and stays.
        return {k: _without_required(v) for k, v in node.items() if not (k == "required" and isinstance(v, list))}
    if isinstance(node, list):
        return [_without_required(v) for v in node]
    return node


@sites.command("trust")
@click.argument("site", shell_complete=complete_site)
@click.option("--yes", "-y", is_flag=True, help="Do not ask before adding the key (a mismatch is still refused).")
@click.option(
    "--known-hosts",
    "known_hosts",
    type=click.Path(dir_okay=False, path_type=Path),
    help="known_hosts file to add the key to (default: gpuhub's own, in its config directory).",
)
def trust_cmd(site: str, yes: bool, known_hosts: Path | None) -> None:
    """Check a site's SSH host key and add it to known_hosts.

    Connects to the site (through its jump host, if any) without logging in, shows the key
    the server offers and compares its SHA256 fingerprint with the one the site file
    publishes (connection.host_key_fingerprints). A mismatch is refused (exit 2). A key
    that is already known is left alone. gpuhub never accepts an unknown host key on its
    own: run this once per site, or add the key to ~/.ssh/known_hosts yourself.

    \b
    Examples:
      gpuhub sites trust jean-zay
      gpuhub sites trust my-cluster --yes
      gpuhub sites trust my-cluster --known-hosts ~/.ssh/known_hosts
    """
    from gpuhub.transport import ssh

    obj = registry.load_site(site)
    if obj.connection is None:
        raise click.UsageError(f"site {site} runs on this machine: it has no SSH host key")
    target = known_hosts.expanduser() if known_hosts else ssh.gpuhub_known_hosts()

    def decide(scan: ssh.HostKeyScan) -> bool:
        click.echo(f"{scan.role}: {scan.endpoint.key_name} offers {scan.key.key_type} {scan.key.fingerprint}")
        if scan.known_in is not None:
            click.echo(f"  already trusted ({scan.known_in.where}); nothing changed")
            if scan.matches_published is False:
                note(f"  warning: the site file publishes {scan.published} for this key type; check with the site")
            return True
        click.echo(f"  {ssh.judge(scan, site)}")
        if not yes and not click.confirm(f"  add it to {target}?", default=False):
            raise click.ClickException("not trusted; nothing written")
        ssh.append_known_host(target, scan.endpoint.key_name, scan.key)
        click.echo(f"  added to {target}")
        return True

    ssh.scan_host_keys(site, obj.connection, decide, extra_known_hosts=(target,))
    endpoint, _ = ssh.resolve(obj.connection)
    if target not in endpoint.known_hosts_files:
        read = ", ".join(map(str, endpoint.known_hosts_files))
        note(f"note: connections to {site} do not read {target}; they read {read}")
