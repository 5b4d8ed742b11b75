"""In-job helper: who am I in the distributed job, and where is the rendezvous?

A training script calls :func:`setup` (or :func:`init_process_group`) and gets the same answer
whatever started it: torchrun, one Slurm task per GPU (``srun``), HTCondor, a lab server or a
plain ``python train.py``. It also sets the variables ``torch.distributed`` reads with
``init_method="env://"``: ``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``.

Only the standard library is imported here; torch is imported by :func:`init_process_group`.
"""

from __future__ import annotations

import os
import re
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

BASE_PORT, PORT_SPAN = 10000, 20000  # MASTER_PORT = 10000 + job id % 20000, as IDRIS's idr_torch


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    master_addr: str
    master_port: int
    launcher: str  # torchrun, slurm, single

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def expand_hostlist(spec: str) -> list[str]:
    """Slurm host list -> names: ``n[1-3,7],gpu01`` -> ``n1 n2 n3 n7 gpu01`` (zero padding kept)."""
    hosts: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", spec):
        match = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", part)
        if not match:
            hosts.append(part)
            continue
        prefix, ranges, suffix = match.groups()
        for item in ranges.split(","):
            lo, _, hi = item.partition("-")
            width = len(lo)
            for number in range(int(lo), int(hi or lo) + 1):
                hosts.append(f"{prefix}{number:0{width}d}{suffix}")
    return hosts


def _int(name: str, default: int | None = None) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def info() -> DistInfo:
    """Read the launcher's environment (nothing is changed)."""
    env = os.environ
    job_id = _int("SLURM_JOB_ID")
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
    default_addr = expand_hostlist(nodelist)[0] if nodelist else "127.0.0.1"
    default_port = BASE_PORT + job_id % PORT_SPAN if job_id is not None else None
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun, or gpuhub's srun launcher
        return DistInfo(
            rank=int(env["RANK"]),
            local_rank=_int("LOCAL_RANK", 0) or 0,
            world_size=int(env["WORLD_SIZE"]),
            local_world_size=_int("LOCAL_WORLD_SIZE", 1) or 1,
            master_addr=env.get("MASTER_ADDR", default_addr),
            master_port=_int("MASTER_PORT", default_port) or _free_port(),
            launcher="torchrun" if "TORCHELASTIC_RUN_ID" in env else "slurm",
        )
    if "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:  # inside an srun step
        return DistInfo(
            rank=int(env["SLURM_PROCID"]),
            local_rank=_int("SLURM_LOCALID", 0) or 0,
            world_size=_int("SLURM_STEP_NUM_TASKS") or _int("SLURM_NTASKS", 1) or 1,
            local_world_size=_int("SLURM_NTASKS_PER_NODE", 1) or 1,
            master_addr=env.get("MASTER_ADDR", default_addr),
            master_port=_int("MASTER_PORT", default_port) or _free_port(),
            launcher="slurm",
        )
    return DistInfo(0, 0, 1, 1, env.get("MASTER_ADDR", "127.0.0.1"), _int("MASTER_PORT") or _free_port(), "single")


def setup() -> DistInfo:
    """:func:`info`, and export what ``init_method="env://"`` needs (existing values are kept)."""
    found = info()
    for name, value in (
        ("MASTER_ADDR", found.master_addr),
        ("MASTER_PORT", found.master_port),
        ("RANK", found.rank),
        ("WORLD_SIZE", found.world_size),
        ("LOCAL_RANK", found.local_rank),
        ("LOCAL_WORLD_SIZE", found.local_world_size),
    ):
        os.environ.setdefault(name, str(value))
    return found


def init_process_group(backend: str | None = None, **kwargs: object) -> DistInfo:
    """``torch.distributed.init_process_group`` with the right environment; NCCL on GPUs, else Gloo."""
    import torch
    import torch.distributed as dist

    found = setup()
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(found.local_rank)
    dist.init_process_group(backend=backend, init_method="env://", **kwargs)  # type: ignore[arg-type]
    return found


class Preemption:
    """Tells the training loop to checkpoint: the job was signalled (``--requeue``: USR2 before the time
    limit) or gpuhub's flag file appeared (reaches every rank, also under torchrun)."""

    def __init__(self, signum: int = signal.SIGUSR2) -> None:
        self.signalled = False
        self.flag = os.environ.get("GPUHUB_CHECKPOINT_FLAG")
        signal.signal(signum, self._handler)

    def _handler(self, signum: int, frame: object) -> None:
        self.signalled = True

    @property
    def requested(self) -> bool:
        return self.signalled or bool(self.flag and Path(self.flag).exists())


def restart_count() -> int:
    """How many times Slurm has requeued this job (0 on the first run)."""
    return _int("SLURM_RESTART_COUNT", 0) or 0
