"""Slurm: an sbatch script whose ``#SBATCH`` lines come in a fixed order, sent on stdin; ``squeue``
and ``sacct`` to follow it, ``scancel``, ``sacct`` for usage and ``sinfo``/``squeue`` for live GPUs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from gpuhub.backends.base import Backend, Finding, SiteProblem
from gpuhub.backends.capabilities import CAPABILITIES
from gpuhub.backends.common import (
    REQUEUE_SIGNAL,
    combine_tasks,
    job_env,
    launch,
    log_paths,
    requeue_lead,
    safe_job_name,
    setup_lines,
)
from gpuhub.backends.slurm_parse import SACCT_FIELDS, SQUEUE_FORMAT, parse_sacct, parse_squeue, parse_submit
from gpuhub.errors import RequestError
from gpuhub.states import JobStatus
from gpuhub.units import format_memory, format_walltime

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from gpuhub.accounting.collect import Outcome
    from gpuhub.accounting.store import UsageStore
    from gpuhub.exporter.readings import SiteReading
    from gpuhub.plan import Allocation
    from gpuhub.render import RenderedJob
    from gpuhub.site import Site
    from gpuhub.transport.base import Transport


def check_site(site: Site) -> list[SiteProblem]:
    """Slurm-specific checks of a site file."""
    problems = []
    for where, directives in [(("directives",), site.directives)] + [
        (("partitions", k, "directives"), p.directives) for k, p in site.partitions.items()
    ]:
        for i, d in enumerate(directives):
            if not d.startswith("-"):
                problems.append(SiteProblem(
                    (*where, str(i)), f"Slurm directive {d!r} must start with '-' (e.g. '--hint=nomultithread')"))
    for key, part in site.partitions.items():
        if part.constraint and any(c.isspace() for c in part.constraint):
            problems.append(SiteProblem(
                ("partitions", key, "constraint"), f"a Slurm constraint has no blanks ({part.constraint!r})"))
    return problems


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
    if req.requeue:
        out.append("--requeue")
        out.append("--open-mode=append")  # a requeued run adds to the log instead of wiping it
        out.append(f"--signal=B:{REQUEUE_SIGNAL}@{requeue_lead(alloc)}")
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


class SlurmBackend(Backend):
    name = "slurm"
    capabilities = CAPABILITIES["slurm"]
    files: ClassVar[dict[str, str]] = {"job.sbatch": "slurm.sbatch.j2"}
    usage_source = "sacct"
    stdin_file = "job.sbatch"  # the script goes on stdin: nothing is left behind on either side

    def check_site(self, site: Site) -> list[SiteProblem]:
        return super().check_site(site) + check_site(site)

    def context(self, alloc: Allocation, token: str | None) -> dict[str, Any]:
        return {
            "directives": directives(alloc, token),
            "env": job_env(alloc),
            "setup": setup_lines(alloc),
            "array_var": "SLURM_ARRAY_TASK_ID" if alloc.request.array else None,
            "requeue_flag": f"${{SLURM_SUBMIT_DIR:-$PWD}}/{alloc.site.log_dir}/.checkpoint-$SLURM_JOB_ID",
            "requeue_step": 'scontrol requeue "$SLURM_JOB_ID"\n  exit 0',
        }

    def submit_argv(self) -> list[str]:
        return ["sbatch", "--parsable"]

    def launch(self, alloc: Allocation) -> tuple[list[str], str]:
        return launch(alloc, srun=True)

    # --- operations on a live cluster (through a transport) -------------------------------------

    def submit(self, transport: Transport, job: RenderedJob, token: str, timeout: float = 60.0) -> str:
        """Send the script on stdin to ``sbatch --parsable``; the log directory is made first."""
        transport.ensure_dir(job.allocation.site.log_dir, timeout=timeout)
        result = transport.run(job.submit_argv, stdin=job.files[job.stdin_file or job.main_file], timeout=timeout)
        return self.parse_submit(result.stdout)

    def parse_submit(self, stdout: str) -> str:
        return parse_submit(stdout)

    def find_by_tokens(self, transport: Transport, tokens: list[str], timeout: float = 60.0) -> dict[str, str]:
        """The jobs submitted with these tokens (their comment is ``gpuhub:TOKEN``).

        ``--states=all`` also shows jobs that ended less than MinJobAge (300 s by default) ago.
        """
        if not tokens:
            return {}
        wanted = {f"gpuhub:{t}": t for t in tokens}
        result = transport.run(["squeue", "-h", "--me", "--states=all", "-o", SQUEUE_FORMAT], timeout=timeout)
        found = {}
        for job_id, (_, comment) in parse_squeue(result.stdout).items():
            if comment in wanted:
                found[wanted[comment]] = job_id.split("_", 1)[0]
        return found

    def poll(
        self, transport: Transport, ids: list[str], timeout: float = 60.0, tasks: dict[str, int] | None = None
    ) -> dict[str, JobStatus]:
        """One ``squeue`` for live jobs, one ``sacct`` for the rest.

        ``tasks`` gives the size of array jobs, so an array is never called finished while
        some of its tasks are not yet in the accounting records.
        """
        wanted = set(ids)
        argv = ["squeue", "-h", "--me", "-r", "-o", SQUEUE_FORMAT]
        live = parse_squeue(transport.run(argv, timeout=timeout).stdout)
        by_base: dict[str, list[JobStatus]] = {}
        for job_id, (status, _) in live.items():
            base = job_id.split("_", 1)[0]
            if base in wanted:
                by_base.setdefault(base, []).append(status)
        missing = sorted(wanted - by_base.keys(), key=int)
        if missing:
            result = transport.run(
                ["sacct", "-X", "-P", "-n", "-j", ",".join(missing), f"--format={SACCT_FIELDS}"],
                timeout=timeout,
                check=False,
            )
            if result.ok:
                for job_id, status in parse_sacct(result.stdout).items():
                    base = job_id.split("_", 1)[0]
                    if base in wanted and base in missing:
                        by_base.setdefault(base, []).append(status)
        tasks = tasks or {}
        return {base: combine_tasks(statuses, tasks.get(base, 1)) for base, statuses in by_base.items()}

    def cancel(self, transport: Transport, ids: list[str], timeout: float = 60.0) -> None:
        transport.run(["scancel", *ids], timeout=timeout)

    def cancel_pending(self, transport: Transport, ids: list[str], timeout: float = 60.0) -> None:
        # slurmctld checks the state and cancels in one step: a job that has started is left alone.
        transport.run(["scancel", "--state=PENDING", *ids], timeout=timeout)

    def log_paths(self, scheduler_id: str, job_name: str, log_dir: str, task: int | None = None) -> tuple[str, str]:
        return log_paths(scheduler_id, job_name, log_dir, task)

    # --- accounting and live GPUs ----------------------------------------------------------

    def collect_usage(
        self, store: UsageStore, site: Site, start: str, end: str, chunk: int, out: Outcome,
        progress: Callable[[str], None],
    ) -> None:
        from gpuhub.accounting.sacct_collect import collect_sacct

        collect_sacct(store, site, start, end, chunk, out, progress)

    def read_gpus(self, site: Site, transport: Transport, deadline: float) -> SiteReading:
        from gpuhub.exporter import slurm as probe

        return probe.read(transport, deadline)

    def expected_start(self, transport: Transport, alloc: Allocation, timeout: float = 60.0
                       ) -> tuple[datetime | None, str]:
        from gpuhub.backends.slurm_start import expected_start

        return expected_start(transport, alloc, timeout)

    def check_live(self, site: Site, transport: Transport, timeout: float = 60.0) -> list[Finding]:
        from gpuhub.backends import slurm_check

        user = site.connection.user if site.connection else None
        return slurm_check.compare(site, slurm_check.gather(transport, user, timeout))

