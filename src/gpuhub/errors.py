"""Domain errors.

They subclass ``click.ClickException`` so the CLI prints one line and exits with the
right code without a try/except in every command; library users simply catch them.
Exit code 2 means "your input or configuration is wrong", 1 means "it failed".
"""

from __future__ import annotations

import click


class GpuhubError(click.ClickException):
    exit_code = 1


class ConfigError(GpuhubError):
    """A site file is malformed, unknown or inconsistent."""

    exit_code = 2


class RequestError(GpuhubError):
    """A job request cannot be satisfied by the site (or is malformed)."""

    exit_code = 2
