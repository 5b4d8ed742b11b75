"""gpuhub: describe a GPU job once, run it on any site.

The package root stays import-light: ``gpuhub --help`` must start fast, so the heavy
modules (pydantic models, Jinja2, paramiko) load only when an attribute needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "JobRequest": "gpuhub.request",
    "Site": "gpuhub.site",
    "load_site": "gpuhub.registry",
    "list_sites": "gpuhub.registry",
    "plan": "gpuhub.plan",
    "render": "gpuhub.render",
    "submit": "gpuhub.jobs",
    "Job": "gpuhub.jobs",
    "Ledger": "gpuhub.ledger",
    "State": "gpuhub.states",
}

if TYPE_CHECKING:  # pragma: no cover
    from gpuhub.jobs import Job, submit
    from gpuhub.ledger import Ledger
    from gpuhub.plan import plan
    from gpuhub.registry import list_sites, load_site
    from gpuhub.render import render
    from gpuhub.request import JobRequest
    from gpuhub.site import Site
    from gpuhub.states import State


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gpuhub' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "Job",
    "JobRequest",
    "Ledger",
    "Site",
    "State",
    "__version__",
    "list_sites",
    "load_site",
    "plan",
    "render",
    "submit",
]
