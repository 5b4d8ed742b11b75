"""OAR 2.5 (GRICAD, Grid'5000): a script whose ``#OAR`` lines ``oarsub -S`` reads; ``oarstat -fJ``
to follow it, ``oardel`` to cancel it; ``oarstat`` with ``oarnodes`` for GPU hours and live GPUs.

gpuhub tracks a job by its OAR *array id*: a plain job's array id is its own id, an array's is
its first job's, and a job OAR resubmits (``-t idempotent``, exit 99) keeps it. So one
``oarstat --sql "array_id IN (...)"`` follows every kind of job of a site in one call.
"""

from __future__ import annotations

import re
import shlex
import time
from typing import TYPE_CHECKING, Any, ClassVar

from gpuhub.backends.base import Backend, SiteProblem
from gpuhub.backends.capabilities import CAPABILITIES
from gpuhub.backends.common import combine_tasks, job_env, launch, log_paths, requeue_lead, safe_job_name, setup_lines
from gpuhub.backends.oar_parse import OarJob, parse_oarnodes, parse_oarstat, parse_submit
from gpuhub.errors import GpuhubError, RequestError
from gpuhub.requestdata import array_indices
from gpuhub.states import JobStatus

if TYPE_CHECKING:
    from collections.abc import Callable

    from gpuhub.accounting.collect import Outcome
    from gpuhub.accounting.store import UsageStore
    from gpuhub.exporter.readings import SiteReading
    from gpuhub.plan import Allocation
    from gpuhub.render import RenderedJob
    from gpuhub.site import Site
    from gpuhub.transport.base import Transport

# Options OAR's script scanner (OAR::Sub::scan_script) understands, written "OPTION VALUE": an
# unknown one makes `oarsub -S` fail. gpuhub writes the ones of _OWN itself, from job options.
_SCANNED = re.compile(
    r"^(?:(?:-q|--queue|-p|--property|-t|--type|--notify|-k|--use-job-key|--hold|--signal|--checkpoint"
    r"|-s|--stagein|--stagein-md5sum|-i|--import-job-key-from-file|-e|--export-job-key-to-file"
    r"|-l|--resource|-n|--name|--project|-O|--stdout|-E|--stderr|-a|--anterior|-d|--directory"
    r"|--array|--array-param-file)(?:\s+\S.*)?)$"
)
_OWN = {
    "-l": "--gpus/--nodes/--time", "--resource": "--gpus/--nodes/--time", "-n": "--name", "--name": "--name",
    "--project": "--project", "-O": "the site's log_dir", "--stdout": "the site's log_dir",
    "-E": "the site's log_dir", "--stderr": "the site's log_dir", "-a": "--dependency afterany:ID",
    "--anterior": "--dependency afterany:ID", "-d": "--workdir", "--directory": "--workdir",
    "--array": "--array", "--array-param-file": "--array",
}
_PROPERTY = ("-p", "--property")
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./-]+$")
_FINISHED = ("Terminated", "Error")
CHECKPOINT_SIGNAL = 12  # SIGUSR2, gpuhub's requeue signal, as the number oarsub wants


def oar_walltime(seconds: int) -> str:
    """OAR's hours:minutes:seconds (hours may pass 24)."""
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _split(directive: str) -> tuple[str, str]:
    option, _, value = directive.partition(" ")
    return option, value.strip()


def _directive_problem(directive: str) -> str | None:
    option, _ = _split(directive)
    if not _SCANNED.match(directive):
        return (f"{directive!r} is not an option oarsub reads from #OAR lines; write 'OPTION VALUE', "
                "e.g. '-t besteffort' or \"-p mem_per_gpu > 30\"")
    if option in _OWN:
        return f"{option} is written by gpuhub: use {_OWN[option]} instead"
    return None


def _dependencies(spec: str | None) -> list[str]:
    if not spec:
        return []
    kind, _, ids = spec.partition(":")
    if kind != "afterany" or any(not i.isdigit() for i in ids.split(":")):
        raise RequestError(
            f"dependency {spec!r}: OAR starts a job once the jobs it follows have ended, however they ended; "
            "write it --dependency afterany:ID[:ID...] with OAR job ids")
    return [f"-a {i}" for i in ids.split(":")]


def directives(alloc: Allocation, token: str | None) -> list[str]:
    req, part, site = alloc.request, alloc.partition, alloc.site
    if alloc.mem_mib:
        raise RequestError("--mem: an OAR job gets the memory that goes with the resources it holds; "
                           "ask for a property instead, e.g. --directive \"-p mem_per_gpu > 30\"")
    stem = f"{site.log_dir}/{safe_job_name(req.name)}"
    out = [f"-n {safe_job_name(req.name)}"]
    if part.exclusive or not alloc.gpus_per_node:
        resources = f"/nodes={alloc.nodes}"
    else:
        resources = f"/nodes={alloc.nodes}/{site.oar.gpu_property}={alloc.gpus_per_node}"
    out.append(f"-l {resources},walltime={oar_walltime(alloc.walltime)}")
    properties = [part.constraint] if part.constraint else []
    if part.partition:
        out.append(f"-q {part.partition}")
    if alloc.account:
        out.append(f"--project {alloc.account}")
    out.append(f"-O {stem}-%jobid%.out")
    out.append(f"-E {stem}-%jobid%.err")
    if req.array:
        indices, throttle = array_indices(req.array)
        if throttle:
            raise RequestError(f"array {req.array!r}: OAR cannot limit how many tasks run at once; drop '%{throttle}'")
        out.append(f"--array {len(indices)}")
    out.extend(_dependencies(req.dependency))
    if req.requeue:
        out.append("-t idempotent")
        out.append(f"--checkpoint {requeue_lead(alloc)}")
        out.append(f"--signal {CHECKPOINT_SIGNAL}")
    for where, given in (("site directive", site.directives), ("partition directive", part.directives),
                         ("--directive", req.directives)):
        for d in given:
            problem = _directive_problem(d)
            if problem:
                raise RequestError(f"{where} {d!r}: {problem}")
            option, value = _split(d)
            if option in _PROPERTY:
                properties.append(value)  # oarsub keeps only the last -p line: join them
            else:
                out.append(d)
    if properties:
        joined = properties[0] if len(properties) == 1 else " AND ".join(f"({p})" for p in properties)
        out.insert(2, f"-p {joined}")
    return out


def script_path(log_dir: str, job_name: str, token: str) -> str:
    """Where the job script is written on the login node (OAR runs it from there)."""
    path = f"{log_dir}/{safe_job_name(job_name)}-{token}.oar"
    return path if path.startswith("/") else f"./{path}"


class OarBackend(Backend):
    name = "oar"
    capabilities = CAPABILITIES["oar"]
    files: ClassVar[dict[str, str]] = {"job.oar": "oar.sh.j2"}
    usage_source = "oarstat"

    def check_site(self, site: Site) -> list[SiteProblem]:
        problems = super().check_site(site)
        if not _SAFE_PATH.match(site.log_dir):
            problems.append(SiteProblem(("log_dir",), "on an OAR site log_dir is written into #OAR -O/-E lines: "
                                                      "use letters, digits and _ . / - only"))
        for where, given in [(("directives",), site.directives)] + [
            (("partitions", k, "directives"), p.directives) for k, p in site.partitions.items()
        ]:
            for i, d in enumerate(given):
                problem = _directive_problem(d)
                if problem:
                    problems.append(SiteProblem((*where, str(i)), problem))
        return problems

    def context(self, alloc: Allocation, token: str | None) -> dict[str, Any]:
        req = alloc.request
        indices = array_indices(req.array)[0] if req.array else None
        return {
            "directives": directives(alloc, token),
            "env": job_env(alloc),
            "setup": setup_lines(alloc),
            "array_var": None,  # the template maps OAR's 1..N numbering itself
            "array_indices": " ".join(map(str, indices)) if indices else None,
            "log_stem": shlex.quote(f"{alloc.site.log_dir}/{safe_job_name(req.name)}"),
            # A resubmitted run keeps the array id: the flag and the logs follow the job, not the run.
            "requeue_flag": f"${{OAR_O_WORKDIR:-$PWD}}/{alloc.site.log_dir}/.checkpoint-$OAR_ARRAY_ID",
            "requeue_step": "exit 99  # OAR resubmits an idempotent job that exits 99",
        }

    def submit_argv(self) -> list[str]:
        return ["oarsub", "-S", "./job.oar"]

    def launch(self, alloc: Allocation) -> tuple[list[str], str]:
        if alloc.launcher == "torchrun" and alloc.nodes > 1:
            raise RequestError("--launcher torchrun on OAR starts one node only; for several nodes use "
                               "--launcher none and start the ranks on the hosts of $OAR_NODEFILE")
        return launch(alloc, srun=False)

    # --- a job's life -------------------------------------------------------------------------

    def submit(self, transport: Transport, job: RenderedJob, token: str, timeout: float = 60.0) -> str:
        """Write the script beside the logs (OAR runs it from there), then ``oarsub -S`` it."""
        site = job.allocation.site
        transport.ensure_dir(site.log_dir, timeout=timeout)
        path = script_path(site.log_dir, job.allocation.request.name, token)
        transport.put_text(path, job.files[job.main_file], 0o755)
        result = transport.run(["oarsub", "-S", path], timeout=timeout, check=False)
        if not result.ok:
            why = " ".join((result.stderr.strip() or result.stdout.strip() or "no message").splitlines()[-2:])
            raise GpuhubError(f"oarsub refused the job (exit {result.returncode}): {why}")
        return self.parse_submit(result.stdout)

    def parse_submit(self, stdout: str) -> str:
        return parse_submit(stdout).id

    def find_by_tokens(self, transport: Transport, tokens: list[str], timeout: float = 60.0) -> dict[str, str]:
        """The jobs whose command (the script path) carries one of these tokens, in any state."""
        wanted = [t for t in tokens if re.fullmatch(r"[0-9a-f]+", t)]
        if not wanted:
            return {}
        where = " OR ".join(f"command LIKE '%-{t}.oar%'" for t in wanted)
        jobs = parse_oarstat(transport.run(["oarstat", "-fJ", "--sql", where], timeout=timeout).stdout)
        found: dict[str, str] = {}
        for job in sorted(jobs.values(), key=lambda j: int(j.job_id)):
            for t in wanted:
                if f"-{t}.oar" in job.command and t not in found:
                    found[t] = job.array_id
        return found

    def _jobs(self, transport: Transport, ids: list[str], timeout: float) -> dict[str, list[OarJob]]:
        """{tracked id: the latest run of each of its array jobs}, from one oarstat call."""
        clean = sorted({i for i in ids if i.isdigit()}, key=int)
        if not clean:
            return {}
        where = f"array_id IN ({','.join(clean)})"
        jobs = parse_oarstat(transport.run(["oarstat", "-fJ", "--sql", where], timeout=timeout).stdout)
        latest: dict[tuple[str, int], OarJob] = {}
        for job in jobs.values():
            key = (job.array_id, job.array_index)
            # A resubmitted job (same array id and index, higher id) replaces the run before it.
            if key not in latest or int(job.job_id) > int(latest[key].job_id):
                latest[key] = job
        out: dict[str, list[OarJob]] = {}
        for (array_id, _), job in sorted(latest.items()):
            out.setdefault(array_id, []).append(job)
        return out

    def poll(
        self, transport: Transport, ids: list[str], timeout: float = 60.0, tasks: dict[str, int] | None = None
    ) -> dict[str, JobStatus]:
        tasks = tasks or {}
        return {
            array_id: combine_tasks([j.status for j in runs], tasks.get(array_id, 1))
            for array_id, runs in self._jobs(transport, ids, timeout).items()
        }

    def cancel(self, transport: Transport, ids: list[str], timeout: float = 60.0) -> None:
        """``oardel`` every unfinished job of these arrays; exit 6 ("already killed") is not an error."""
        clean = [i for i in ids if i.isdigit()]
        if len(clean) != len(ids):
            raise GpuhubError(f"not OAR job ids: {', '.join(i for i in ids if not i.isdigit())}")
        where = f"array_id IN ({','.join(clean)}) AND state NOT IN ('Terminated', 'Error')"
        result = transport.run(["oardel", "--sql", where], timeout=timeout, check=False)
        if result.returncode not in (0, 6):
            why = (result.stderr.strip() or result.stdout.strip() or "no message").splitlines()[-1]
            raise GpuhubError(f"oardel failed (exit {result.returncode}): {why}")

    def log_paths(self, scheduler_id: str, job_name: str, log_dir: str, task: int | None = None) -> tuple[str, str]:
        return log_paths(scheduler_id, job_name, log_dir, task)

    # --- accounting and live GPUs ----------------------------------------------------------

    def collect_usage(
        self, store: UsageStore, site: Site, start: str, end: str, chunk: int, out: Outcome,
        progress: Callable[[str], None],
    ) -> None:
        from gpuhub.accounting.oar_usage import collect_oar

        collect_oar(store, site, start, end, chunk, out, progress)

    def read_gpus(self, site: Site, transport: Transport, deadline: float) -> SiteReading:
        from gpuhub.exporter.oar import read

        return read(site, transport, max(1.0, deadline - time.monotonic()))


__all__ = ["OarBackend", "directives", "oar_walltime", "parse_oarnodes", "script_path"]
