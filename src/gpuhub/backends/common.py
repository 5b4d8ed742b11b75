"""Pieces every backend's job script shares."""

from __future__ import annotations

import re

from gpuhub.plan import Allocation

_NAME_BAD = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_job_name(name: str) -> str:
    """A scheduler-safe job name; the exact name still reaches the job as $GPUHUB_JOB_NAME."""
    cleaned = _NAME_BAD.sub("_", name).strip("_.-")[:64]
    return cleaned or "gpuhub"


def job_env(alloc: Allocation) -> dict[str, str]:
    """Environment of the job: gpuhub's facts, then site, partition and user values (user wins)."""
    req = alloc.request
    env = {
        "GPUHUB_SITE": alloc.site.name,
        "GPUHUB_JOB_NAME": req.name,
        "GPUHUB_NODES": str(alloc.nodes),
        "GPUHUB_GPUS_PER_NODE": str(alloc.gpus_per_node),
    }
    env.update(alloc.site.env)
    env.update(alloc.partition.env)
    env.update(req.env)
    return env


def setup_lines(alloc: Allocation) -> list[str]:
    return [*alloc.site.setup, *alloc.partition.setup]
