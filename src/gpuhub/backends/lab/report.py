"""Rows for ``gpuhub gpus`` on lab servers: every GPU of every host, and who holds it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gpuhub.backends.lab.discovery import Probe, Thresholds
from gpuhub.units import format_walltime


def gpu_rows(site: str, probe: Probe, limits: Thresholds, job_of: Callable[[str], str]) -> list[dict[str, Any]]:
    """One row per GPU: state free/held/foreign/reserved/unavailable, holder user, job, since."""
    rows = []
    for s in probe.classify(limits):
        user = job = since = None
        if s.holder is not None:
            user, job, since = s.holder.user, job_of(s.holder.token), s.holder.since
        elif s.state == "foreign" and s.apps:
            user = ",".join(sorted({a.user or "?" for a in s.apps}))
            job = "pid " + ",".join(str(a.pid) for a in s.apps)
        rows.append({
            "site": site, "host": probe.host, "gpu": s.gpu.index, "uuid": s.gpu.uuid, "model": s.gpu.name,
            "state": s.state, "user": user, "job": job, "since": since,
            "memory_used_mib": s.gpu.memory_used, "memory_total_mib": s.gpu.memory_total,
            "utilization": s.gpu.utilization,
        })
    return rows


def queue_rows(site: str, probe: Probe, job_of: Callable[[str], str]) -> list[dict[str, Any]]:
    return [
        {"site": site, "host": probe.host, "position": n, "user": e.user, "job": job_of(e.token), "gpus": e.need,
         "since": e.since}
        for n, e in enumerate(probe.waiting(), 1)
    ]


def age(since: int | None, now: int | None) -> str:
    if since is None or now is None:
        return "-"
    return format_walltime(max(0, now - since))
