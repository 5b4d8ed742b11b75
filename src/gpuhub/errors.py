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


class NoFreeGpus(GpuhubError):
    """A lab server refused a job for want of free GPUs; nothing runs. The message lists, one per
    line, who holds which GPU, so it is kept whole."""


SHOWN_CHARS = 80


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` for an error message, cut to about ``limit`` characters.

    Values in messages come from users and site files: a 5000-character option or a YAML alias
    bomb must not turn one error line into megabytes. Containers are not walked past the limit.
    """
    if isinstance(value, str | bytes | int | float | bool) or value is None:
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
            return f"<a {len(str(abs(value))) if value.bit_length() < 14000 else 'huge'}-digit number>"
        text = repr(value[: limit + 1] if isinstance(value, str | bytes) else value)
    elif isinstance(value, list | tuple | dict | set):
        text = f"<{type(value).__name__} of {len(value)} items>"
    else:
        text = f"<{type(value).__name__}>"
    if len(text) > limit or (isinstance(value, str | bytes) and len(value) > limit):
        size = f"{len(value)} chars" if isinstance(value, str | bytes) else "cut"
        return text[: limit - 1] + f"…({size})"
    return text
