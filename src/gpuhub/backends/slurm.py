"""Slurm: an sbatch script whose ``#SBATCH`` lines come in a fixed order, sent on stdin."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gpuhub.backends.common import REQUEUE_SIGNAL, job_env, requeue_lead, safe_job_name, setup_lines
from gpuhub.backends.slurm_parse import SACCT_FIELDS, SQUEUE_FORMAT, parse_sacct, parse_squeue, parse_submit
from gpuhub.errors import RequestError
from gpuhub.states import JobStatus, State
from gpuhub.units import format_memory, format_walltime

if TYPE_CHECKING:
    from gpuhub.plan import Allocation
    from gpuhub.render import RenderedJob
    from gpuhub.site import Site
    from gpuhub.transport.base import Transport

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


# --- operations on a live cluster (through a transport) -----------------------------------------

_ARRAY_WORST = [State.FAILED, State.TIMEOUT, State.PREEMPTED, State.CANCELLED]


def submit(transport: Transport, job: RenderedJob, token: str, timeout: float = 60.0) -> str:
    """Send the script on stdin to ``sbatch --parsable``; the log directory is made first."""
    transport.ensure_dir(job.allocation.site.log_dir, timeout=timeout)
    result = transport.run(job.submit_argv, stdin=job.files[job.stdin_file or job.main_file], timeout=timeout)
    return parse_submit(result.stdout)


def find_by_token(transport: Transport, token: str, timeout: float = 60.0) -> str | None:
    """The job already submitted with this token, if any (its comment is ``gpuhub:TOKEN``)."""
    result = transport.run(["squeue", "-h", "--me", "-o", SQUEUE_FORMAT], timeout=timeout)
    for job_id, (_, comment) in parse_squeue(result.stdout).items():
        if comment == f"gpuhub:{token}":
            return job_id.split("_", 1)[0]
    return None


def poll(
    transport: Transport, ids: list[str], timeout: float = 60.0, tasks: dict[str, int] | None = None
) -> dict[str, JobStatus]:
    """Status of many jobs: one ``squeue`` for live ones, one ``sacct`` for the rest.

    ``tasks`` gives the size of array jobs, so an array is never called finished while
    some of its tasks are not yet in the accounting records.
    """
    wanted = set(ids)
    live = parse_squeue(transport.run(["squeue", "-h", "--me", "-r", "-o", SQUEUE_FORMAT], timeout=timeout).stdout)
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
    return {base: _combine(statuses, tasks.get(base, 1)) for base, statuses in by_base.items()}


def _combine(statuses: list[JobStatus], expected: int = 1) -> JobStatus:
    """One status for an array job from its tasks' statuses (a plain job has one)."""
    if len(statuses) == 1 and expected == 1:
        return statuses[0]
    counts: dict[State, int] = {}
    for st in statuses:
        counts[st.state] = counts.get(st.state, 0) + 1
    summary = "array: " + ", ".join(f"{n} {s.value}" for s, n in sorted(counts.items(), key=lambda kv: kv[0].value))
    if State.RUNNING in counts:
        state = State.RUNNING
    elif State.PENDING in counts:
        state = State.PENDING
    elif set(counts) == {State.COMPLETED}:
        state = State.COMPLETED
    else:
        state = next((s for s in _ARRAY_WORST if s in counts), State.UNKNOWN)
    if len(statuses) < expected:
        # Tasks not seen yet (accounting lags behind the end of a task): not finished.
        summary += f", {expected - len(statuses)} not reported yet"
        if state.finished:
            state = State.RUNNING
    starts = [s.start for s in statuses if s.start]
    ends = [s.end for s in statuses if s.end]
    return JobStatus(state=state, reason=summary, start=min(starts) if starts else None,
                     end=max(ends) if ends and state.finished else None)


def cancel(transport: Transport, ids: list[str], timeout: float = 60.0) -> None:
    transport.run(["scancel", *ids], timeout=timeout)


def log_paths(scheduler_id: str, job_name: str, log_dir: str, task: int | None = None) -> tuple[str, str]:
    stem = f"{log_dir}/{safe_job_name(job_name)}-{scheduler_id}" + (f"_{task}" if task is not None else "")
    return f"{stem}.out", f"{stem}.err"
