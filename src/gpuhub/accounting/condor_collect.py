"""HTCondor usage collection: ``condor_history`` for jobs that left the queue in the window, and
``condor_q -allusers`` for GPU jobs still running (stored as provisional, finalised later).

One row per job (a gpuhub job id ``C.P``): ``RemoteWallClockTime`` is the wall time the job held
its slot over all its runs, ``GpusProvisioned`` (else ``RequestGPUs``) its GPUs. Collecting the same
window again changes nothing, as with sacct.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from gpuhub.accounting.collect import Outcome, Progress
from gpuhub.accounting.records import UsageRow, from_epoch, to_epoch
from gpuhub.accounting.store import UsageStore
from gpuhub.backends.htcondor_parse import COMPLETED, REMOVED, Ad, parse_ads
from gpuhub.site import Site

HISTORY_TIMEOUT = 600.0
USAGE_ATTRS = ("GlobalJobId,ClusterId,ProcId,Owner,AcctGroup,AccountingGroup,QDate,JobStartDate,CompletionDate,"
               "EnteredCurrentStatus,JobStatus,ExitCode,ExitBySignal,RemoteWallClockTime,CommittedTime,"
               "RequestGPUs,GpusProvisioned,RequestCpus,CpusProvisioned,JobBatchName")


def history_argv(start: int, end: int) -> list[str]:
    """Jobs (all users) that left the queue in ``[start, end)``: completed or removed."""
    constraint = (f"EnteredCurrentStatus >= {start} && EnteredCurrentStatus < {end}"
                  f" && (JobStatus == {COMPLETED} || JobStatus == {REMOVED})")
    return ["condor_history", "-json", "-constraint", constraint, "-attributes", USAGE_ATTRS]


QUEUE_ARGV = ["condor_q", "-allusers", "-json", "-constraint", "JobStatus == 2 && RequestGPUs > 0",
              "-attributes", USAGE_ATTRS]


def usage_rows(ads: Iterable[Ad], default_cluster: str, gpu_model: str, now: int) -> Iterator[UsageRow]:
    """Job ads -> one row per job that ran with GPUs; a job still running gets ``end`` None."""
    for ad in ads:
        gpus = ad.number("GpusProvisioned") or ad.number("RequestGPUs") or 0
        started = ad.number("JobStartDate")
        cluster_id, proc = ad.number("ClusterId"), ad.number("ProcId")
        if not gpus or not started or cluster_id is None:
            continue
        status = int(ad.number("JobStatus") or 0)
        finished = status in (COMPLETED, REMOVED)
        ended = (ad.number("CompletionDate") or ad.number("EnteredCurrentStatus")) if finished else None
        wall = ad.number("RemoteWallClockTime")
        if wall is None or (not finished and wall == 0):
            wall = (ended or now) - started
        if status == COMPLETED:
            state = "FAILED" if ad.get("ExitBySignal") is True or (ad.number("ExitCode") or 0) else "COMPLETED"
        else:
            state = "CANCELLED" if status == REMOVED else "RUNNING"
        global_id = ad.text("GlobalJobId") or ""
        committed = ad.number("CommittedTime")
        yield UsageRow(
            cluster=global_id.split("#", 1)[0] if "#" in global_id else default_cluster,
            job_id=f"{int(cluster_id)}.{int(proc or 0)}",
            job_ref=None,
            submit=from_epoch(ad.number("QDate") or started),
            start=from_epoch(started),
            end=from_epoch(ended) if ended else None,
            wall_seconds=max(0, int(wall)),
            nnodes=1,
            ncpus=int(ad.number("CpusProvisioned") or ad.number("RequestCpus") or 0),
            user=ad.text("Owner") or "",
            account=ad.text("AcctGroup") or ad.text("AccountingGroup") or "",
            partition="",
            qos="",
            state=state,
            gpu_tres=f"gpus={gpus:g}" + (f",committed={int(committed)}" if committed is not None else ""),
            gpus=float(gpus),
            gpu_model=gpu_model,
        )


def site_gpu_model(site: Site) -> str:
    """The pool's GPU model when its site file names only one; HTCondor job ads do not say."""
    models = {p.gpu_model for p in site.partitions.values() if p.gpu_model}
    return models.pop() if len(models) == 1 else ""


def collect_history(store: UsageStore, site: Site, start: str, end: str, out: Outcome, progress: Progress) -> None:
    from gpuhub.transport import transport_for

    transport = transport_for(site)
    default_cluster = site.connection.host if site.connection else "localhost"
    model = site_gpu_model(site)
    now = to_epoch(end)
    running_before = {k for k in store.running_keys(site.name) if k[3] >= start}
    finished = parse_ads(transport.run(history_argv(to_epoch(start), now), timeout=HISTORY_TIMEOUT).stdout)
    running = parse_ads(transport.run(QUEUE_ARGV, timeout=HISTORY_TIMEOUT).stdout)
    rows = list(usage_rows([*finished, *running], default_cluster, model, now))
    got = store.ingest(site.name, rows)
    store.set_watermark(site.name, end)
    out.result.add(got)
    out.scope = "all users"
    left = running_before - {(r.cluster, r.job_id, r.submit, r.start) for r in rows}
    if left:
        out.warnings.append(f"site {site.name}: {len(left)} run(s) stored as running were neither in the queue "
                            "nor in the history window; they stay provisional")
    progress(f"{site.name}: {start} .. {end}  {len(rows)} GPU jobs from condor_history/condor_q "
             f"({got.new} new, {got.updated} updated, {got.provisional} running)")
