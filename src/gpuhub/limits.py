"""Upper bounds on every number a user or a site file gives.

Each is far above what any real site offers, so a legitimate request never meets one; they exist
so that a typo or a hostile value (a 400-digit memory size, ``nan`` seconds) ends in a clear error
instead of an overflow, a memory blow-up or a busy loop.
"""

from __future__ import annotations

MAX_GPUS = 100_000  # GPUs of one job (the largest machines have a few tens of thousands)
MAX_NODES = 20_000  # nodes of one job
MAX_GPUS_PER_NODE = 64
MAX_CPUS = 8_192  # CPU cores per GPU or per node
MAX_MEMORY_MIB = 64 * 1024 * 1024  # 64 TiB per node
MAX_GPU_MEMORY_GB = 10_000.0
MAX_WALLTIME = 366 * 86400  # one year, in seconds
MAX_ARRAY_INDEX = 10_000_000  # Slurm's MaxArraySize cannot exceed 4000001
MAX_ARRAY_TASKS = 1_000_000
MAX_JOB_ID = 2**63 - 1  # a gpuhub id is an SQLite integer
MAX_LIST_LIMIT = 1_000_000  # `gpuhub jobs --limit`
MAX_INTERVAL = 86_400.0  # seconds between polls
MAX_TIMEOUT = 3_600.0  # seconds one command may take
MAX_SSH_PERSIST = 86_400  # seconds a kept SSH connection waits for the next command
MAX_NAME = 256  # characters of a job name
MAX_SITE_NAME = 64  # characters of a site name
MAX_NORMALIZATION = 1_000.0  # GPU-hour weight of one model


def ssh_persist_seconds(raw: str) -> int | None:
    """``GPUHUB_SSH_PERSIST``'s seconds, or None when it is not a number from 0 to
    MAX_SSH_PERSIST. Import-free: every command checks the variable at start."""
    try:
        value = int(raw.strip())
    except ValueError:
        return None
    return value if 0 <= value <= MAX_SSH_PERSIST else None
