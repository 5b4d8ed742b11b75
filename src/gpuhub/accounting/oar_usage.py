"""OAR usage collection: ``oarstat -fJ --sql`` over the window, in chunks, plus one ``oarnodes -J``.

OAR's own accounting table is filled by ``oaraccounting`` (root, cron) in resource-seconds and
windows, not per job and GPU; ``oarstat`` has every job with its start, stop and assigned
resources, and each resource's ``gpu`` property says which GPU it belongs to. So a run's GPUs are
the distinct ``gpu`` values of its resources, and its GPU-seconds those GPUs x (stop - start).
Every user's jobs are visible to ``oarstat``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone

from gpuhub.accounting.collect import Outcome, Progress
from gpuhub.accounting.records import UsageRow, from_epoch, to_epoch
from gpuhub.accounting.store import UsageStore
from gpuhub.backends.oar_parse import OarJob, Resource, job_gpus, parse_oarnodes, parse_oarstat
from gpuhub.site import Site

OARSTAT_TIMEOUT = 600.0


def window_sql(lo: int, hi: int) -> str:
    """Jobs that started before ``hi`` and had not stopped before ``lo`` (or still run)."""
    return f"start_time > 0 AND start_time < {int(hi)} AND (stop_time = 0 OR stop_time >= {int(lo)})"


def usage_rows(cluster: str, jobs: dict[str, OarJob], resources: dict[int, Resource], now: int) -> Iterator[UsageRow]:
    """Runs that held GPUs, as usage rows; a job still running is provisional (no end)."""
    for job in jobs.values():
        gpus = job_gpus(job, resources)
        if job.start is None or not gpus:
            continue
        finished = job.state in ("Terminated", "Error")
        stop = job.stop if finished and job.stop else None
        models = sorted({(resources[r].model or "").lower() for r in job.resources
                         if r in resources and resources[r].gpu in gpus} - {""})
        array = job.in_array or job.array_index > 1
        yield UsageRow(
            cluster=cluster,
            job_id=job.job_id,
            job_ref=f"{job.array_id}_{job.array_index}" if array else None,
            submit=from_epoch(job.submitted or job.start),
            start=from_epoch(job.start),
            end=from_epoch(stop) if stop else None,
            wall_seconds=max(0, (stop or now) - job.start),
            nnodes=len(job.hosts),
            ncpus=len(job.resources),
            user=job.owner,
            account=job.project,
            partition=job.queue,
            qos="",
            state=job.status.state.value.upper() if finished else "RUNNING",
            gpu_tres="oar:gpu=" + ",".join(gpus),
            gpus=float(len(gpus)),
            gpu_model="+".join(models),
        )


def collect_oar(
    store: UsageStore, site: Site, start: str, end: str, chunk: int, out: Outcome, progress: Progress
) -> None:
    from gpuhub.transport import transport_for

    transport = transport_for(site)
    props = site.oar
    resources = parse_oarnodes(transport.run(["oarnodes", "-J"], timeout=OARSTAT_TIMEOUT).stdout,
                               props.gpu_property, props.model_property)
    now = int(datetime.now(timezone.utc).timestamp())
    t0, t_end = to_epoch(start), to_epoch(end)
    while t0 < t_end:
        t1 = min(t_end, t0 + chunk)
        argv = ["oarstat", "-fJ", "--sql", window_sql(t0, t1)]
        jobs = parse_oarstat(transport.run(argv, timeout=OARSTAT_TIMEOUT).stdout)
        rows = list(usage_rows(site.name, jobs, resources, now))
        got = store.ingest(site.name, rows)
        store.set_watermark(site.name, from_epoch(t1))
        out.result.add(got)
        progress(f"{site.name}: {from_epoch(t0)} .. {from_epoch(t1)}  {len(rows)} GPU runs "
                 f"({got.new} new, {got.updated} updated, {got.provisional} running)")
        t0 = t1
    out.scope = "all users"
