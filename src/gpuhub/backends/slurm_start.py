"""When Slurm expects a job to start: ``sbatch --test-only`` with the job's own script.

``--test-only`` validates the job like a submission (account, QoS, partition, limits) and asks
the scheduler for its start estimate without queueing anything. It answers on stderr:
``sbatch: Job 123 to start at 2026-12-03T10:04:45 using 8 processors on nodes n1 in partition gpu``.
A refusal is an ``sbatch: error: ...`` line and a non-zero exit.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING

from gpuhub.errors import GpuhubError

if TYPE_CHECKING:
    from gpuhub.plan import Allocation
    from gpuhub.transport.base import Transport

TEST_ONLY_ARGV = ["sbatch", "--test-only"]
NOTE = "sbatch --test-only"
_START = re.compile(r"to start at (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)")
_ERROR = re.compile(r"^sbatch: error: (?:Batch job submission failed: )?(.+)$", re.MULTILINE)


class Refused(GpuhubError):
    """The scheduler would not accept the job (unknown account, over a limit...)."""


def parse_test_only(returncode: int, stdout: str, stderr: str) -> datetime | None:
    """The expected start (the login node's local time), None when not given; Refused on refusal."""
    text = f"{stderr}\n{stdout}"
    if returncode != 0:
        errors = _ERROR.findall(text)
        raise Refused("refused by sbatch --test-only: " + ("; ".join(e.strip() for e in errors)
                                                          or text.strip()[-200:] or f"exit {returncode}"))
    match = _START.search(text)
    return datetime.fromisoformat(match.group(1)) if match else None


def expected_start(transport: Transport, alloc: Allocation, timeout: float) -> tuple[datetime | None, str]:
    from gpuhub.render import render

    job = render(alloc, token=None)
    result = transport.run(TEST_ONLY_ARGV, stdin=job.files[job.stdin_file or job.main_file], timeout=timeout,
                           check=False)
    start = parse_test_only(result.returncode, result.stdout, result.stderr)
    return start, NOTE if start else "no start estimate from sbatch --test-only"
