"""Slurm usage collection: ``sacct`` over the window, in chunks, into the usage store."""

from __future__ import annotations

from gpuhub.accounting.collect import Outcome, Progress
from gpuhub.accounting.records import from_epoch, to_epoch
from gpuhub.accounting.sacct import ModelResolver, ParseStats, parse_sacct, sacct_argv
from gpuhub.accounting.store import UsageStore
from gpuhub.site import Site

SACCT_TIMEOUT = 600.0



def model_resolver(site: Site) -> ModelResolver:
    """GPU model for reports: the site's ``gpu_model`` for a GRES type, else for the partition
    (only when the partition has a single model), else the GRES type itself."""
    by_gres: dict[str, str] = {}
    by_partition: dict[str, set[str]] = {}
    for part in site.partitions.values():
        if part.gpu_model:
            if part.gres_type:
                by_gres.setdefault(part.gres_type, part.gpu_model)
            if part.partition:
                by_partition.setdefault(part.partition, set()).add(part.gpu_model)

    def resolve(typed: str, partition: str) -> str:
        if typed:
            return "+".join(sorted({by_gres.get(t, t) for t in typed.split("+")}))
        models = by_partition.get(partition, set())
        return next(iter(models)) if len(models) == 1 else ""

    return resolve


def collect_sacct(
    store: UsageStore, site: Site, start: str, end: str, chunk: int, out: Outcome, progress: Progress
) -> None:
    from gpuhub.transport import CommandError, transport_for

    transport = transport_for(site)
    resolve = model_resolver(site)
    running_before = {k for k in store.running_keys(site.name) if k[3] >= start}
    all_users = True
    saw_lines = saw_gpu = 0
    t0, t_end = to_epoch(start), to_epoch(end)
    while t0 < t_end:
        t1 = min(t_end, t0 + chunk)
        lo, hi = from_epoch(t0), from_epoch(t1)
        try:
            result = transport.run(sacct_argv(lo, hi, all_users), timeout=SACCT_TIMEOUT)
        except CommandError as exc:
            if not all_users:
                raise
            # --allusers refused (PrivateData, old sacct...): the user's own jobs are still worth having.
            all_users = False
            why = (exc.result.stderr.strip().splitlines() or ["refused"])[-1]
            out.warnings.append(f"site {site.name}: sacct --allusers failed ({why}); collecting your own jobs only")
            result = transport.run(sacct_argv(lo, hi, all_users), timeout=SACCT_TIMEOUT)
        stats = ParseStats()
        got = store.ingest(site.name, parse_sacct(result.stdout.splitlines(), resolve, stats, cross_off=running_before))
        store.set_watermark(site.name, hi)
        out.result.add(got)
        saw_lines += stats.lines - stats.pending
        saw_gpu += stats.rows
        if stats.malformed:
            out.warnings.append(f"site {site.name}: {stats.malformed} sacct line(s) not understood, "
                                f"first: {stats.first_bad!r}")
        progress(f"{site.name}: {lo} .. {hi}  {stats.rows} GPU runs ({got.new} new, {got.updated} updated, "
                 f"{stats.running} running)")
        t0 = t1
    out.scope = "all users" if all_users else "own jobs"
    if saw_lines and not saw_gpu:
        out.warnings.append(
            f"site {site.name}: {saw_lines} job run(s) but none with GPUs in AllocTRES; "
            "does the site's AccountingStorageTRES include gres/gpu?")
    if running_before:
        out.warnings.append(f"site {site.name}: {len(running_before)} run(s) stored as running were not returned "
                            "by sacct; they stay provisional")
