"""The lab-server part of ``gpuhub gpus``: every GPU of every host, who holds it, the queues."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import click

from gpuhub.cli.output import table


def is_lab(site: Any) -> bool:
    """Whether the site's GPUs are shared by gpuhub's own locks (a lab server)."""
    from gpuhub.backends import backend_for

    return backend_for(site.scheduler).capabilities.gpu_locks


def job_namer() -> Callable[[str], str]:
    """A lock's job -> the gpuhub id this user knows it by, else its token. The ledger is opened
    at the first lock named (GPUs nobody holds need none), once for every probe thread."""
    opened: list[Any] = []
    lock = threading.Lock()

    def ledger() -> Any:
        with lock:
            if not opened:
                from gpuhub.ledger import Ledger

                try:
                    opened.append(Ledger(mode="read"))
                except Exception:  # no ledger to read: tokens it is
                    opened.append(None)
            return opened[0]

    def name(lock_token: str) -> str:
        token = lock_token.partition(".")[0]  # a pool's job directories are TOKEN.HOST
        found = ledger()
        record = found.by_token(token) if found is not None else None
        return str(record.id) if record is not None else token

    return name


def probe(site: Any, timeout: float, job_of: Callable[[str], str]) -> dict[str, Any]:
    """One probe of every host of a lab site: per-GPU rows, queue rows, the exporter-style
    reading, the hosts that did not answer, and the hosts' clock."""
    from gpuhub.backends import backend_for
    from gpuhub.backends.lab.backend import pool, reading

    backend = backend_for(site.scheduler)
    probes = backend.probe_all(site, pool(site), timeout)  # type: ignore[attr-defined]
    from gpuhub.backends.lab import ops, report  # loaded once the hosts answered
    from gpuhub.backends.lab.discovery import Probe

    limits = ops.thresholds(site.lab)
    out: dict[str, Any] = {"gpus": [], "queue": [], "unreachable": [], "now": None,
                           "reading": reading(site, probes)}
    for host, got in probes.items():
        if isinstance(got, Probe):
            out["gpus"] += report.gpu_rows(site.name, got, limits, job_of)
            out["queue"] += report.queue_rows(site.name, got, job_of)
            out["now"] = got.now
        else:
            reason = " ".join((getattr(got, "message", None) or str(got) or type(got).__name__).split())
            out["unreachable"].append({"site": site.name, "host": host, "reason": reason})
    return out


def print_tables(gpus: list[dict[str, Any]], queue: list[dict[str, Any]], now: dict[str, int | None]) -> None:
    from gpuhub.backends.lab.report import age

    blocks = []
    if gpus:
        rows = [
            (r["site"], r["host"], r["gpu"], r["model"], r["state"], r["user"] or "", r["job"] or "",
             age(r["since"], now.get(r["site"])) if r["since"] else "",
             f"{r['memory_used_mib']}/{r['memory_total_mib']} MiB" if r["memory_total_mib"] is not None else "")
            for r in gpus
        ]
        blocks.append(table(["site", "host", "gpu", "model", "state", "user", "job", "for", "memory"], rows))
    if queue:
        rows = [
            (r["site"], r["host"], r["position"], r["user"], r["job"], r["gpus"], age(r["since"], now.get(r["site"])))
            for r in queue
        ]
        blocks.append(table(["site", "host", "queued", "user", "job", "gpus", "waiting"], rows))
    if blocks:
        click.echo("\n\n".join(blocks))
