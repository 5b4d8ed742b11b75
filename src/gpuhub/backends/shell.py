"""Lab servers with no scheduler (``ssh``) and this machine (``local``): a plain bash script."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gpuhub.backends.common import job_env, setup_lines

if TYPE_CHECKING:
    from gpuhub.plan import Allocation

FILES = {"job.sh": "shell.sh.j2"}
STDIN = None


def submit_argv() -> list[str]:
    return ["bash", "job.sh"]


def context(alloc: Allocation, token: str | None) -> dict[str, Any]:
    env = job_env(alloc)
    if token:
        env["GPUHUB_TOKEN"] = token
    return {"directives": [], "env": env, "setup": setup_lines(alloc), "array_var": None}
