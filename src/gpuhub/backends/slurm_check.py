"""``gpuhub sites check`` for Slurm: the site file against what the cluster itself says.

Facts come from four read-only commands: ``sinfo`` (nodes, their partitions, features and GPUs
by type; the exporter's probe format), ``scontrol show partition -o`` (time and node limits),
``sacctmgr show qos`` (QoS time limits) and ``sacctmgr show assoc`` (the user's accounts on this
cluster). :func:`compare` is pure and returns one
:class:`~gpuhub.backends.base.Finding` per value checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gpuhub.backends.base import Finding
from gpuhub.units import format_walltime

if TYPE_CHECKING:
    from gpuhub.exporter.readings import NodeGpus
    from gpuhub.site import Site
    from gpuhub.transport.base import Transport


@dataclass
class SlurmFacts:
    cluster: str = ""
    nodes: list[NodeGpus] = field(default_factory=list)
    partitions: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> scontrol fields
    default_partition: str | None = None
    qos: dict[str, int | None] = field(default_factory=dict)  # name -> MaxWall seconds (None: no limit)
    accounts: set[str] | None = None  # the user's accounts on this cluster; None: not readable


def slurm_time(text: str) -> int | None:
    """``2-00:00:00``, ``20:00:00``, ``30:00`` -> seconds; ``UNLIMITED``/``INFINITE``/empty -> None."""
    text = text.strip()
    if not text or text.upper() in ("UNLIMITED", "INFINITE", "NONE", "N/A"):
        return None
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    h, m, s = parts[-3:]
    return ((int(days or 0) * 24 + h) * 60 + m) * 60 + s


def parse_partitions(stdout: str) -> dict[str, dict[str, str]]:
    out = {}
    for line in stdout.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if "PartitionName" in fields:
            out[fields["PartitionName"]] = fields
    return out


def parse_qos(stdout: str) -> dict[str, int | None]:
    out = {}
    for line in stdout.splitlines():
        name, _, wall = line.strip().partition("|")
        if name:
            out[name.lower()] = slurm_time(wall.split("|")[0])
    return out


def parse_assoc(stdout: str, cluster: str) -> set[str]:
    out = set()
    for line in stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2 and parts[1] and (not cluster or parts[0] == cluster):
            out.add(parts[1].lower())
    return out


def gather(transport: Transport, user: str | None, timeout: float) -> SlurmFacts:
    from gpuhub.exporter.slurm import SINFO_ARGV, parse_sinfo

    facts = SlurmFacts()
    config = transport.run(["scontrol", "show", "config"], timeout=timeout).stdout
    match = re.search(r"^ClusterName\s*=\s*(\S+)", config, re.MULTILINE)
    facts.cluster = match.group(1) if match else ""
    reading = parse_sinfo(transport.run(SINFO_ARGV, timeout=timeout).stdout)
    facts.nodes, facts.default_partition = reading.nodes, reading.default_partition
    facts.partitions = parse_partitions(transport.run(["scontrol", "show", "partition", "-o"], timeout=timeout).stdout)
    qos = transport.run(["sacctmgr", "-nP", "show", "qos", "format=name,maxwall"], timeout=timeout, check=False)
    facts.qos = parse_qos(qos.stdout) if qos.ok else {}
    who = user or transport.run(["id", "-un"], timeout=timeout).stdout.strip()
    assoc = transport.run(["sacctmgr", "-nP", "show", "assoc", "where", f"user={who}", "format=cluster,account"],
                          timeout=timeout, check=False)
    facts.accounts = parse_assoc(assoc.stdout, facts.cluster) if assoc.ok else None
    return facts


def _wall(seconds: int | None) -> str:
    return format_walltime(seconds) if seconds else "no limit"


def compare(site: Site, facts: SlurmFacts) -> list[Finding]:
    """Every checkable value of ``site`` against ``facts``."""
    out: list[Finding] = []
    for key, part in site.partitions.items():
        base = f"partitions.{key}"
        name = part.partition or facts.default_partition
        live = facts.partitions.get(name or "")
        if live is None:
            known = ", ".join(sorted(facts.partitions))
            out.append(Finding(f"{base}.partition", False, f"no Slurm partition {name!r} (the cluster has: {known})"))
            continue
        out.append(Finding(f"{base}.partition", True, f"Slurm partition {name!r} exists"))
        limit = slurm_time(live.get("MaxTime", ""))
        qos_limits = [facts.qos.get(q.name.lower()) for q in part.qos]
        too_long = part.max_walltime is not None and limit is not None and part.max_walltime > limit
        # Shorter than the partition is only wrong when no QoS explains it.
        too_short = part.max_walltime is not None and limit is not None and part.max_walltime < limit and not part.qos
        if too_long or too_short:
            out.append(Finding(f"{base}.max_walltime", False,
                               f"{_wall(part.max_walltime)}, but Slurm partition {name} allows {_wall(limit)}",
                               format_walltime(limit)))  # type: ignore[arg-type]
        elif part.max_walltime is not None:
            out.append(Finding(f"{base}.max_walltime", True, f"{_wall(part.max_walltime)} within the partition's "
                                                            f"{_wall(limit)}" + (" and its QoS" if qos_limits else "")))
        nodes = [n for n in facts.nodes if name in n.partitions]
        out += _gpus(base, part, nodes)
        if part.max_nodes is not None and live.get("TotalNodes", "").isdigit():
            total = int(live["TotalNodes"])
            cap = live.get("MaxNodes", "UNLIMITED")
            allowed = min(total, int(cap)) if cap.isdigit() else total
            out.append(Finding(f"{base}.max_nodes", part.max_nodes <= allowed,
                               f"{part.max_nodes}; the partition has {total} node(s)"
                               + (f", at most {cap} per job" if cap.isdigit() else ""),
                               None if part.max_nodes <= allowed else str(allowed)))
        for i, q in enumerate(part.qos):
            path = f"{base}.qos.{i}"
            if q.name.lower() not in facts.qos:
                out.append(Finding(f"{path}.name", False, f"no QoS {q.name!r} on the cluster"))
                continue
            wall = facts.qos[q.name.lower()]
            if q.max_walltime != wall and not (q.max_walltime is None and wall is None):
                out.append(Finding(f"{path}.max_walltime", False,
                                   f"QoS {q.name}: {_wall(q.max_walltime)} in the site file, MaxWall {_wall(wall)} "
                                   "on the cluster", format_walltime(wall) if wall else "null"))
            else:
                out.append(Finding(f"{path}.max_walltime", True, f"QoS {q.name}: {_wall(wall)}"))
    out += _accounts(site, facts)
    return out


def _gpus(base: str, part, nodes: list[NodeGpus]) -> list[Finding]:  # type: ignore[no-untyped-def]
    if not nodes:
        return [Finding(f"{base}.partition", False, "the partition has no nodes")]
    out = []
    if part.gres_type:
        types = sorted({t for n in nodes for t in n.total if t})
        counts = [n.total.get(part.gres_type, 0) for n in nodes]
        if not any(counts):
            out.append(Finding(f"{base}.gres_type", False,
                               f"no GPU of type {part.gres_type!r} on the partition's nodes (types: "
                               f"{', '.join(types) or 'untyped'})", types[0] if len(types) == 1 else None))
            return out
        out.append(Finding(f"{base}.gres_type", True, f"GPU type {part.gres_type!r} present"))
    else:
        counts = [sum(n.total.values()) for n in nodes]
    per_node = max(counts)
    out.append(Finding(f"{base}.gpus_per_node", part.gpus_per_node == per_node,
                       f"{part.gpus_per_node} in the site file, {per_node} per node on the cluster"
                       + (f" ({min(counts)} on some)" if min(counts) != per_node else ""),
                       None if part.gpus_per_node == per_node else str(per_node)))
    if part.constraint and re.fullmatch(r"[A-Za-z0-9_.-]+", part.constraint):
        having = [n for n in nodes if part.constraint in n.features]
        out.append(Finding(f"{base}.constraint", bool(having),
                           f"feature {part.constraint!r} on {len(having)} of {len(nodes)} node(s)"))
    return out


def _accounts(site: Site, facts: SlurmFacts) -> list[Finding]:
    project = site.defaults.account or site.defaults.project
    if facts.accounts is None or not project:
        return []
    out = []
    seen = set()
    for part in site.partitions.values():
        if site.defaults.account:
            account, path = site.defaults.account, "defaults.account"
        else:
            fmt = site.account.format or "{project}"
            user = site.connection.user if site.connection else ""
            account = fmt.format(project=project, user=user or "", gpu_model=part.gpu_model or "",
                                 partition=part.partition or "")
            path = "defaults.project"
        if account.lower() in seen:
            continue
        seen.add(account.lower())
        ok = account.lower() in facts.accounts
        mine = ", ".join(sorted(facts.accounts)) or "none"
        out.append(Finding(path, ok, f"account {account!r} " + ("is yours" if ok else
                                                               f"is not one of yours on {facts.cluster} ({mine})")))
    return out
