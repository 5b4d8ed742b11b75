"""Option types that refuse what no command can use: non-finite or unbounded numbers, malformed job ids."""

from __future__ import annotations

import math
import re
from typing import Any

import click

from gpuhub.errors import shown
from gpuhub.limits import MAX_JOB_ID

JOB_REF_HELP = "a gpuhub id (42), SITE:SCHEDULER_ID (jean-zay:123456) or last"
_SITE_REF = r"[a-z0-9][a-z0-9_-]{0,63}:[A-Za-z0-9_.+-]{1,64}"  # compiled on first use: job commands only


def check_job_ref(text: str) -> str:
    """``text`` if it can name a job at all; ValueError saying what a job reference looks like."""
    if text == "last" or re.fullmatch(_SITE_REF, text, re.ASCII):
        return text
    if text.isascii() and text.isdigit():
        if len(text) <= 19 and 1 <= int(text) <= MAX_JOB_ID:
            return text
        raise ValueError(f"{shown(text)} is not a gpuhub job id: ids go from 1 to {MAX_JOB_ID}")
    raise ValueError(f"{shown(text)} does not name a job; give {JOB_REF_HELP}")


class JobRef(click.ParamType):
    name = "JOB"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return check_job_ref(str(value).strip())
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class BoundedFloat(click.ParamType):
    """A finite number between ``low`` and ``high`` (click's FloatRange lets ``nan`` through)."""

    name = "SECONDS"

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{shown(value)} is not a number; give {self.low:g} to {self.high:g}", param, ctx)
        if not math.isfinite(number) or not self.low <= number <= self.high:
            self.fail(f"{shown(value)} is out of range; give a number from {self.low:g} to {self.high:g}", param, ctx)
        return number
