"""HTCondor: a submit description plus the wrapper script it runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gpuhub.backends.common import job_env, safe_job_name, setup_lines
from gpuhub.errors import RequestError

if TYPE_CHECKING:
    from gpuhub.plan import Allocation

FILES = {"job.sub": "htcondor.sub.j2", "job.sh": "htcondor.sh.j2"}
STDIN = None


def submit_argv() -> list[str]:
    return ["condor_submit", "-terse", "job.sub"]


def array_indices(spec: str) -> tuple[list[int], int | None]:
    body, _, throttle = spec.partition("%")
    indices: list[int] = []
    for chunk in body.split(","):
        rng, _, step = chunk.partition(":")
        lo, _, hi = rng.partition("-")
        indices.extend(range(int(lo), int(hi or lo) + 1, int(step or 1)))
    return indices, int(throttle) if throttle else None


def context(alloc: Allocation, token: str | None) -> dict[str, Any]:
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
