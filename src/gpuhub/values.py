"""Checks of single values, shared by the pydantic models and the code that must not import them.

Each raises ``ValueError`` with the message a user sees; the models wrap them as validators, and
the fast request path (:mod:`gpuhub.requestdata`) calls the very same functions.
"""

from __future__ import annotations

import re

from gpuhub.errors import shown

# A token that goes verbatim into a scheduler directive: no blanks, quotes or shell metacharacters.
TOKEN_RE = re.compile(r"^[A-Za-z0-9_.@:+%,=/-]+$")
TOKEN_HELP = "letters, digits and _ . @ : + % , = / - (no spaces or quotes)"
ENV_NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_]*"  # compiled on first use: few commands set variables


def check_token(value: str) -> str:
    if not isinstance(value, str) or not TOKEN_RE.fullmatch(value):
        raise ValueError(f"{shown(value)} is not allowed here; use {TOKEN_HELP}")
    return value


def check_directive(value: str) -> str:
    # Whether it must look like an option (Slurm) or a submit line (HTCondor) is checked
    # per scheduler, in the backend that writes it.
    if not isinstance(value, str):
        raise ValueError("a directive is a string such as '--hint=nomultithread'")
    if not value.strip() or value != value.strip() or any(c in value for c in "\n\r\0"):
        raise ValueError(f"directive {shown(value)} must be one non-empty line with no surrounding blanks")
    return value


def check_shell_line(value: str) -> str:
    if not isinstance(value, str) or "\0" in value:
        raise ValueError("a setup line is a string of shell code without NUL bytes")
    return value


def check_env(value: dict[str, str]) -> dict[str, str]:
    for key, val in value.items():
        if not re.fullmatch(ENV_NAME_PATTERN, key):
            raise ValueError(f"environment variable name {shown(key)} is invalid; use [A-Za-z_][A-Za-z0-9_]*")
        if not isinstance(val, str) or "\0" in val:
            raise ValueError(f"environment variable {key}: value must be a string without NUL bytes")
    return value
