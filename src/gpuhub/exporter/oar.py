"""OAR: one ``oarnodes -J`` and one ``oarstat -fJ`` per poll, and their pure readings.

A GPU is a distinct value of the site's GPU property (``gpu``) among a host's resources; it is
in use when one of its resources lists a job (``"jobs"``), and available when its resources are
``Alive`` and not draining. GPU types are the model property's values in lower case (``v100``).
Waiting jobs ask ``network_address=N/gpu=G`` in ``wanted_resources``: N x G GPUs.
"""

from __future__ import annotations

import re
import time
from typing import Any

from gpuhub.backends.oar_parse import Resource, job_gpus, parse_oarnodes, parse_oarstat
from gpuhub.exporter.readings import NodeGpus, QueueJob, SiteReading
from gpuhub.site import Site
from gpuhub.transport.base import Transport

NODES_ARGV = ["oarnodes", "-J"]
QUEUE_ARGV = ["oarstat", "-fJ"]  # without -j or -u: every current job of every user
_JOB_STATES = {
    "Waiting": "pending", "toLaunch": "pending", "toAckReservation": "pending", "Hold": "held",
    "Launching": "running", "Running": "running", "Resuming": "running", "Finishing": "completing",
    "Suspended": "suspended",
}


def _type(model: str | None) -> str:
    return model.lower() if model else ""


def parse_nodes(resources: dict[int, Resource]) -> list[NodeGpus]:
    hosts: dict[str, dict[str, Any]] = {}
    for res in resources.values():
        if res.gpu is None:
            continue
        host = hosts.setdefault(res.host, {"gpus": {}, "used": set(), "up": True})
        host["gpus"][res.gpu] = _type(res.model)
        if res.busy:
            host["used"].add(res.gpu)
        if res.state != "Alive" or res.drain:
            host["up"] = False
    out = []
    for name, host in sorted(hosts.items()):
        total: dict[str, int] = {}
        used: dict[str, int] = {}
        for gpu, kind in host["gpus"].items():
            total[kind] = total.get(kind, 0) + 1
            if gpu in host["used"]:
                used[kind] = used.get(kind, 0) + 1
        out.append(NodeGpus(name=name, available=host["up"], total=total, used=used))
    return out


_WANTED = re.compile(r"network_address=(\d+)/(?:\w+=\d+/)*?{prop}=(\d+)")


def asked_gpus(wanted: str, gpu_property: str = "gpu") -> int:
    """GPUs a waiting job asks: ``.../network_address=2/gpu=4,walltime=...`` -> 8 (first alternative)."""
    match = re.search(_WANTED.pattern.replace("{prop}", re.escape(gpu_property)), wanted)
    if match:
        return int(match[1]) * int(match[2])
    alone = re.search(rf"/{re.escape(gpu_property)}=(\d+)", wanted)
    return int(alone[1]) if alone else 0


def parse_queue(stdout: str, resources: dict[int, Resource], gpu_property: str = "gpu") -> list[QueueJob]:
    models = {r.gpu: _type(r.model) for r in resources.values() if r.gpu}
    jobs = []
    for job in parse_oarstat(stdout).values():
        state = _JOB_STATES.get(job.state)
        if state is None:
            continue  # finished, or on its way to Error
        gpus: dict[str, int] = {}
        if job.resources:
            for gpu in job_gpus(job, resources):
                gpus[models[gpu]] = gpus.get(models[gpu], 0) + 1
        else:
            asked = asked_gpus(job.wanted, gpu_property)
            if asked:
                gpus[""] = asked
        jobs.append(QueueJob(state=state, gpus=gpus, partition=job.queue, account=job.project, user=job.owner))
    return jobs


def read(site: Site, transport: Transport, timeout: float) -> SiteReading:
    deadline = time.monotonic() + timeout
    prop, model = site.oar.gpu_property, site.oar.model_property
    nodes_out = transport.run(NODES_ARGV, timeout=max(0.5, deadline - time.monotonic())).stdout
    resources = parse_oarnodes(nodes_out, prop, model)
    queue_out = transport.run(QUEUE_ARGV, timeout=max(0.5, deadline - time.monotonic())).stdout
    return SiteReading(nodes=parse_nodes(resources), jobs=parse_queue(queue_out, resources, prop))
