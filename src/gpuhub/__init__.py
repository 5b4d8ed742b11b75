"""gpuhub: describe a GPU job once, run it on any site.

The package root stays import-light: ``gpuhub --help`` must start fast, so the heavy
modules (pydantic models, Jinja2, paramiko) load only when an attribute needs them.
"""

from __future__ import annotations

import sys
import types
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


class _CallableModule(types.ModuleType):
    """A submodule named like the function it defines (``gpuhub.plan``, ``gpuhub.render``).

    Importing ``gpuhub.plan`` makes it an attribute of the package, hiding the lazy
    ``gpuhub.plan`` function; calling the module calls the function, so
    ``gpuhub.render(gpuhub.plan(site, request))`` works whatever was imported first.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, self.__name__.rpartition(".")[2])(*args, **kwargs)


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if _LAZY.get(name) == f"{__name__}.{name}" and type(value) is types.ModuleType:
            value.__class__ = _CallableModule
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


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
