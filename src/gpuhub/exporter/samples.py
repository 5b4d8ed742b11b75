"""From a :class:`SiteReading` to label sets and values, done once per poll (never per scrape).

``Samples`` maps a family name to ``{label values: value}``, label values in the order of the
family's labels. Scrapes only copy these out.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING

from gpuhub.exporter.readings import HOLDING_STATES, JOB_STATES, NodeGpus, QueueJob, SiteReading

if TYPE_CHECKING:
    from gpuhub.site import Site

Samples = dict[str, dict[tuple[str, ...], float]]

UNKNOWN_MODEL = "unknown"  # a node's GPUs whose model neither the scheduler nor the site file gives
ANY_MODEL = "any"  # a job that asked for GPUs of no particular model
NO_PROJECT = "none"
_SIMPLE_CONSTRAINT = re.compile(r"^[A-Za-z0-9_.-]+$")


def project_label(account: str) -> str:
    """The ``project`` label of an account: its project, or ``none`` for jobs charged to no account."""
    from gpuhub.accounting.records import project_of  # only the exporter labels projects, not plan

    return project_of(account) or NO_PROJECT


class GpuModels:
    """Names GPU types after the site file's ``gpu_model``s.

    A typed GRES takes the ``gpu_model`` of the site partition with that ``gres_type``, else
    keeps its own name. An untyped one takes the single ``gpu_model`` of the site partitions
    the node (or the job) is in, a node's features narrowing by simple ``constraint`` words.
    """

    def __init__(self, site: Site | None = None) -> None:
        self.by_gres: dict[str, str] = {}
        self.entries: list[tuple[str | None, str | None, str]] = []  # (partition, constraint, model)
        if site is None:
            return
        for part in site.partitions.values():
            if not part.gpu_model:
                continue
            if part.gres_type:
                self.by_gres.setdefault(part.gres_type, part.gpu_model)
            constraint = part.constraint if part.constraint and _SIMPLE_CONSTRAINT.match(part.constraint) else None
            self.entries.append((part.partition, constraint, part.gpu_model))

    def typed(self, kind: str) -> str:
        return self.by_gres.get(kind, kind)

    def _untyped(self, partitions: Iterable[str], default: str | None, features: frozenset[str] | None) -> set[str]:
        names = set(partitions)
        found = set()
        for partition, constraint, model in self.entries:
            in_partition = partition in names if partition else (default is not None and default in names)
            if not in_partition:
                continue
            if features is not None and constraint and features and constraint not in features:
                continue
            found.add(model)
        return found

    def node(self, kind: str, node: NodeGpus, default: str | None) -> str:
        if kind:
            return self.typed(kind)
        found = self._untyped(node.partitions, default, node.features)
        return found.pop() if len(found) == 1 else UNKNOWN_MODEL

    def job(self, kind: str, job: QueueJob, default: str | None) -> str:
        if kind:
            return self.typed(kind)
        found = self._untyped([job.partition] if job.partition else [], default, None)
        return found.pop() if len(found) == 1 else ANY_MODEL


def _add(samples: Samples, family: str, labels: tuple[str, ...], value: float) -> None:
    bucket = samples.setdefault(family, {})
    bucket[labels] = bucket.get(labels, 0) + value


def capacity(site: str, nodes: list[NodeGpus], models: GpuModels, default: str | None, out: Samples) -> None:
    """Every node's GPUs: total = allocated + idle + unavailable, per model and per partition."""
    for node in nodes:
        for kind, total in node.total.items():
            model = models.node(kind, node, default)
            allocated = min(node.used.get(kind, 0), total)
            idle = total - allocated if node.available else 0
            unavailable = 0 if node.available else total - allocated
            values = {"": total, "_allocated": allocated, "_idle": idle, "_unavailable": unavailable}
            for suffix, value in values.items():
                _add(out, "gpuhub_gpus" + suffix, (site, model), value)
                for partition in node.partitions:
                    _add(out, "gpuhub_partition_gpus" + suffix, (site, partition, model), value)
                if node.per_host:
                    _add(out, "gpuhub_host_gpus" + suffix, (site, node.name, model), value)


def queue(
    site: str, jobs: list[QueueJob], models: GpuModels, default: str | None, user_labels: bool, out: Samples
) -> None:
    counts: dict[str, int] = defaultdict(int)
    for job in jobs:
        counts[job.state] += 1
        project = project_label(job.account)
        _add(out, "gpuhub_project_jobs", (site, project, job.state), 1)
        if user_labels:
            _add(out, "gpuhub_user_jobs", (site, job.user or "unknown", job.state), 1)
        for kind, gpus in job.gpus.items():
            model = models.job(kind, job, default)
            _add(out, "gpuhub_jobs_gpus_requested", (site, job.partition, model, job.state), gpus)
            if job.state in HOLDING_STATES:
                _add(out, "gpuhub_project_gpus_allocated", (site, project, model), gpus)
                if user_labels:
                    _add(out, "gpuhub_user_gpus_allocated", (site, job.user or "unknown", model), gpus)
    # Every state, zeros included: "no pending job" is a value, not a missing series.
    for state in JOB_STATES:
        out.setdefault("gpuhub_jobs", {})[(site, state)] = counts.get(state, 0)


def site_samples(site: str, reading: SiteReading, models: GpuModels, user_labels: bool = False) -> Samples:
    out: Samples = {}
    capacity(site, reading.nodes, models, reading.default_partition, out)
    if reading.jobs is not None:
        queue(site, reading.jobs, models, reading.default_partition, user_labels, out)
    return out
