"""Usage of sites without scheduler accounting (lab servers, this machine): the gpuhub ledger."""

from __future__ import annotations

import getpass
import socket
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone

from gpuhub.accounting.collect import Outcome, Progress
from gpuhub.accounting.records import UsageRow, from_epoch, to_epoch
from gpuhub.accounting.store import UsageStore
from gpuhub.site import Site


def ledger_rows(site: Site, records: Iterable[object], since_epoch: float, now_epoch: float) -> Iterator[UsageRow]:
    """Ledger jobs of ``site`` that ran with GPUs and overlap ``[since, now]`` as usage rows."""
    if site.connection is not None:
        cluster = site.connection.host
        user = site.connection.user or getpass.getuser()
    else:
        cluster, user = socket.gethostname(), getpass.getuser()
    for rec in records:
        started, ended = rec.started_at, rec.ended_at  # type: ignore[attr-defined]
        plan, request = rec.plan, rec.request  # type: ignore[attr-defined]
        gpus = float(plan.get("gpus") or 0)
        if started is None or not gpus or (ended is not None and ended < since_epoch):
            continue
        if ended is None and rec.state.finished:  # type: ignore[attr-defined]
            ended = rec.updated_at  # type: ignore[attr-defined]
        stop = ended if ended is not None else now_epoch
        submitted = rec.submitted_at or rec.created_at  # type: ignore[attr-defined]
        account = plan.get("account") or request.get("account") or request.get("project") or ""
        yield UsageRow(
            cluster=cluster,
            job_id=rec.scheduler_id or rec.token,  # type: ignore[attr-defined]
            job_ref=None,
            submit=from_epoch(submitted),
            start=from_epoch(started),
            end=from_epoch(ended) if ended is not None else None,
            wall_seconds=max(0, int(stop) - int(started)),
            nnodes=int(plan.get("nodes") or 1),
            ncpus=int((plan.get("cpus_per_task") or 0) * (plan.get("ntasks_per_node") or 1)),
            user=user,
            account=str(account),
            partition=str(plan.get("partition_key") or ""),
            qos=str(plan.get("qos") or ""),
            state=rec.state.value.upper(),  # type: ignore[attr-defined]
            gpu_tres=f"plan:gpus={plan.get('gpus')}",
            gpus=gpus,
            gpu_model=str(plan.get("gpu_model") or ""),
        )


def collect_ledger(store: UsageStore, site: Site, start: str, end: str, out: Outcome, progress: Progress) -> None:
    from gpuhub.ledger import Ledger

    ledger = Ledger(mode="read")  # collecting reads the ledger as it stands: never a write
    try:
        # The ledger as it stands: collecting never polls the site. A job still unfinished there
        # is stored as provisional, and finalised by a collection after `gpuhub status` saw it end.
        records = ledger.jobs(site=site.name)
        now = datetime.now(timezone.utc).timestamp()
        got = store.ingest(site.name, ledger_rows(site, records, to_epoch(start), now))
    finally:
        ledger.close()
    store.set_watermark(site.name, end)
    out.result.add(got)
    out.scope = "ledger"
    progress(f"{site.name}: {start} .. {end}  {got.seen} GPU runs from the gpuhub ledger "
             f"({got.new} new, {got.updated} updated, {got.provisional} running)")
