"""Fit a :class:`JobRequest` to a :class:`Site`: choose the partition, shape, QoS and account.

Pure: no I/O. Every choice made for the user is recorded in ``Allocation.reasons`` so
``gpuhub render`` can say why; every impossible request raises a RequestError naming the limit.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from gpuhub.errors import RequestError
from gpuhub.record import Record
from gpuhub.units import format_memory, format_walltime
from gpuhub.values import TOKEN_HELP, TOKEN_RE

if TYPE_CHECKING:
    # Validated values: gpuhub.sitedata / gpuhub.requestdata classes (what commands use, no
    # pydantic loaded) or the pydantic models they mirror.
    from gpuhub.request import JobRequest
    from gpuhub.site import Partition, Site

DEFAULT_WALLTIME = 3600


class Allocation(Record):
    """The concrete resources a request gets on a site."""

    site: Site
    request: JobRequest
    partition_key: str
    partition: Partition
    nodes: int
    gpus_per_node: int
    ntasks_per_node: int
    cpus_per_task: int | None
    mem_mib: int | None
    walltime: int
    qos: str | None
    account: str | None
    launcher: str = "none"
    reasons: tuple[str, ...] = ()
    # When the job is stopped (seconds); None: it runs until it ends (no scheduler, no time asked).
    time_limit: int | None = None

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def gpu_model(self) -> str | None:
        return self.partition.gpu_model

    def summary(self) -> dict[str, object]:
        return {
            "site": self.site.name,
            "scheduler": self.site.scheduler,
            "partition_key": self.partition_key,
            "partition": self.partition.partition,
            "gpu_model": self.gpu_model,
            "nodes": self.nodes,
            "gpus_per_node": self.gpus_per_node,
            "gpus": self.gpus,
            "ntasks_per_node": self.ntasks_per_node,
            "cpus_per_task": self.cpus_per_task,
            "mem": format_memory(self.mem_mib) if self.mem_mib else None,
            "walltime": format_walltime(self.walltime),
            "time_limit": format_walltime(self.time_limit) if self.time_limit else None,
            "qos": self.qos,
            "account": self.account,
            "launcher": self.launcher,
            "requeue": self.request.requeue,
            "reasons": list(self.reasons),
        }


def plan(site: Site, request: JobRequest) -> Allocation:
    """Fit ``request`` to ``site`` or raise RequestError saying which limit it breaks."""
    candidates, why = _candidates(site, request)
    errors: list[str] = []
    for key in candidates:
        try:
            return _fit(site, request, key, why)
        except RequestError as exc:
            errors.append(exc.message)
    if len(errors) == 1:
        raise RequestError(errors[0])
    raise RequestError(f"no partition of site {site.name!r} fits: " + "; ".join(errors))


def _candidates(site: Site, request: JobRequest) -> tuple[list[str], str]:
    wanted = request.partition or site.defaults.partition
    gpu_type = request.gpu_type or site.defaults.gpu_type
    keys = list(site.partitions)
    if wanted:
        chosen = [k for k in keys if k == wanted] or [k for k in keys if site.partitions[k].partition == wanted]
        if not chosen:
            raise RequestError(
                f"site {site.name!r} has no partition {wanted!r}; choose one of: {', '.join(keys)}"
            )
        why = f"partition {wanted!r} as asked"
    elif gpu_type:
        chosen = keys
        why = f"GPU type {gpu_type!r} as asked"
    else:
        chosen = [site.partition_key()]
        why = "the site's default partition"
    if gpu_type and gpu_type.lower() == "any":
        gpu_type = None
    if request.gpu_mem:
        chosen = _with_gpu_memory(site, chosen, request.gpu_mem)
    if gpu_type:
        wanted_type = gpu_type.lower()
        typed = [
            k for k in chosen if k.lower() == wanted_type or (site.partitions[k].gpu_model or "") == wanted_type
        ]
        if not typed:
            models = sorted({p.gpu_model for p in site.partitions.values() if p.gpu_model})
            scope = f"partition {wanted!r}" if wanted else f"site {site.name!r}"
            raise RequestError(
                f"{scope} has no GPU model {gpu_type!r}; available: {', '.join(models) or 'none'}"
            )
        chosen = typed
    return chosen, why


def _with_gpu_memory(site: Site, keys: list[str], mib: int) -> list[str]:
    fitting = [k for k in keys if (site.partitions[k].gpu_memory_gb or 0) * 1024 >= mib]
    if not fitting:
        known = sorted({f"{p.gpu_memory_gb:g} GB" for k in keys if (p := site.partitions[k]).gpu_memory_gb})
        raise RequestError(
            f"site {site.name!r} has no GPU with {format_memory(mib)}B of memory"
            f" (its site file gives: {', '.join(known) or 'no GPU memory'}); lower --gpu-mem"
        )
    return fitting


def _fit(site: Site, req: JobRequest, key: str, why: str) -> Allocation:
    part = site.partitions[key]
    reasons = [f"partition {key!r}" + (f" (Slurm partition {part.partition})" if part.partition else "") + f": {why}"]
    nodes, gpn = _shape(site, req, key, part, reasons)

    launcher = req.launcher or site.defaults.launcher or "none"
    cpus_per_gpu = req.cpus_per_gpu or site.defaults.cpus_per_gpu or part.cpus_per_gpu
    cpus_per_task = cpus_per_gpu * gpn if cpus_per_gpu and gpn else None
    ntasks_per_node = 1
    if launcher == "srun":
        # One task per GPU (the pattern IDRIS documents); each task gets its GPU's share of CPUs.
        ntasks_per_node = max(gpn, 1)
        cpus_per_task = cpus_per_gpu if cpus_per_gpu and gpn else None
        reasons.append(f"launcher srun: {ntasks_per_node} task(s) per node, one per GPU")
    elif launcher == "torchrun":
        reasons.append(f"launcher torchrun: one torchrun per node, {max(gpn, 1)} process(es) each")
    if cpus_per_task and part.cpus_per_node and cpus_per_task > part.cpus_per_node:
        raise RequestError(
            f"{cpus_per_task} CPUs per node ({cpus_per_gpu} per GPU x {gpn}) exceed the "
            f"{part.cpus_per_node} CPUs of a node in partition {key!r}; lower --cpus-per-gpu"
        )

    mem = req.mem or site.defaults.mem
    if mem and part.memory_per_node and mem > part.memory_per_node:
        raise RequestError(
            f"memory {format_memory(mem)} per node exceeds the {format_memory(part.memory_per_node)} "
            f"of a node in partition {key!r}"
        )

    from gpuhub.backends import capabilities_of
    from gpuhub.backends.capabilities import KILL_AFTER

    caps = capabilities_of(site.scheduler)
    by_gpuhub = caps.time_limit == "gpuhub"
    walltime = req.time or site.defaults.time or part.default_walltime
    time_limit = walltime
    if req.time is None and walltime is not None:
        origin = "defaults.time" if site.defaults.time else f"partitions.{key}.default_walltime"
        reasons.append(f"no --time given: {format_walltime(walltime)} from the site's {origin}")
    if walltime is None:
        walltime = min(DEFAULT_WALLTIME, part.max_walltime or DEFAULT_WALLTIME)
        if by_gpuhub and site.lab.max_walltime:
            walltime = time_limit = min(site.lab.max_walltime, part.max_walltime or site.lab.max_walltime)
            reasons.append(f"no --time given: {format_walltime(walltime)}, the site's lab.max_walltime, kept by "
                           f"gpuhub: TERM at the limit, KILL {site.lab.kill_grace} s later")
        elif by_gpuhub:
            reasons.append("no --time given: no time limit (no scheduler here; --time sets one)")
        else:
            time_limit = walltime
            reasons.append(f"no --time given: {format_walltime(walltime)}")
    elif by_gpuhub:
        grace = site.lab.kill_grace if caps.gpu_locks else KILL_AFTER
        reasons.append(f"time limit {format_walltime(walltime)} kept by gpuhub (no scheduler here): TERM at the "
                       f"limit, KILL {grace} s later")
    if part.max_walltime and walltime > part.max_walltime:
        raise RequestError(
            f"walltime {format_walltime(walltime)} is over the {format_walltime(part.max_walltime)} "
            f"limit of partition {key!r} on site {site.name!r}"
        )
    _lab_policy(site, nodes * gpn, walltime)

    qos = _qos(site, req, key, part, walltime, reasons)
    account = _account(site, req, part)
    _scheduler_limits(site, req, nodes, launcher)
    return Allocation(
        site=site,
        request=req,
        partition_key=key,
        partition=part,
        nodes=nodes,
        gpus_per_node=gpn,
        ntasks_per_node=ntasks_per_node,
        cpus_per_task=cpus_per_task,
        mem_mib=mem,
        walltime=walltime,
        qos=qos,
        account=account,
        launcher=launcher,
        reasons=tuple(reasons),
        time_limit=time_limit,
    )


def _shape(site: Site, req: JobRequest, key: str, part: Partition, reasons: list[str]) -> tuple[int, int]:
    cap = part.gpus_per_node
    gpus, nodes, gpn = req.gpus, req.nodes, req.gpus_per_node
    if gpn is None and gpus is not None:
        if nodes is None:
            nodes = 1 if gpus <= cap or cap == 0 else math.ceil(gpus / cap)
            if nodes > 1:
                reasons.append(f"{gpus} GPUs over {nodes} nodes of {cap}")
        if gpus % nodes:
            raise RequestError(
                f"{gpus} GPUs cannot be spread evenly over {nodes} nodes"
                f" (partition {key!r} has {cap} GPUs per node); give --nodes and --gpus-per-node"
            )
        gpn = gpus // nodes
    elif gpn is None:
        gpn = min(1, cap)
        if cap:
            reasons.append("no GPU count given: 1 GPU per node")
    nodes = nodes or 1
    if gpn > cap:
        hint = f"use --nodes {math.ceil(gpn / cap)} --gpus-per-node {cap}" if cap else _no_gpu_hint(site)
        raise RequestError(
            f"{gpn} GPUs per node asked, but nodes of partition {key!r} on site {site.name!r} "
            f"have {cap}; {hint}"
        )
    if part.max_nodes and nodes > part.max_nodes:
        raise RequestError(f"{nodes} nodes asked; partition {key!r} allows at most {part.max_nodes}")
    if part.exclusive and gpn < cap:
        reasons.append(f"partition {key!r} is exclusive: whole nodes ({cap} GPUs each) are reserved and charged")
    return nodes, gpn


def _no_gpu_hint(site: Site) -> str:
    with_gpus = [k for k, p in site.partitions.items() if p.gpus_per_node]
    if with_gpus:
        return f"pick a GPU partition with --partition ({', '.join(with_gpus)})"
    return (f"site {site.name!r} declares no GPUs: run with --gpus 0, choose a site with GPUs (`gpuhub sites list`), "
            f"or declare them in the site file (partitions.{site.partition_key()}.gpus_per_node)")


def _qos(site: Site, req: JobRequest, key: str, part: Partition, walltime: int, reasons: list[str]) -> str | None:
    wanted = req.qos or site.defaults.qos
    if wanted:
        if part.qos:
            match = next((q for q in part.qos if q.name == wanted), None)
            if match is None:
                names = ", ".join(q.name for q in part.qos)
                raise RequestError(f"QoS {wanted!r} is not offered on partition {key!r}; choose one of: {names}")
            if match.max_walltime and walltime > match.max_walltime:
                raise RequestError(
                    f"walltime {format_walltime(walltime)} is over the {format_walltime(match.max_walltime)} "
                    f"limit of QoS {wanted!r}"
                )
        return wanted
    if not part.qos:
        return None
    fitting = [q for q in part.qos if q.max_walltime is None or walltime <= q.max_walltime]
    if not fitting:
        longest = max(part.qos, key=lambda q: q.max_walltime or 0)
        raise RequestError(
            f"walltime {format_walltime(walltime)} is over the longest QoS of partition {key!r}: "
            f"{longest.name} ({format_walltime(longest.max_walltime or 0)})"
        )
    best = min(fitting, key=lambda q: q.max_walltime if q.max_walltime is not None else math.inf)
    limit = format_walltime(best.max_walltime) if best.max_walltime else "no limit"
    reasons.append(f"QoS {best.name}: shortest whose limit ({limit}) covers {format_walltime(walltime)}")
    return best.name


def _account(site: Site, req: JobRequest, part: Partition) -> str | None:
    explicit = req.account or site.defaults.account
    if explicit:
        return explicit
    project = req.project or site.defaults.project
    fmt = site.account.format
    if project is None:
        if site.account.required:
            raise RequestError(
                f"site {site.name!r} needs a project (its accounts look like {fmt or '<project>'!r}); "
                f"pass --project, or set defaults.project in your site override "
                f"(`gpuhub sites show {site.name}` prints where)"
            )
        return None
    if not fmt:
        return project
    user = site.connection.user if site.connection else None
    if "{user}" in fmt and not user:
        raise RequestError(f"site {site.name!r} builds accounts from the user name: set connection.user")
    account = fmt.format(
        project=project, user=user or "", gpu_model=part.gpu_model or "", partition=part.partition or ""
    )
    if not TOKEN_RE.fullmatch(account):
        raise RequestError(f"account {account!r} built from {fmt!r} is not valid: use {TOKEN_HELP}")
    return account


def _lab_policy(site: Site, gpus: int, walltime: int) -> None:
    """A lab server's own limits (site ``lab:`` block); the host enforces them again at run time."""
    lab = site.lab
    if lab.max_walltime and walltime > lab.max_walltime:
        raise RequestError(
            f"walltime {format_walltime(walltime)} is over the {format_walltime(lab.max_walltime)} "
            f"limit of site {site.name!r} (lab.max_walltime)"
        )
    if lab.max_gpus_per_user and gpus > lab.max_gpus_per_user:
        raise RequestError(
            f"{gpus} GPUs asked; site {site.name!r} allows {lab.max_gpus_per_user} per user (lab.max_gpus_per_user)"
        )


def _scheduler_limits(site: Site, req: JobRequest, nodes: int, launcher: str) -> None:
    """What the site's scheduler cannot do, read from its backend's capabilities."""
    from gpuhub.backends import capabilities_of

    can = capabilities_of(site.scheduler)
    kind = site.scheduler
    if launcher not in can.launchers:
        raise RequestError(
            f"launcher {launcher} is not available on site {site.name!r} ({kind}); "
            f"use one of: {', '.join(can.launchers)}"
            + (" (srun needs a Slurm site)" if launcher == "srun" else "")
        )
    if req.requeue and not can.requeue:
        raise RequestError(f"--requeue is not available on site {site.name!r} ({kind}): its scheduler cannot requeue")
    if nodes > 1 and not can.multi_node:
        raise RequestError(
            f"site {site.name!r} ({kind}) runs single-node jobs only; ask for at most one node's GPUs"
        )
    if req.dependency and not can.dependencies:
        raise RequestError(f"job dependencies are not available on site {site.name!r} ({kind})")
    if req.wait_for_gpus is not None and not can.gpu_locks:
        raise RequestError(
            f"--wait-for-gpus is for lab GPU servers; site {site.name!r} ({kind}) queues jobs itself"
        )
    if req.array and not can.arrays:
        raise RequestError(f"job arrays are not available on site {site.name!r} ({kind})")
    # Options the scheduler would never see: refuse them rather than drop them silently. --project
    # stays allowed everywhere: gpuhub itself charges a job's GPU hours to it (ledger usage, exporter).
    for given, able, option in (
        (req.account, can.accounts, "--account"),
        (req.qos, can.qos, "--qos"),
        (req.directives, can.directives, "--directive"),
    ):
        if given and not able:
            hint = "; --project still labels the job's GPU hours" if option == "--account" else ""
            raise RequestError(
                f"{option} has no effect on site {site.name!r} ({kind}): its scheduler has no such option{hint}"
            )
