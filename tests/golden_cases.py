"""The requests whose rendered files are kept as golden files, for every shipped site."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from gpuhub.plan import plan
from gpuhub.registry import load_site, site_names
from gpuhub.render import RenderedJob, render
from gpuhub.request import JobRequest
from gpuhub.site import Site

GOLDEN = Path(__file__).parent / "golden"
SHIPPED = sorted(p.stem for p in (Path(__file__).parent.parent / "site_configs").glob("*.yaml"))


def _time(site: Site, seconds: int = 7200) -> int:
    part = site.partitions[site.partition_key()]
    limit = part.max_walltime or seconds
    return min(seconds, limit) // 60  # minutes


def cases(site: Site) -> dict[str, JobRequest]:
    part = site.partitions[site.partition_key()]
    cap = part.gpus_per_node
    common = {"command": ["python", "train.py", "--lr", "0.1"], "project": "abc"}
    out = {
        "basic": JobRequest(name="train", time=_time(site), gpus=min(1, cap), **common),
        "node": JobRequest(name="train node", time=_time(site), gpus=cap, env={"SEED": "1"},
                           workdir="~/runs/exp 1", **common),
    }
    if site.scheduler == "slurm" and (part.max_nodes or 2) >= 2:
        out["multinode"] = JobRequest(name="ddp", time=_time(site), nodes=2, gpus_per_node=cap, **common)
    if site.scheduler == "slurm" and (part.max_nodes or 2) >= 2:
        out["torchrun"] = JobRequest(name="ddp", time=_time(site), nodes=2, gpus_per_node=cap, launcher="torchrun",
                                     requeue=True, **common)
    if site.scheduler == "slurm":
        out["srun"] = JobRequest(name="ddp", time=_time(site), gpus=cap, launcher="srun", **common)
    if site.scheduler in ("ssh", "local", "htcondor"):
        out["torchrun"] = JobRequest(name="ddp", time=_time(site), gpus=cap, launcher="torchrun", **common)
    if site.scheduler == "oar":  # OAR arrays have no '%' limit; requeue = idempotent + checkpoint signal
        out["array"] = JobRequest(name="sweep", time=_time(site), gpus=min(1, cap), array="0-9", **common)
        out["requeue"] = JobRequest(name="long", time=_time(site), gpus=min(1, cap), requeue=True, **common)
    if site.scheduler in ("slurm", "htcondor"):
        out["array"] = JobRequest(name="sweep", time=_time(site), gpus=min(1, cap), array="0-9%2", **common)
    return out


def rendered() -> Iterator[tuple[str, str, RenderedJob]]:
    assert set(SHIPPED) <= set(site_names())
    for name in SHIPPED:
        site = load_site(name)
        for case, request in cases(site).items():
            yield name, case, render(plan(site, request))
