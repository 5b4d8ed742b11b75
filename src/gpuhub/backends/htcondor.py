"""HTCondor: a submit description plus the wrapper script it runs, ``condor_submit -terse`` to send
them, ``condor_q``/``condor_history -json`` to follow jobs, ``condor_rm``, ``condor_history`` for
usage and ``condor_status``/``condor_q`` for live GPUs. Over SSH to a submit host, or on this
machine when the site has no ``connection``.

A submission is a directory ``~/.gpuhub/condor/<token>`` holding ``job.sub`` and ``job.sh``;
``condor_submit`` runs there. Logs go to ``log_dir`` under the home directory, one pair per
proc (``<cluster>.<proc>.out``), as on Slurm. A gpuhub job is one cluster: its id is the
ClusterId, an array's tasks are its procs. Each job carries ``+GpuhubToken``, by which a
submission whose answer was lost is found again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from gpuhub.backends.base import Backend, SiteProblem
from gpuhub.backends.capabilities import CAPABILITIES
from gpuhub.backends.common import combine_tasks, job_env, safe_job_name, setup_lines
from gpuhub.backends.htcondor_parse import job_status, parse_ads, parse_terse, token_constraint
from gpuhub.errors import RequestError
from gpuhub.requestdata import array_indices
from gpuhub.transport.base import CommandError
from gpuhub.values import TOKEN_RE

if TYPE_CHECKING:
    from collections.abc import Callable

    from gpuhub.accounting.collect import Outcome
    from gpuhub.accounting.store import UsageStore
    from gpuhub.exporter.readings import SiteReading
    from gpuhub.plan import Allocation
    from gpuhub.render import RenderedJob
    from gpuhub.site import Site
    from gpuhub.states import JobStatus
    from gpuhub.transport.base import Transport

JOBS_ROOT = "~/.gpuhub/condor"
# What status needs from a job ad (projection keeps condor_q and condor_history answers small).
STATUS_ATTRS = ("ClusterId,ProcId,JobStatus,HoldReason,HoldReasonCode,RemoveReason,ExitCode,ExitBySignal,"
                "ExitSignal,JobStartDate,JobCurrentStartDate,CompletionDate,EnteredCurrentStatus,RemoteHost,"
                "LastRemoteHost")
# cd into the submission's directory ($1, ~/ understood), then run the submit command.
_IN_DIR = 'd=$1; shift; case $d in "~/"*) d=$HOME/${d#"~/"} ;; esac; cd -- "$d" && exec "$@"'


def _submit_line(d: str) -> bool:
    return "=" in d and not d.startswith("-")


def _gpu_requirements(alloc: Allocation) -> tuple[list[str], str | None]:
    """Submit lines asking for GPU properties, or a ``require_gpus`` expression for older pools."""
    part = alloc.partition
    if not alloc.gpus_per_node or (part.gpu_memory_gb is None and part.gpu_capability is None):
        return [], None
    memory_mb = int(part.gpu_memory_gb * 1024) if part.gpu_memory_gb is not None else None
    if alloc.site.htcondor.gpu_requirements == "require_gpus":
        terms = []
        if memory_mb is not None:
            terms.append(f"GlobalMemoryMb >= {memory_mb}")
        if part.gpu_capability is not None:
            terms.append(f"Capability >= {part.gpu_capability:g}")
        return [], " && ".join(terms)
    lines = []
    if memory_mb is not None:
        lines.append(f"gpus_minimum_memory = {memory_mb}")
    if part.gpu_capability is not None:
        lines.append(f"gpus_minimum_capability = {part.gpu_capability:g}")
    return lines, None


def _context(alloc: Allocation, token: str | None) -> dict[str, Any]:
    req = alloc.request
    for d in req.directives:
        if not _submit_line(d):
            raise RequestError(f"directive {d!r}: an HTCondor submit line looks like 'key = value'")
    indices, throttle = array_indices(req.array) if req.array else (None, None)
    gpu_lines, require_gpus = _gpu_requirements(alloc)
    log_dir = alloc.site.log_dir
    if not TOKEN_RE.fullmatch(log_dir):
        raise RequestError(f"log_dir {log_dir!r} cannot be written into a submit description")
    # condor_submit runs in the submission's directory: a relative log_dir is taken from the home
    # directory, as on Slurm, through the $ENV() macro of the submit language.
    log_base = log_dir if log_dir.startswith("/") else f"$ENV(HOME)/{log_dir}"
    return {
        "batch_name": safe_job_name(req.name),
        "submit_lines": [*alloc.site.directives, *alloc.partition.directives, *gpu_lines, *req.directives],
        "require_gpus": require_gpus,
        "log_base": log_base,
        "indices": indices,
        "throttle": throttle,
        "token": token,
        "env": job_env(alloc),
        "setup": setup_lines(alloc),
        "array_var": "GPUHUB_ARRAY_INDEX" if req.array else None,
        "cpus": alloc.cpus_per_task or 1,
    }


class HTCondorBackend(Backend):
    name = "htcondor"
    capabilities = CAPABILITIES["htcondor"]
    files: ClassVar[dict[str, str]] = {"job.sub": "htcondor.sub.j2", "job.sh": "htcondor.sh.j2"}
    plain_files = frozenset({"job.sub"})  # a submit description: shell quoting means nothing there
    usage_source = "condor_history"

    def check_site(self, site: Site) -> list[SiteProblem]:
        problems = super().check_site(site)
        for where, directives in [(("directives",), site.directives)] + [
            (("partitions", k, "directives"), p.directives) for k, p in site.partitions.items()
        ]:
            for i, d in enumerate(directives):
                if not _submit_line(d):
                    problems.append(SiteProblem((*where, str(i)),
                                                f"HTCondor directive {d!r} must be a submit line 'key = value'"))
        return problems

    def context(self, alloc: Allocation, token: str | None) -> dict[str, Any]:
        return _context(alloc, token)

    def submit_argv(self) -> list[str]:
        return ["condor_submit", "-terse", "job.sub"]

    # --- a job's life -------------------------------------------------------------------------

    def submit(self, transport: Transport, job: RenderedJob, token: str, timeout: float = 60.0) -> str:
        """Write the files into the submission's directory and run condor_submit there."""
        # condor_submit refuses a log file it cannot open; commands start in the home directory,
        # where a relative log_dir is.
        transport.ensure_dir(job.allocation.site.log_dir, timeout=timeout)
        directory = f"{JOBS_ROOT}/{token}"
        for name, text in job.files.items():
            transport.put_text(f"{directory}/{name}", text, 0o755 if name.endswith(".sh") else 0o644)
        result = transport.run(["bash", "-c", _IN_DIR, "gpuhub-submit", directory, *job.submit_argv],
                               timeout=timeout)
        return self.parse_submit(result.stdout)

    def parse_submit(self, stdout: str) -> str:
        return parse_terse(stdout)

    def find_by_tokens(self, transport: Transport, tokens: list[str], timeout: float = 60.0) -> dict[str, str]:
        """Jobs carrying these tokens, in the queue, then in the history for the rest."""
        found: dict[str, str] = {}
        for command in ("condor_q", "condor_history"):
            rest = [t for t in tokens if t not in found]
            if not rest:
                break
            argv = [command, "-json", "-constraint", token_constraint(rest), "-attributes", "ClusterId,GpuhubToken"]
            for ad in parse_ads(transport.run(argv, timeout=timeout).stdout):
                token, cluster = ad.text("GpuhubToken"), ad.number("ClusterId")
                if token in rest and cluster is not None:
                    found[token] = str(int(cluster))
        return found

    def poll(
        self, transport: Transport, ids: list[str], timeout: float = 60.0, tasks: dict[str, int] | None = None
    ) -> dict[str, JobStatus]:
        """One ``condor_q`` for all of the user's queued jobs; one ``condor_history`` for clusters
        that left the queue (or whose array has procs missing from it)."""
        wanted, tasks = set(ids), tasks or {}
        procs: dict[str, dict[int, JobStatus]] = {}
        queue = transport.run(["condor_q", "-json", "-attributes", STATUS_ATTRS], timeout=timeout)
        _collect(parse_ads(queue.stdout), wanted, procs)
        missing = sorted(c for c in wanted if len(procs.get(c, {})) < tasks.get(c, 1))
        if missing:
            argv = ["condor_history", "-json", "-constraint", " || ".join(f"ClusterId == {int(c)}" for c in missing),
                    "-attributes", STATUS_ATTRS]
            _collect(parse_ads(transport.run(argv, timeout=timeout).stdout), set(missing), procs)
        return {c: combine_tasks([procs[c][p] for p in sorted(procs[c])], tasks.get(c, 1)) for c in procs}

    def cancel(self, transport: Transport, ids: list[str], timeout: float = 60.0) -> None:
        """``condor_rm`` of every cluster in one call; a cluster already gone is not an error."""
        if not ids:
            return
        result = transport.run(["condor_rm", *[str(int(i)) for i in ids]], timeout=timeout, check=False)
        refused = [line for line in result.stderr.splitlines()
                   if line.strip() and "couldn't find" not in line.lower()]
        if result.returncode != 0 and refused:
            raise CommandError(result, transport.where)

    def log_paths(self, scheduler_id: str, job_name: str, log_dir: str, task: int | None = None) -> tuple[str, str]:
        stem = f"{log_dir}/{scheduler_id}.{task or 0}"
        return f"{stem}.out", f"{stem}.err"

    # --- accounting and live GPUs ---------------------------------------------------------------

    def collect_usage(
        self, store: UsageStore, site: Site, start: str, end: str, chunk: int, out: Outcome,
        progress: Callable[[str], None],
    ) -> None:
        from gpuhub.accounting.condor_collect import collect_history

        collect_history(store, site, start, end, out, progress)

    def read_gpus(self, site: Site, transport: Transport, deadline: float) -> SiteReading:
        from gpuhub.exporter import htcondor as probe

        return probe.read(transport, deadline)


def _collect(ads: list, wanted: set[str], procs: dict[str, dict[int, JobStatus]]) -> None:
    for ad in ads:
        cluster, proc = ad.number("ClusterId"), ad.number("ProcId")
        if cluster is None:
            continue
        key = str(int(cluster))
        if key in wanted:
            procs.setdefault(key, {}).setdefault(int(proc or 0), job_status(ad))
