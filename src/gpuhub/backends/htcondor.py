"""HTCondor: a submit description plus the wrapper script it runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from gpuhub.backends.base import Backend, Capabilities
from gpuhub.backends.common import job_env, safe_job_name, setup_lines
from gpuhub.errors import GpuhubError, RequestError

if TYPE_CHECKING:
    from gpuhub.exporter.readings import SiteReading
    from gpuhub.plan import Allocation
    from gpuhub.render import RenderedJob
    from gpuhub.site import Site
    from gpuhub.states import JobStatus
    from gpuhub.transport.base import Transport


def array_indices(spec: str) -> tuple[list[int], int | None]:
    body, _, throttle = spec.partition("%")
    indices: list[int] = []
    for chunk in body.split(","):
        rng, _, step = chunk.partition(":")
        lo, _, hi = rng.partition("-")
        indices.extend(range(int(lo), int(hi or lo) + 1, int(step or 1)))
    return indices, int(throttle) if throttle else None


def _context(alloc: Allocation, token: str | None) -> dict[str, Any]:
    req = alloc.request
    lines = []
    for d in [*alloc.site.directives, *alloc.partition.directives, *req.directives]:
        if "=" not in d or d.startswith("-"):
            raise RequestError(f"directive {d!r}: an HTCondor submit line looks like 'key = value'")
        lines.append(d)
    indices, throttle = array_indices(req.array) if req.array else (None, None)
    return {
        "batch_name": safe_job_name(req.name),
        "submit_lines": lines,
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
    capabilities = Capabilities(arrays=True, usage=False)
    files: ClassVar[dict[str, str]] = {"job.sub": "htcondor.sub.j2", "job.sh": "htcondor.sh.j2"}
    plain_files = frozenset({"job.sub"})  # a submit description: shell quoting means nothing there

    def context(self, alloc: Allocation, token: str | None) -> dict[str, Any]:
        return _context(alloc, token)

    def submit_argv(self) -> list[str]:
        return ["condor_submit", "-terse", "job.sub"]

    def _unsupported(self) -> GpuhubError:
        return GpuhubError("HTCondor sites can be rendered (`gpuhub render`) but not yet submitted to")

    def submit(self, transport: Transport, job: RenderedJob, token: str, timeout: float = 60.0) -> str:
        raise self._unsupported()

    def parse_submit(self, stdout: str) -> str:
        raise self._unsupported()

    def find_by_tokens(self, transport: Transport, tokens: list[str], timeout: float = 60.0) -> dict[str, str]:
        raise self._unsupported()

    def poll(
        self, transport: Transport, ids: list[str], timeout: float = 60.0, tasks: dict[str, int] | None = None
    ) -> dict[str, JobStatus]:
        raise self._unsupported()

    def cancel(self, transport: Transport, ids: list[str], timeout: float = 60.0) -> None:
        raise self._unsupported()

    def log_paths(self, scheduler_id: str, job_name: str, log_dir: str, task: int | None = None) -> tuple[str, str]:
        proc = task or 0
        return f"{log_dir}/{scheduler_id}.{proc}.out", f"{log_dir}/{scheduler_id}.{proc}.err"

    def read_gpus(self, site: Site, transport: Transport, deadline: float) -> SiteReading:
        from gpuhub.exporter import htcondor as probe

        return probe.read(transport, deadline)
