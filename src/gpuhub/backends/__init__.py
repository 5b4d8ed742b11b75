"""Scheduler backends: each builds its submit files and commands, and parses its outputs.

A backend module exposes ``FILES`` (output file name -> template name), ``STDIN`` (the file
sent on the submit command's standard input, or None), ``context(alloc, token)`` and
``submit_argv()``. They do no I/O: sending is the transport's business.
"""

from __future__ import annotations

import importlib
from types import ModuleType

_MODULES = {"slurm": "slurm", "htcondor": "htcondor", "ssh": "shell", "local": "shell"}


def backend_for(scheduler: str) -> ModuleType:
    return importlib.import_module(f"gpuhub.backends.{_MODULES[scheduler]}")
