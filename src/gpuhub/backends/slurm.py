"""Slurm: an sbatch script whose ``#SBATCH`` lines come in a fixed order, sent on stdin."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gpuhub.backends.common import job_env, safe_job_name, setup_lines
from gpuhub.errors import RequestError
from gpuhub.units import format_memory, format_walltime

if TYPE_CHECKING:
    from gpuhub.plan import Allocation
    from gpuhub.site import Site

FILES = {"job.sbatch": "slurm.sbatch.j2"}
STDIN = "job.sbatch"


def submit_argv() -> list[str]:
    # The script goes on stdin: nothing is left behind on either side.
    return ["sbatch", "--parsable"]


def check_site(site: Site) -> None:
    """Slurm-specific checks of a site file (called by the site model)."""
    for where, directives in [("directives", site.directives)] + [
        (f"partitions.{k}.directives", p.directives) for k, p in site.partitions.items()
    ]:
        for d in directives:
            if not d.startswith("-"):
                raise ValueError(f"{where}: Slurm directive {d!r} must start with '-' (e.g. '--hint=nomultithread')")
    for key, part in site.partitions.items():
        if part.constraint and any(c.isspace() for c in part.constraint):
            raise ValueError(f"partitions.{key}.constraint: a Slurm constraint has no blanks ({part.constraint!r})")


def directives(alloc: Allocation, token: str | None) -> list[str]:
    req, part, site = alloc.request, alloc.partition, alloc.site
    out = [f"--job-name={safe_job_name(req.name)}"]
    if alloc.account:
        out.append(f"--account={alloc.account}")
    if part.partition:
        out.append(f"--partition={part.partition}")
    if alloc.qos:
        out.append(f"--qos={alloc.qos}")
    if part.constraint:
        out.append(f"--constraint={part.constraint}")
    out.append(f"--nodes={alloc.nodes}")
    out.append(f"--ntasks-per-node={alloc.ntasks_per_node}")
    if alloc.cpus_per_task:
        out.append(f"--cpus-per-task={alloc.cpus_per_task}")
    if alloc.gpus_per_node:
        typed = f"{part.gres_type}:" if part.gres_type else ""
        if site.gpu_request == "gres":
            out.append(f"--gres=gpu:{typed}{alloc.gpus_per_node}")
        else:
            out.append(f"--gpus-per-node={typed}{alloc.gpus_per_node}")
    if alloc.mem_mib:
        out.append(f"--mem={format_memory(alloc.mem_mib)}")
    out.append(f"--time={format_walltime(alloc.walltime)}")
    if req.array:
        out.append(f"--array={req.array}")
    if req.dependency:
        out.append(f"--dependency={req.dependency}")
    if part.exclusive:
        out.append("--exclusive")
    stem = "%x-%A_%a" if req.array else "%x-%j"
    out.append(f"--output={site.log_dir}/{stem}.out")
    out.append(f"--error={site.log_dir}/{stem}.err")
    if token:
        out.append(f"--comment=gpuhub:{token}")
    out.extend(site.directives)
    out.extend(part.directives)
    for d in req.directives:
        if not d.startswith("-"):
            raise RequestError(f"directive {d!r}: a Slurm option starts with '-' (e.g. --mail-type=END)")
        out.append(d)
    return out


def context(alloc: Allocation, token: str | None) -> dict[str, Any]:
    return {
        "directives": directives(alloc, token),
        "env": job_env(alloc),
        "setup": setup_lines(alloc),
        "array_var": "SLURM_ARRAY_TASK_ID" if alloc.request.array else None,
    }
