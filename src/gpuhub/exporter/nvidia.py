"""Lab servers and this machine (no scheduler): ``nvidia-smi`` and its pure parser.

One command per poll prints two CSV blocks (``--format=csv,noheader,nounits``): the GPUs, then
the compute processes. A GPU with at least one compute process counts as allocated, the others
as idle; a GPU nvidia-smi cannot read (a field such as ``[GPU requires reset]`` or
``[Unknown Error]``) counts as unavailable.
"""

from __future__ import annotations

import time

from gpuhub.exporter.readings import NodeGpus, SiteReading, model_from_device_name
from gpuhub.transport.base import CommandError, Transport

MARK = "#gpuhub-compute-apps"
GPU_QUERY = "index,uuid,name,memory.used,memory.total"
# ';' rather than '&&': nvidia-smi exits non-zero when one GPU is in trouble yet still lists the others.
SCRIPT = (
    f"nvidia-smi --query-gpu={GPU_QUERY} --format=csv,noheader,nounits; echo '{MARK}'; "
    "nvidia-smi --query-compute-apps=gpu_uuid,pid --format=csv,noheader"
)
ARGV = ["sh", "-c", SCRIPT]


def parse(stdout: str, node: str = "localhost") -> SiteReading:
    gpus_part, _, apps_part = stdout.partition(MARK)
    busy = {line.split(",", 1)[0].strip() for line in apps_part.splitlines() if line.strip()}
    up: dict[str, int] = {}
    used: dict[str, int] = {}
    down: dict[str, int] = {}
    for line in gpus_part.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 5:
            continue
        _index, uuid, name, mem_used, mem_total = fields[:5]
        model = model_from_device_name(name) if not name.startswith("[") else "unknown"
        if any(f.startswith("[") for f in (uuid, mem_used, mem_total)):
            down[model] = down.get(model, 0) + 1
            continue
        up[model] = up.get(model, 0) + 1
        if uuid in busy:
            used[model] = used.get(model, 0) + 1
    nodes = [NodeGpus(node, True, up, used)] if up else []
    if down:
        nodes.append(NodeGpus(node, False, down, {}))
    return SiteReading(nodes=nodes)


def read(transport: Transport, deadline: float, node: str = "localhost", expect_gpus: bool = True) -> SiteReading:
    """The machine's GPUs. Where the site file declares none (``gpus_per_node: 0``), a machine
    without a working nvidia-smi is up with no GPUs, not down."""
    result = transport.run(ARGV, timeout=max(0.5, deadline - time.monotonic()), check=False)
    reading = parse(result.stdout, node)
    if not any(n.total for n in reading.nodes) and (result.returncode != 0 or MARK not in result.stdout):
        if not expect_gpus:
            return SiteReading(nodes=[NodeGpus(node, True, {}, {})])
        raise CommandError(result, transport.where)  # no GPU listed and a failure: nvidia-smi missing or broken
    return reading
