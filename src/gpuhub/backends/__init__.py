"""Scheduler backends: one :class:`~gpuhub.backends.base.Backend` per scheduler name of a site file.

Backends are imported on first use, so ``gpuhub --help`` and the site model load none of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpuhub.backends.base import Backend
    from gpuhub.backends.capabilities import Capabilities

# site `scheduler:` value -> "module:class"
BACKENDS = {
    "slurm": "gpuhub.backends.slurm:SlurmBackend",
    "htcondor": "gpuhub.backends.htcondor:HTCondorBackend",
    "oar": "gpuhub.backends.oar:OarBackend",
    "ssh": "gpuhub.backends.lab.backend:LabBackend",
    "local": "gpuhub.backends.shell:LocalBackend",
}

_INSTANCES: dict[str, Backend] = {}


def backend_for(scheduler: str) -> Backend:
    """The backend of a scheduler name (one shared instance: backends hold no state)."""
    backend = _INSTANCES.get(scheduler)
    if backend is None:
        module, _, cls = BACKENDS[scheduler].partition(":")
        backend = _INSTANCES[scheduler] = getattr(importlib.import_module(module), cls)()
    return backend


def capabilities_of(scheduler: str) -> Capabilities:
    """What a scheduler can do, without importing its backend (all that planning a job needs)."""
    from gpuhub.backends.capabilities import CAPABILITIES

    return CAPABILITIES[scheduler]
