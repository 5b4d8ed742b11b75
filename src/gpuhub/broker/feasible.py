"""Which partitions of a site can run a request at all, from the site file alone (pure).

A site is a candidate through each partition that has the GPU kind asked (a model of the
requested class, enough GPU memory) and where :func:`gpuhub.plan.plan` fits the rest (GPU
count and nodes, walltime, QoS, account). Every partition left out has its reason, so a site
left out entirely can say why.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpuhub.errors import RequestError
from gpuhub.plan import Allocation, plan
from gpuhub.record import Factory, Record
from gpuhub.units import format_memory

if TYPE_CHECKING:
    from gpuhub.broker.config import BrokerConfig
    from gpuhub.request import JobRequest
    from gpuhub.site import Partition, Site


class SiteFit(Record):
    """The partitions of one site that can take the request, and why the others cannot."""

    site: Site
    allocations: list[Allocation] = Factory(list)
    rejected: dict[str, str] = Factory(dict)  # partition key -> reason
    other_models: dict[str, str] = Factory(dict)  # partition key -> its model, not the one asked
    asked: str = ""

    @property
    def feasible(self) -> bool:
        return bool(self.allocations)

    def reason(self) -> str:
        """Why no partition fits, in one line (identical reasons said once)."""
        if not self.rejected:
            return "no partition"
        by_reason: dict[str, list[str]] = {}
        if self.other_models:
            models = ", ".join(sorted(set(self.other_models.values())))
            by_reason[f"no {self.asked} GPU (has {models})"] = list(self.other_models)
        for key, why in self.rejected.items():
            if key not in self.other_models:
                by_reason.setdefault(why, []).append(key)
        if len(by_reason) == 1:
            return next(iter(by_reason))
        return "; ".join(f"{', '.join(keys)}: {why}" for why, keys in by_reason.items())


MODEL_MISMATCH = "another GPU model"


def _kind_mismatch(part: Partition, request: JobRequest, models: frozenset[str] | None) -> str | None:
    wants_gpus = request.gpus != 0 and request.gpus_per_node != 0
    if wants_gpus and part.gpus_per_node == 0:
        return "no GPUs"
    if models is not None:
        model = (part.gpu_model or "").lower()
        if not model:
            return f"GPU model not given in the site file (asked: {request.gpu_type})"
        if model not in models:
            return MODEL_MISMATCH
    if request.gpu_mem:
        if part.gpu_memory_gb is None:
            return f"GPU memory not given in the site file (asked: {format_memory(request.gpu_mem)}B)"
        if part.gpu_memory_gb * 1024 < request.gpu_mem:
            return f"{part.gpu_memory_gb:g} GB GPUs, under the {format_memory(request.gpu_mem)}B asked"
    return None


def _partition_keys(site: Site, request: JobRequest) -> tuple[list[str], dict[str, str]]:
    wanted = request.partition
    if not wanted:
        return list(site.partitions), {}
    keys = [k for k in site.partitions if k == wanted] or [
        k for k, p in site.partitions.items() if p.partition == wanted
    ]
    if not keys:
        return [], {"*": f"no partition {wanted!r}"}
    return keys, {}


def fit_site(site: Site, request: JobRequest, config: BrokerConfig) -> SiteFit:
    """Every partition of ``site`` that can run ``request``, each planned as ``gpuhub render`` would."""
    models = config.models_for(request.gpu_type or site.defaults.gpu_type or "any")
    keys, rejected = _partition_keys(site, request)
    allocations, other = [], {}
    for key in keys:
        part = site.partitions[key]
        mismatch = _kind_mismatch(part, request, models)
        if mismatch == MODEL_MISMATCH:
            other[key] = part.gpu_model or ""
        if mismatch:
            rejected[key] = mismatch
            continue
        # Planned on this partition alone; its own model stands for the class asked.
        one = request.model_copy(update={"partition": key, "gpu_type": part.gpu_model, "gpu_mem": None})
        try:
            allocations.append(plan(site, one))
        except RequestError as exc:
            rejected[key] = exc.message
    return SiteFit(site, allocations, rejected, other, (request.gpu_type or "").lower())
