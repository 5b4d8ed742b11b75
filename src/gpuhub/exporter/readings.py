"""What one poll of a site learns, whatever its scheduler: nodes with their GPUs, and queued jobs.

GPU types stay as the scheduler names them (a Slurm GRES type such as ``a100`` or
``a100_1g.10gb``, ``""`` when untyped); :mod:`gpuhub.exporter.samples` maps them to the
site's ``gpu_model`` names.
"""

from __future__ import annotations

import re

from gpuhub.record import Factory, Record

# Job states as exported: a small fixed set, whatever the scheduler calls them.
JOB_STATES = ("pending", "held", "running", "completing", "suspended", "other")
# Jobs in these states hold GPUs.
HOLDING_STATES = frozenset({"running", "completing", "suspended"})


class NodeGpus(Record):
    """The GPUs of one node (one machine, one HTCondor startd)."""

    name: str
    available: bool  # False: down, drained, failing... its free GPUs cannot be handed out
    total: dict[str, int]  # GPU type -> GPUs configured
    used: dict[str, int]  # GPU type -> GPUs allocated to jobs
    partitions: tuple[str, ...] = ()
    features: frozenset[str] = frozenset()
    per_host: bool = False  # also exported by host (lab servers: a few named machines)


class QueueJob(Record):
    """One job (one array task) in the queue. Never carries its id: ids are not labels."""

    state: str  # one of JOB_STATES
    gpus: dict[str, int]  # GPU type -> GPUs asked (pending) or allocated (running); "" = untyped
    partition: str = ""
    account: str = ""
    user: str = ""


class SiteReading(Record):
    nodes: list[NodeGpus] = Factory(list)
    jobs: list[QueueJob] | None = None  # None: this kind of site has no queue to read
    default_partition: str | None = None


# Words dropped from a device name before it becomes a model label ("NVIDIA A100-SXM4-40GB" -> a100).
_VENDOR_WORDS = {"nvidia", "tesla", "geforce", "quadro", "amd", "instinct", "radeon", "intel", "data", "center"}
# Compiled on first use (re keeps it): planning from readings names no device.
_FORM_FACTOR = r"\d+gb|hbm\d*e?|pcie|sxm\d*|nvl|mig|\d+g\.\d+gb"


def model_from_device_name(name: str) -> str:
    """A short lower-case model label from a device name as NVML or HTCondor report it.

    ``NVIDIA A100-SXM4-40GB`` -> ``a100``, ``Tesla V100-PCIE-32GB`` -> ``v100``,
    ``NVIDIA H100 80GB HBM3`` -> ``h100``, ``NVIDIA GeForce RTX 2080 Ti`` -> ``rtx2080ti``.
    """
    text = name.strip().strip('"').split("-", 1)[0].lower()
    words = [w for w in re.split(r"[\s_]+", text) if w and w not in _VENDOR_WORDS and not re.fullmatch(_FORM_FACTOR, w)]
    model = re.sub(r"[^a-z0-9.]", "", "".join(words))
    return model or "unknown"
