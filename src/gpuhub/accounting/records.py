"""What one job run is, for accounting, and the time rules shared by collectors and reports.

Times are UTC text ``YYYY-MM-DDTHH:MM:SS`` everywhere (the form ``TZ=UTC sacct`` prints): it sorts
as text, reads the same in SQLite and PostgreSQL, and its first 7 characters are the month.
"""

from __future__ import annotations

import calendar
import re
from datetime import datetime, timezone
from typing import NamedTuple

_ISO_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$")


class UsageRow(NamedTuple):
    """One run of one job (a requeued job has one row per run), as a collector found it."""

    cluster: str
    job_id: str  # unique per cluster: Slurm JobIDRaw, the gpuhub token for local/lab-server jobs
    job_ref: str | None  # how people name it when that differs from job_id (array task 10_3)
    submit: str
    start: str
    end: str | None  # None while the job runs: the row is provisional
    wall_seconds: int  # elapsed, suspended time excluded (Slurm ElapsedRaw)
    nnodes: int
    ncpus: int
    user: str
    account: str
    partition: str
    qos: str
    state: str
    gpu_tres: str  # the GPU entries of AllocTRES the count came from (audit trail)
    gpus: float
    gpu_model: str


def project_of(account: str) -> str:
    """The project an account charges: the account without its ``@...`` suffix.

    Jean Zay writes accounts as ``PROJECT@GPUFAMILY`` (``abc@a100``, ``abc@v100``): both are
    project ``abc``. Accounts without ``@`` are their own project; no account is no project ("").
    """
    return account.split("@", 1)[0].strip()


def is_iso(text: str) -> bool:
    return bool(_ISO_RE.match(text))


def to_epoch(text: str) -> int:
    """``2026-01-31T23:00:00`` (UTC) -> seconds since the epoch."""
    return calendar.timegm(datetime.fromisoformat(text).timetuple())


def from_epoch(seconds: float) -> str:
    return datetime.fromtimestamp(int(seconds), timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def now_iso() -> str:
    return from_epoch(datetime.now(timezone.utc).timestamp())


def next_month(month: str) -> str:
    """``2026-12`` -> ``2027-01``."""
    year, mon = int(month[:4]), int(month[5:7])
    return f"{year + mon // 12:04d}-{mon % 12 + 1:02d}"


def month_start(month: str) -> str:
    return f"{month}-01T00:00:00"


def effective_end(start: str, end: str | None, wall_seconds: int) -> str:
    """Where a run stops counting: its end, or start + elapsed while it still runs."""
    if end is not None:
        return end
    return from_epoch(to_epoch(start) + wall_seconds)


def month_shares(start: str, end: str, total: int) -> list[tuple[str, int]]:
    """Spread ``total`` (GPU-seconds) over the months ``[start, end]`` covers, pro rata of time.

    Shares are whole seconds adding up exactly to ``total`` (largest remainder), so sums kept at
    ingest never drift. A run of zero length counts entirely in its start month.
    """
    if start[:7] == end[:7]:
        return [(start[:7], total)]
    pieces = _month_pieces(to_epoch(start), to_epoch(end))
    span = sum(length for _, length in pieces)
    if span <= 0:
        return [(start[:7], total)]
    exact = [(month, total * length / span) for month, length in pieces]
    floors = [(month, int(value)) for month, value in exact]
    left = total - sum(value for _, value in floors)
    order = sorted(range(len(exact)), key=lambda i: exact[i][1] - floors[i][1], reverse=True)
    bumped = set(order[:left])
    return [(month, value + (1 if i in bumped else 0)) for i, (month, value) in enumerate(floors)]


def window_shares(start: str, end: str, total: float, lo: str, hi: str) -> list[tuple[str, float]]:
    """The part of ``total`` that falls inside ``[lo, hi)``, by month, pro rata of time."""
    t0, t1 = to_epoch(start), to_epoch(end)
    if t1 <= t0:
        return [(start[:7], float(total))] if lo <= start < hi else []
    c0, c1 = max(t0, to_epoch(lo)), min(t1, to_epoch(hi))
    if c1 <= c0:
        return []
    return [(month, total * length / (t1 - t0)) for month, length in _month_pieces(c0, c1) if length > 0]


def _month_pieces(t0: int, t1: int) -> list[tuple[str, int]]:
    """``[t0, t1]`` cut at month boundaries: (month, seconds in it)."""
    pieces = []
    month = from_epoch(t0)[:7]
    while True:
        m1 = min(t1, to_epoch(month_start(next_month(month))))
        pieces.append((month, m1 - max(t0, to_epoch(month_start(month)))))
        if m1 >= t1:
            return pieces
        month = next_month(month)
