"""Slurm accounting records: the ``sacct`` command gpuhub runs and pure parsers of its output.

Rules (see docs/accounting.md):

* ``-X`` (allocation lines only: step lines repeat the job's GPUs), ``-D`` (every run of a requeued
  job, told apart by its Submit time), ``-P`` with a fixed ``--format``, explicit ``-S``/``-E`` in UTC.
* GPUs come from AllocTRES: ``gres/gpu=N`` when present, otherwise the sum of the typed
  ``gres/gpu:TYPE=N`` entries, never both added. The GPU model is the typed key (several: joined
  with ``+``), else the model of the site partition the job ran in.
* A run that never started (pending) is skipped; one still running (End ``Unknown``) is provisional.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from gpuhub.accounting.records import UsageRow

FIELDS = (
    "JobIDRaw", "JobID", "User", "Account", "Partition", "QOS", "State", "Submit", "Start", "End",
    "ElapsedRaw", "AllocTRES", "NNodes", "AllocCPUS", "Cluster",
)
FORMAT = ",".join(FIELDS)
_NFIELDS = len(FIELDS)
_NO_TIME = frozenset({"Unknown", "None", "", "N/A"})
_CACHE_LIMIT = 50_000  # distinct AllocTRES strings kept; bounded so memory stays flat on any input


def sacct_argv(start: str, end: str, all_users: bool) -> list[str]:
    """The collector's command. ``env`` makes the remote sacct print and read times in UTC, in the
    ISO form, whatever the login shell sets (``TZ``, ``SLURM_TIME_FORMAT``)."""
    argv = ["env", "TZ=UTC", "SLURM_TIME_FORMAT=standard", "sacct", "-X", "-D", "-P", "--noheader", "--noconvert",
            "-S", start, "-E", end, f"--format={FORMAT}"]
    if all_users:
        argv.append("--allusers")
    return argv


@dataclass(frozen=True)
class GpuAlloc:
    gpus: float
    model: str  # from the typed keys; "" when AllocTRES has only gres/gpu=N
    tres: str  # the gres/gpu entries, as found


NO_GPU = GpuAlloc(0, "", "")


def parse_alloc_tres(text: str) -> GpuAlloc:
    """GPUs in an AllocTRES string.

    >>> parse_alloc_tres("billing=1,cpu=1,gres/gpu:a100=2,gres/gpu=2,mem=1024M,node=1")
    GpuAlloc(gpus=2.0, model='a100', tres='gres/gpu:a100=2,gres/gpu=2')
    """
    if "gres/gpu" not in text:
        return NO_GPU
    total: float | None = None
    typed: dict[str, float] = {}
    kept = []
    for item in text.split(","):
        key, _, value = item.partition("=")
        if key == "gres/gpu":
            total = _number(value)
        elif key.startswith("gres/gpu:"):
            name = key[len("gres/gpu:"):]
            typed[name] = typed.get(name, 0.0) + _number(value)
        else:
            continue  # gres/gpumem, gres/gpuutil and the rest are not GPU counts
        kept.append(item)
    gpus = total if total is not None else sum(typed.values())
    model = "+".join(sorted(name for name, n in typed.items() if n > 0))
    return GpuAlloc(float(gpus), model, ",".join(kept))


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


@dataclass
class ParseStats:
    lines: int = 0
    malformed: int = 0
    pending: int = 0
    no_gpu: int = 0
    running: int = 0
    rows: int = 0
    first_bad: str | None = None

    def bad(self, line: str) -> None:
        self.malformed += 1
        if self.first_bad is None:
            self.first_bad = line.rstrip("\n")[:200]


ModelResolver = Callable[[str, str], str]


def plain_model(typed: str, partition: str) -> str:
    return typed


class _Cache(dict):  # type: ignore[type-arg]
    """A dict that computes what it lacks (bounded, so memory stays flat on any input)."""

    def __init__(self, compute: Callable[[Any], Any], limit: int = _CACHE_LIMIT) -> None:
        super().__init__()
        self.compute, self.limit = compute, limit

    def __missing__(self, key: Any) -> Any:
        if len(self) >= self.limit:
            self.clear()
        value = self[key] = self.compute(key)
        return value


def _gpu_info(key: tuple[str, str], resolve_model: ModelResolver) -> tuple[int | float, str, str] | None:
    tres, partition = key
    alloc = parse_alloc_tres(tres)
    if not alloc.gpus:
        return None
    gpus = int(alloc.gpus) if alloc.gpus.is_integer() else alloc.gpus
    return gpus, resolve_model(alloc.model, partition), alloc.tres


_new_row = tuple.__new__  # a UsageRow without the Python-level __new__ (a quarter of the parse time)


def parse_sacct(
    lines: Iterable[str], resolve_model: ModelResolver = plain_model, stats: ParseStats | None = None
) -> Iterator[UsageRow]:
    """Lines of ``sacct -P`` with :data:`FORMAT` -> one :class:`UsageRow` per started run with GPUs.

    Streams (one line at a time). ``resolve_model(typed_model, partition)`` names the GPU model for
    reports (the site's ``gpu_model`` for a GRES type or a partition). Malformed lines are counted
    in ``stats``, not raised: one odd line must not stop a month's collection.
    """
    stats = stats if stats is not None else ParseStats()
    gpu_of = _Cache(lambda key: _gpu_info(key, resolve_model))
    clusters = _Cache(str.rstrip)  # the last field carries the newline
    no_time = _NO_TIME
    lines_seen = pending = no_gpu = running = rows = 0
    try:
        for line in lines:
            lines_seen += 1
            fields = line.split("|")
            if len(fields) != _NFIELDS:
                if line.strip():
                    stats.bad(line)
                else:
                    lines_seen -= 1
                continue
            (job_id, job_ref, user, account, partition, qos, state, submit, start, end, elapsed, tres, nnodes, ncpus,
             cluster) = fields
            if start in no_time:
                pending += 1
                continue
            gpu = gpu_of[(tres, partition)]
            if gpu is None:
                no_gpu += 1
                continue
            if end in no_time:
                end = None
                running += 1
            try:
                wall, nodes, cpus = int(elapsed), int(nnodes), int(ncpus)
                # A cheap shape check (a regex per field would cost a third of the parse): catches the
                # relative or locale formats a login shell's SLURM_TIME_FORMAT may impose.
                if start[10] != "T" or submit[10] != "T" or start[4] != "-" or (end is not None and end[10] != "T"):
                    raise ValueError(start)
            except (ValueError, IndexError):
                if end is None:
                    running -= 1
                stats.bad(line)
                continue
            if " " in state or "+" in state:
                state = state.split(" ", 1)[0].rstrip("+")  # "CANCELLED by 1000"
            rows += 1
            yield _new_row(UsageRow, (
                clusters[cluster], job_id, None if job_ref == job_id else job_ref, submit, start, end, wall, nodes,
                cpus, user, account, partition, qos, state, gpu[2], gpu[0], gpu[1],
            ))
    finally:
        stats.lines += lines_seen
        stats.pending += pending
        stats.no_gpu += no_gpu
        stats.running += running
        stats.rows += rows
