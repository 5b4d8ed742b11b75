"""HTCondor: one ``condor_status`` and one ``condor_q`` per poll, and their pure parsers.

Both use ``-af:t`` (autoformat, tab before each field after the first), which the
condor_status and condor_q manuals document as the script-readable output; an undefined
attribute prints ``undefined``.

GPUs in a pool:

* a *partitionable* slot advertises the machine's GPUs in ``TotalSlotGPUs`` and what is not
  yet carved out in ``GPUs``; each *dynamic* slot carved from it holds ``GPUs`` for one job;
* a *static* slot has its own ``GPUs``, claimed or not.

A slot in state ``Owner`` or ``Drained`` cannot take jobs: its unclaimed GPUs are unavailable.
The model comes from ``GPUs_DeviceName`` (``CUDADeviceName`` before HTCondor 9), as the
``condor_status -gpus`` print format does.
"""

from __future__ import annotations

import time

from gpuhub.exporter.readings import NodeGpus, QueueJob, SiteReading, model_from_device_name
from gpuhub.transport.base import Transport

STATUS_ATTRS = ["Machine", "SlotType", "State", "GPUs", "TotalSlotGPUs", "GPUs_DeviceName ?: CUDADeviceName"]
STATUS_ARGV = [
    "condor_status",
    "-constraint",
    "(GPUs ?: 0) > 0 || (TotalSlotGPUs ?: 0) > 0",
    "-af:t",
    *STATUS_ATTRS,
]
QUEUE_ATTRS = ["JobStatus", "RequestGPUs", "AcctGroup", "Owner"]
QUEUE_ARGV = ["condor_q", "-allusers", "-af:t", *QUEUE_ATTRS]

_UNAVAILABLE_STATES = {"Owner", "Drained"}
_CLAIMED_STATES = {"Claimed", "Matched", "Preempting"}
# JobStatus codes (HTCondor manual, "Job ClassAd attributes").
_JOB_STATUS = {
    "1": "pending",  # Idle
    "2": "running",
    "3": "other",  # Removed, on its way out of the queue
    "4": "completing",  # Completed, not yet left the queue
    "5": "held",
    "6": "completing",  # Transferring output
    "7": "suspended",
}


def _fields(line: str, count: int) -> list[str] | None:
    parts = line.rstrip("\n").split("\t")
    if len(parts) == count + 1 and parts[0] == "":
        parts = parts[1:]
    if len(parts) != count:
        return None
    return [p.strip() for p in parts]


def _int(text: str) -> int:
    try:
        return max(0, int(float(text)))
    except ValueError:
        return 0


def parse_status(stdout: str) -> SiteReading:
    """Output of :data:`STATUS_ARGV` -> GPUs per machine (split in two when some slots are unavailable)."""
    rows = [f for f in (_fields(line, len(STATUS_ATTRS)) for line in stdout.splitlines()) if f]
    # A dynamic slot's GPUs belong to its partitionable slot, whose state says if the machine takes jobs.
    pslot_ok = {m: state not in _UNAVAILABLE_STATES for m, kind, state, *_ in rows if kind == "Partitionable"}
    groups: dict[tuple[str, bool], tuple[dict[str, int], dict[str, int]]] = {}
    for machine, kind, state, gpus, slot_total, device in rows:
        model = model_from_device_name(device) if device and device != "undefined" else "unknown"
        ok = pslot_ok.get(machine, True) if kind != "Static" else state not in _UNAVAILABLE_STATES
        total, used = groups.setdefault((machine, ok), ({}, {}))
        if kind == "Partitionable":
            _add(total, model, _int(slot_total))
        elif kind == "Dynamic":
            _add(used, model, _int(gpus))
        else:
            _add(total, model, _int(gpus))
            if state in _CLAIMED_STATES:
                _add(used, model, _int(gpus))
    nodes = [NodeGpus(machine, ok, total, used) for (machine, ok), (total, used) in groups.items()]
    return SiteReading(nodes=nodes)


def _add(counts: dict[str, int], key: str, value: int) -> None:
    if value:
        counts[key] = counts.get(key, 0) + value


def parse_queue(stdout: str) -> list[QueueJob]:
    """Output of :data:`QUEUE_ARGV` -> one :class:`QueueJob` per job (proc)."""
    jobs = []
    for line in stdout.splitlines():
        fields = _fields(line, len(QUEUE_ATTRS))
        if fields is None:
            continue
        status, gpus, group, owner = fields
        count = _int(gpus) if gpus != "undefined" else 0
        jobs.append(
            QueueJob(
                state=_JOB_STATUS.get(status, "other"),
                gpus={"": count} if count else {},
                account="" if group == "undefined" else group,
                user="" if owner == "undefined" else owner,
            )
        )
    return jobs


def read(transport: Transport, deadline: float) -> SiteReading:
    nodes = parse_status(transport.run(STATUS_ARGV, timeout=_left(deadline)).stdout)
    jobs = parse_queue(transport.run(QUEUE_ARGV, timeout=_left(deadline)).stdout)
    return SiteReading(nodes=nodes.nodes, jobs=jobs)


def _left(deadline: float) -> float:
    return max(0.5, deadline - time.monotonic())
