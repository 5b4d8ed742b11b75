"""Slurm: one ``sinfo`` and one ``squeue`` per poll, and their pure parsers.

``sinfo -N`` prints one line per node *and partition*; the node's GRES columns repeat on each
line, so lines are merged by node and every GPU is counted once. Formats are ``|``-separated
``-O`` fields without a width, which Slurm prints untruncated (checked on 22.05).
"""

from __future__ import annotations

import re
import time

from gpuhub.exporter.readings import NodeGpus, QueueJob, SiteReading
from gpuhub.transport.base import Transport

SINFO_FORMAT = "NodeList:|,Partition:|,StateLong:|,Features:|,Gres:|,GresUsed:|"
SQUEUE_FORMAT = "Partition:|,State:|,Account:|,UserName:|,tres-alloc:|,Reason:|"
# -a: hidden partitions too; -r: one line per array task (each task asks for its own GPUs).
SINFO_ARGV = ["sinfo", "-a", "-N", "-h", "-O", SINFO_FORMAT]
SQUEUE_ARGV = ["squeue", "-a", "-r", "-h", "-O", SQUEUE_FORMAT]

# Node state words whose idle GPUs cannot be given to a job (sinfo(1) "NODE STATE CODES").
_UNAVAILABLE = {
    "down",
    "drain",
    "drained",
    "draining",
    "fail",
    "failing",
    "future",
    "inval",
    "unknown",
    "maint",
    "reboot_issued",
    "reboot_requested",
    "not_responding",
    "unk",
}
# Suffixes: '*' = not responding, '$' = in a maintenance reservation (both unavailable);
# '~' '#' '!' '%' '@' '^' '-' = power saving, reboot or planning flags (still schedulable).
_UNAVAILABLE_FLAGS = set("*$")

_JOB_STATES = {
    "PENDING": "pending",
    "REQUEUED": "pending",
    "REQUEUE_FED": "pending",
    "RESIZING": "pending",
    "REQUEUE_HOLD": "held",
    "RESV_DEL_HOLD": "held",
    "SPECIAL_EXIT": "held",
    "RUNNING": "running",
    "CONFIGURING": "running",
    "SIGNALING": "running",
    "COMPLETING": "completing",
    "STAGE_OUT": "completing",
    "SUSPENDED": "suspended",
    "STOPPED": "suspended",
}
_HELD_REASONS = {"JobHeldUser", "JobHeldAdmin"}


def split_top(text: str) -> list[str]:
    """Split on commas outside parentheses: ``gpu:a100:3(IDX:0,2-3),gpu:v100:1(IDX:8)``."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth = max(0, depth - 1)
        elif char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def parse_gres(text: str) -> dict[str, int]:
    """GPUs by type from a ``Gres`` or ``GresUsed`` column; ``""`` is the untyped GPU.

    ``gpu:a100:8(S:0-1),gpu:v100:8`` -> {a100: 8, v100: 8}; ``gpu:2(IDX:0-1)`` -> {"": 2};
    other GRES (``mps``, ``shard``, licenses) and ``(null)`` are ignored.
    """
    out: dict[str, int] = {}
    for item in split_top(text):
        spec = re.sub(r"\([^()]*\)$", "", item)  # the socket or index list, not the "(null)" of a type
        parts = [p for p in spec.split(":") if p != "no_consume"]
        if len(parts) < 2 or parts[0] != "gpu":
            continue
        count = _count(parts[-1])
        if count is None:
            continue
        kind = parts[1] if len(parts) >= 3 else ""
        kind = "" if kind in ("(null)", "") else kind
        out[kind] = out.get(kind, 0) + count
    return out


def _count(text: str) -> int | None:
    match = re.fullmatch(r"(\d+)([KMGT]?)", text.strip())
    if not match:
        return None
    return int(match[1]) * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}[match[2]]


def node_available(state: str) -> bool:
    """``idle``, ``mixed``, ``allocated+``, ``idle~`` -> True; ``drained``, ``down*``, ``mixed$`` -> False."""
    text = state.strip().lower()
    if not text or any(flag in text for flag in _UNAVAILABLE_FLAGS):
        return False
    words = re.split(r"[+]", text.rstrip("~#!%@^-"))
    return not any(word in _UNAVAILABLE for word in words)


def parse_sinfo(stdout: str) -> SiteReading:
    """Output of :data:`SINFO_ARGV` -> one :class:`NodeGpus` per node (partitions merged)."""
    nodes: dict[str, dict] = {}
    default = None
    for line in stdout.splitlines():
        parts = line.rstrip().rstrip("|").split("|")
        if len(parts) < 6:
            continue
        name, partition, state, features, gres, used = (p.strip() for p in parts[:6])
        if partition.endswith("*"):
            partition = partition[:-1]
            default = partition
        node = nodes.setdefault(
            name,
            {
                "state": state,
                "partitions": [],
                "features": frozenset(f for f in features.split(",") if f and f != "(null)"),
                "total": parse_gres(gres),
                "used": parse_gres(used),
            },
        )
        if partition and partition not in node["partitions"]:
            node["partitions"].append(partition)
    out = [
        NodeGpus(
            name=name,
            available=node_available(n["state"]),
            total=n["total"],
            used=n["used"],
            partitions=tuple(n["partitions"]),
            features=n["features"],
        )
        for name, n in nodes.items()
    ]
    return SiteReading(nodes=out, default_partition=default)


def parse_tres_gpus(text: str) -> dict[str, int]:
    """GPUs by type from ``tres-alloc``: ``...,gres/gpu=3,gres/gpu:a100=3`` -> {a100: 3}.

    Typed entries are kept; GPUs the typed entries do not cover stay untyped (``""``).
    """
    total, typed = 0, {}
    for item in text.split(","):
        key, _, value = item.strip().partition("=")
        count = _count(value)
        if count is None:
            continue
        if key == "gres/gpu":
            total = count
        elif key.startswith("gres/gpu:"):
            kind = key.split(":", 1)[1]
            typed[kind] = typed.get(kind, 0) + count
    rest = total - sum(typed.values())
    if rest > 0:
        typed[""] = rest
    return typed


def job_state(state: str, reason: str) -> str:
    word = state.strip().split(" ", 1)[0].upper()
    mapped = _JOB_STATES.get(word, "other")
    if mapped == "pending" and reason.strip() in _HELD_REASONS:
        return "held"
    return mapped


def parse_squeue(stdout: str) -> list[QueueJob]:
    """Output of :data:`SQUEUE_ARGV` -> one :class:`QueueJob` per job or array task.

    A pending job eligible for several partitions (``short,gpu``) is counted in the first.
    """
    jobs = []
    for line in stdout.splitlines():
        parts = line.rstrip().split("|", 5)
        if len(parts) < 6:
            continue
        partition, state, account, user, tres, reason = (p.strip() for p in parts)
        jobs.append(
            QueueJob(
                state=job_state(state, reason.rstrip("|")),
                gpus=parse_tres_gpus(tres),
                partition=partition.split(",", 1)[0],
                account="" if account == "(null)" else account,
                user=user,
            )
        )
    return jobs


def read(transport: Transport, deadline: float) -> SiteReading:
    """One poll: ``sinfo`` then ``squeue``, each within what is left of the poll's time."""
    nodes = parse_sinfo(transport.run(SINFO_ARGV, timeout=_left(deadline)).stdout)
    jobs = parse_squeue(transport.run(SQUEUE_ARGV, timeout=_left(deadline)).stdout)
    return SiteReading(nodes=nodes.nodes, jobs=jobs, default_partition=nodes.default_partition)


def _left(deadline: float) -> float:
    return max(0.5, deadline - time.monotonic())
