"""Pure parsers of HTCondor command output (``condor_submit -terse``, ``condor_q/condor_history -json``).

Facts from the HTCondor manual and sources that these parsers rely on:

* ``condor_submit -terse`` prints ``C.P - C.P`` (first and last job id), one line per cluster.
* ``-json`` prints ``[``, the ads separated by ``,``, then ``]``; when nothing matches it prints
  nothing at all (not ``[]``).
* Attribute names are case-insensitive (``RequestGPUs`` is ``RequestGpus``).
* An attribute whose value is an expression, not a literal, is written ``"\\/Expr(...)\\/"``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from gpuhub.errors import GpuhubError
from gpuhub.states import JobStatus, State

_TERSE = re.compile(r"^\s*(\d+)\.(\d+)\s*-\s*(\d+)\.(\d+)\s*$")
_EXPR = re.compile(r"^/Expr\((.*)\)/$", re.S)
_TOKEN = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")

# JobStatus codes ("Job ClassAd attributes" in the manual).
UNEXPANDED, IDLE, RUNNING, REMOVED, COMPLETED, HELD, TRANSFERRING_OUTPUT, SUSPENDED = range(8)
JOB_DURATION_EXCEEDED = 46  # HoldReasonCode when allowed_job_duration is over


class Ad(Mapping[str, Any]):
    """A job ad read from JSON: case-insensitive names; expressions kept as :class:`Expr`."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = {k.lower(): _value(v) for k, v in data.items()}

    def __getitem__(self, key: str) -> Any:
        return self._data[key.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def number(self, key: str) -> float | None:
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value)

    def text(self, key: str) -> str | None:
        value = self.get(key)
        return value if isinstance(value, str) else None


class Expr(str):
    """An unevaluated ClassAd expression (its text)."""

    __slots__ = ()


def _value(value: Any) -> Any:
    if isinstance(value, str):
        match = _EXPR.match(value)
        if match:
            return Expr(match.group(1))
    return value


def parse_terse(stdout: str) -> str:
    """``condor_submit -terse`` -> the cluster id; gpuhub submits one cluster per job."""
    clusters = []
    for line in stdout.splitlines():
        match = _TERSE.match(line)
        if match:
            clusters.append(match.group(1))
    if len(clusters) != 1:
        shown = stdout.strip()[:200] or "nothing"
        raise GpuhubError(f"condor_submit -terse answered {shown!r}, not one 'C.P - C.P' line")
    return clusters[0]


def parse_ads(stdout: str) -> list[Ad]:
    """``-json`` output -> ads; empty output (nothing matched) -> []."""
    text = stdout.strip()
    if not text:
        return []
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise GpuhubError(f"HTCondor printed JSON that does not parse ({exc}): {text[:120]!r}") from None
    if not isinstance(data, list) or not all(isinstance(ad, dict) for ad in data):
        raise GpuhubError(f"HTCondor printed {type(data).__name__} where a list of ads was expected")
    return [Ad(ad) for ad in data]


def job_status(ad: Ad) -> JobStatus:
    """One proc's ad -> a gpuhub status; held jobs say why."""
    code = int(ad.number("JobStatus") or 0)
    start = ad.number("JobStartDate") or ad.number("JobCurrentStartDate")
    end = ad.number("CompletionDate") or None
    host = ad.text("RemoteHost") or ad.text("LastRemoteHost")
    node = host.rsplit("@", 1)[-1] if host else None
    exit_code = ad.number("ExitCode")
    by_signal = ad.get("ExitBySignal") is True
    if code == COMPLETED:
        failed = by_signal or (exit_code or 0) != 0
        why = f"killed by signal {int(ad.number('ExitSignal') or 0)}" if by_signal else (
            f"exit code {int(exit_code or 0)}" if failed else None)
        return JobStatus(State.FAILED if failed else State.COMPLETED, why, node,
                         str(int(exit_code)) if exit_code is not None else None, start,
                         end or ad.number("EnteredCurrentStatus"))
    if code == REMOVED:
        reason = ad.text("RemoveReason")
        return JobStatus(State.CANCELLED, f"removed: {reason}" if reason else "removed", node, None, start,
                         ad.number("EnteredCurrentStatus"))
    if code == HELD:
        reason = ad.text("HoldReason") or "no reason given"
        return JobStatus(State.PENDING, f"held: {reason}", node, None, start)
    if code in (RUNNING, TRANSFERRING_OUTPUT):
        return JobStatus(State.RUNNING, None if code == RUNNING else "transferring output", node, None, start)
    if code == SUSPENDED:
        return JobStatus(State.RUNNING, "suspended", node, None, start)
    if code in (IDLE, UNEXPANDED):
        return JobStatus(State.PENDING, "idle", None, None, None)
    return JobStatus(State.UNKNOWN, f"JobStatus {code}")


def token_constraint(tokens: list[str]) -> str:
    """``GpuhubToken =?= "a" || ...``: ``=?=`` so an ad without the attribute never matches."""
    for token in tokens:
        if not _TOKEN.fullmatch(token):
            raise GpuhubError(f"{token!r} is not a submission token")
    return " || ".join(f'GpuhubToken =?= "{t}"' for t in tokens)
