"""Printing helpers shared by commands: JSON for scripts, aligned tables for people."""

from __future__ import annotations

import sys
from typing import Any

import click

from gpuhub.text import printable, table

__all__ = ["complete_site", "emit_json", "note", "printable", "table"]


def emit_json(data: Any) -> None:
    import json  # only --json needs it: a table starts without the JSON codec

    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def note(message: str) -> None:
    """A remark for the person at the terminal, kept off stdout so pipes stay clean."""
    text = "\n".join(printable(line) for line in message.split("\n"))
    click.echo(text, err=True, color=sys.stderr.isatty())


def complete_site(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion of site names: file names only, nothing is parsed."""
    from gpuhub.registry import site_names

    return [name for name in site_names() if name.startswith(incomplete)]
