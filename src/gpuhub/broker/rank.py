"""Order the candidate partitions of every site, with a reason for every row (pure).

Rows are compared on, in turn: can start now (enough idle GPUs of the right kind for the job's
shape); the scheduler's expected start; the preference order of the user or admin; queued demand
per GPU of the partition; the job's cost in normalised GPU hours (an A100 hour costs more of an
allocation than a V100 hour); GPUs free (headroom). A site whose allocation left cannot pay for the job is excluded.
The chosen row says which of these put it ahead of the runner-up.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import TYPE_CHECKING

from gpuhub.broker.live import PartitionLive
from gpuhub.plan import Allocation
from gpuhub.record import Factory, Record
from gpuhub.units import format_walltime

if TYPE_CHECKING:
    from gpuhub.broker.config import BrokerConfig


class Row(Record, frozen=False):
    allocation: Allocation
    live: PartitionLive | None  # None: planned from the site file alone (--offline, or no probe)
    cost: float  # normalised GPU hours the job can use up
    factor: float  # GPU-hour weight of the partition's GPU model
    preference: int | None
    allocation_left: float | None
    reasons: list[str] = Factory(list)
    chosen: bool = False

    @property
    def site(self) -> str:
        return self.allocation.site.name

    @property
    def key(self) -> tuple:
        live = self.live
        tier = 0 if live and live.fits_now else (1 if live else 2)
        start = live.start.timestamp() if live and live.start else math.inf
        pref = self.preference if self.preference is not None else math.inf
        pressure = (live.queued / live.total) if live and live.total else math.inf if live else 0.0
        free = -live.free if live else 0
        a = self.allocation
        default = 0 if a.partition_key == a.site.partition_key() else 1  # on a tie, the site's usual partition
        return (tier, start if tier else 0.0, pref, pressure, self.cost, free, self.site, default, a.partition_key)

    def to_json(self) -> dict[str, object]:
        a, live = self.allocation, self.live
        return {
            "site": self.site,
            "partition_key": a.partition_key,
            "partition": a.partition.partition,
            "gpu_model": a.gpu_model,
            "gpus": a.gpus,
            "nodes": a.nodes,
            "walltime": format_walltime(a.walltime),
            "account": a.account,
            "qos": a.qos,
            "free_now": live.free if live else None,
            "total": live.total if live else None,
            "queued": live.queued if live else None,
            "fits_now": live.fits_now if live else None,
            "expected_start": live.start.isoformat() if live and live.start else None,
            "normalised_gpu_hours": round(self.cost, 3),
            "preference": self.preference,
            "allocation_left": self.allocation_left,
            "chosen": self.chosen,
            "reasons": self.reasons,
        }


def gpu_factor(alloc: Allocation, config: BrokerConfig) -> float:
    model = alloc.gpu_model or ""
    return alloc.site.accounting.normalization.get(model) or config.normalization.get(model) or 1.0


def charged_gpus(alloc: Allocation) -> int:
    """GPUs the site charges: whole nodes on an exclusive partition."""
    if alloc.partition.exclusive and alloc.partition.gpus_per_node:
        return alloc.nodes * alloc.partition.gpus_per_node
    return alloc.gpus


def make_row(alloc: Allocation, live: PartitionLive | None, config: BrokerConfig) -> Row:
    factor = gpu_factor(alloc, config)
    cost = charged_gpus(alloc) * alloc.walltime / 3600 * factor
    row = Row(
        allocation=alloc,
        live=live,
        cost=cost,
        factor=factor,
        preference=config.preference(alloc.site.name),
        allocation_left=config.allocations.get(alloc.site.name),
    )
    model = alloc.gpu_model or "GPU"
    if live is None:
        row.reasons.append("no live state: planned from the site file")
    else:
        shape = f"{alloc.nodes} node(s) x {alloc.gpus_per_node}" if alloc.nodes > 1 else f"{alloc.gpus}"
        if live.fits_now:
            row.reasons.append(f"{live.free}/{live.total} {model} free: {shape} can start now")
        else:
            row.reasons.append(f"{live.free}/{live.total} {model} free: not enough for {shape} now")
        if live.queued:
            row.reasons.append(f"{live.queued} GPU(s) queued ahead")
        if live.start and not live.fits_now:
            row.reasons.append(f"expected start {live.start:%Y-%m-%d %H:%M} ({live.start_note or 'scheduler'})")
        elif live.start_note and not live.fits_now and not live.start:
            row.reasons.append(live.start_note)
    row.reasons.append(f"{cost:.1f} normalised GPU-h ({charged_gpus(alloc)} x {format_walltime(alloc.walltime)}"
                       f" x {factor:g} for {model})")
    if row.preference is not None:
        row.reasons.append(f"preference #{row.preference + 1}")
    return row


def over_allocation(row: Row) -> str | None:
    left = row.allocation_left
    if left is not None and row.cost > left:
        return f"needs {row.cost:.1f} normalised GPU-h, {left:g} left in the allocation"
    return None


_WHY = (
    "it can start now, {other} cannot",
    "it is expected to start earlier than {other}",
    "it comes before {other} in the preference order",
    "less queued demand per GPU than {other}",
    "it costs fewer normalised GPU hours than {other}",
    "more GPUs free than {other}",
)


def rank(rows: list[Row]) -> list[Row]:
    """Rows best first; the first is marked chosen with the reason it beat the runner-up."""
    ordered = sorted(rows, key=lambda r: r.key)
    for row in ordered:
        row.chosen = False
    if ordered:
        best = ordered[0]
        best.chosen = True
        runner = next((r for r in ordered[1:] if r.site != best.site), ordered[1] if len(ordered) > 1 else None)
        if runner is None:
            best.reasons.insert(0, "chosen: the only candidate")
        else:
            other = f"{runner.site}/{runner.allocation.partition_key}"
            why = "same rank as {other}; first by name"
            for i, (mine, theirs) in enumerate(zip(best.key[:6], runner.key[:6], strict=True)):
                if mine != theirs:
                    why = _WHY[i]
                    break
            best.reasons.insert(0, "chosen: " + why.format(other=other))
    return ordered


def when(start: datetime | None) -> str:
    return start.strftime("%m-%d %H:%M") if start else "-"
