"""Free GPUs and queued demand of one partition, from one probe reading of its site (pure).

The reading is what the site's probe returns (nodes with GPUs by type, queued jobs); GPU types
are matched to the partition's ``gpu_model`` the way the exporter names them, so ``gpuhub
plan``, ``gpuhub gpus`` and the exporter agree on what is free.
"""

from __future__ import annotations

import re
from datetime import datetime

from gpuhub.exporter.readings import HOLDING_STATES, NodeGpus, SiteReading
from gpuhub.exporter.samples import ANY_MODEL, GpuModels
from gpuhub.plan import Allocation
from gpuhub.record import Record

_SIMPLE = re.compile(r"^[A-Za-z0-9_.-]+$")


class PartitionLive(Record):
    """What a partition can give a job right now."""

    total: int  # GPUs of the job's model in the partition, available nodes or not
    free: int  # idle GPUs of that model on available nodes
    running: int  # GPUs held by jobs in the partition
    queued: int  # GPUs asked by pending jobs in the partition (that model or untyped)
    fits_now: bool  # enough nodes each with enough idle GPUs for the job's shape
    start: datetime | None = None  # the scheduler's expected start, where it gives one
    start_note: str = ""  # where ``start`` comes from, or why it is missing


def _in_partition(node: NodeGpus, name: str | None, default: str | None) -> bool:
    wanted = name or default
    return wanted is None or wanted in node.partitions


def _constraint_ok(node: NodeGpus, constraint: str | None) -> bool:
    # Only a single feature word can be checked here; an expression is left to the scheduler.
    if not constraint or not _SIMPLE.match(constraint) or not node.features:
        return True
    return constraint in node.features


def partition_live(reading: SiteReading, alloc: Allocation, models: GpuModels | None = None) -> PartitionLive:
    """GPUs of ``alloc``'s model in ``alloc``'s partition: total, free, held, queued; fits now?"""
    models = models or GpuModels(alloc.site)
    part = alloc.partition
    model = part.gpu_model
    default = reading.default_partition
    total = free = 0
    nodes_fitting = 0
    for node in reading.nodes:
        if not _in_partition(node, part.partition, default) or not _constraint_ok(node, part.constraint):
            continue
        idle_here = 0
        for kind, count in node.total.items():
            if model and models.node(kind, node, default) != model:
                continue
            total += count
            if node.available:
                idle_here += max(0, count - node.used.get(kind, 0))
        free += idle_here
        if node.available and idle_here >= max(alloc.gpus_per_node, 1 if alloc.gpus_per_node else 0):
            nodes_fitting += 1
    running = queued = 0
    for job in reading.jobs or []:
        if (job.partition or default) != (part.partition or default):
            continue
        for kind, count in job.gpus.items():
            named = models.job(kind, job, default)
            if model and named not in (model, ANY_MODEL):
                continue
            if job.state == "pending":
                queued += count
            elif job.state in HOLDING_STATES:
                running += count
    fits = nodes_fitting >= alloc.nodes and (alloc.gpus_per_node == 0 or total > 0)
    return PartitionLive(total=total, free=free, running=running, queued=queued, fits_now=fits)
