"""A job request as a plain frozen class, and the fast way to build one from CLI options.

:class:`gpuhub.request.JobRequest` (pydantic) is the authority on what a request may hold and
on every error message. Importing pydantic costs more than the rest of ``gpuhub render``, so
:func:`build` first runs the model's own checks (the functions below and in
:mod:`gpuhub.values`, which the model calls too) on the options given; only when one of them
fails, or a field has no check here, does it ask the model, which raises its usual errors. The
fast path only ever accepts: it never decides an error. :class:`Request` mirrors the model's
fields (``tests/test_requestdata.py`` fails when they differ).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from gpuhub.errors import shown
from gpuhub.limits import MAX_ARRAY_INDEX, MAX_ARRAY_TASKS, MAX_CPUS, MAX_GPUS, MAX_GPUS_PER_NODE, MAX_NAME, MAX_NODES
from gpuhub.sitedata import Factory, Plain
from gpuhub.units import format_memory, format_walltime, parse_memory, parse_walltime
from gpuhub.values import check_directive, check_env, check_token

# Patterns compiled on first use (re keeps them compiled): most commands give no array or dependency.
ARRAY_PATTERN = r"\d+(?:-\d+)?(?::\d+)?(?:,\d+(?:-\d+)?(?::\d+)?)*(?:%\d+)?"
DEPENDENCY_PATTERN = r"(?:after|afterany|afterok|afternotok|aftercorr):\d+(?:_\d+)?(?::\d+(?:_\d+)?)*|singleton"
LAUNCHERS = ("none", "torchrun", "srun")
MAX_WAIT_FOR_GPUS = 30 * 86400


class Request(Plain):
    """The fields of :class:`gpuhub.request.JobRequest`, validated by it or by :func:`build`."""

    command: list[str] = Factory(list)
    script: str | None = None
    name: str = "gpuhub"
    gpus: int | None = None
    nodes: int | None = None
    gpus_per_node: int | None = None
    gpu_type: str | None = None
    gpu_mem: int | None = None
    cpus_per_gpu: int | None = None
    mem: int | None = None
    time: int | None = None
    launcher: str | None = None
    requeue: bool = False
    env: dict[str, str] = Factory(dict)
    workdir: str | None = None
    array: str | None = None
    dependency: str | None = None
    project: str | None = None
    account: str | None = None
    partition: str | None = None
    qos: str | None = None
    directives: list[str] = Factory(list)
    wait_for_gpus: int | None = None

    def record(self) -> dict[str, Any]:
        """What the ledger keeps: the fields that differ from their defaults, in field order, sizes
        and times as text (the model's ``model_dump(mode="json", exclude_defaults=True)``)."""
        out: dict[str, Any] = {}
        for name, default in _defaults().items():
            value = getattr(self, name)
            if value == default:
                continue
            if name in ("gpu_mem", "mem"):
                value = format_memory(value)
            elif name == "time":
                value = format_walltime(value)
            elif isinstance(value, list | dict):
                value = type(value)(value)
            out[name] = value
        return out


def _defaults() -> dict[str, Any]:
    empty = Request()
    return {name: getattr(empty, name) for name in Request._fields}


def plain(request: Any) -> Request:
    """``request`` as a :class:`Request` (a validated ``JobRequest`` is copied field by field)."""
    if isinstance(request, Request):
        return request
    values = {name: getattr(request, name) for name in type(request).model_fields}
    return Request(**values, model_fields_set=frozenset(request.model_fields_set))


# --- checks the model runs too ------------------------------------------------------------------


def check_text(value: str) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    if "\0" in value:
        raise ValueError("NUL bytes cannot be passed to a shell")
    return value


def check_array(value: str) -> str:
    if not re.fullmatch(ARRAY_PATTERN, value, re.ASCII):
        raise ValueError(f"array {shown(value)} is not understood; examples: 0-49, 0-999%20, 1,3,5-7")
    array_size(value)  # bounds and order of every range
    return value


def check_dependency(value: str) -> str:
    for part in value.split(","):
        if not re.fullmatch(DEPENDENCY_PATTERN, part, re.ASCII):
            raise ValueError(
                f"dependency {shown(value)} is not understood; examples: afterok:123, afterany:12:13, singleton"
            )
    return value


def check_shape(req: Any) -> None:
    """The rules across fields: one thing to run, GPU type with GPUs, gpus = nodes x per node."""
    if bool(req.command) == (req.script is not None):
        raise ValueError("give either a command (after --) or a script, not both and not neither")
    if req.gpu_type is not None and 0 in (req.gpus, req.gpus_per_node):
        raise ValueError(
            f"gpus=0 contradicts gpu_type={shown(req.gpu_type)}: a GPU type needs at least one GPU "
            "(drop the GPU type for a CPU-only job)"
        )
    shape = (req.gpus, req.nodes, req.gpus_per_node)
    if None not in shape and req.gpus != req.nodes * req.gpus_per_node:
        raise ValueError(f"gpus={req.gpus} disagrees with nodes={req.nodes} x gpus_per_node={req.gpus_per_node}")


def array_indices(spec: str) -> tuple[list[int], int | None]:
    """Indices of an array spec and its limit of tasks at once: ``0-4:2,9%3`` -> ([0, 2, 4, 9], 3)."""
    body, _, throttle = spec.partition("%")
    indices: list[int] = []
    for chunk in body.split(","):
        rng, _, step = chunk.partition(":")
        lo, _, hi = rng.partition("-")
        indices.extend(range(int(lo), int(hi or lo) + 1, int(step or 1)))
    return indices, int(throttle) if throttle else None


def array_size(spec: str) -> int:
    """Number of tasks an array spec expands to (``0-49%5`` -> 50); ValueError when out of bounds."""
    body, _, throttle = spec.partition("%")
    if throttle and not 1 <= _index(throttle, spec) <= MAX_ARRAY_TASKS:
        raise ValueError(f"array {shown(spec)}: the limit after '%' must be 1 to {MAX_ARRAY_TASKS}")
    total = 0
    for chunk in body.split(","):
        rng, _, step = chunk.partition(":")
        lo, _, hi = rng.partition("-")
        start, stop, stride = _index(lo, spec), _index(hi or lo, spec), _index(step or "1", spec)
        if stride < 1:
            raise ValueError(f"array {shown(spec)}: the step after ':' must be at least 1")
        if start > stop:
            raise ValueError(f"array {shown(spec)}: range {start}-{stop} runs backwards; write {stop}-{start}")
        total += len(range(start, stop + 1, stride))
    if total > MAX_ARRAY_TASKS:
        raise ValueError(f"array {shown(spec)} has {total} tasks; at most {MAX_ARRAY_TASKS}")
    return total


def _index(text: str, spec: str) -> int:
    if len(text) > 12 or int(text) > MAX_ARRAY_INDEX:
        raise ValueError(f"array {shown(spec)}: indices go from 0 to {MAX_ARRAY_INDEX}")
    return int(text)


# --- the fast path ------------------------------------------------------------------------------


class _Unsure(Exception):
    """A value the fast path leaves to the model."""


def _string(value: Any, limit: int | None = None) -> str:
    if type(value) is not str or (limit is not None and len(value) > limit):
        raise _Unsure
    return value


def _int(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if type(value) is not int or not low <= value <= high:
            raise _Unsure
        return value

    return check


def _strings(check: Callable[[str], str]) -> Callable[[Any], list[str]]:
    def each(value: Any) -> list[str]:
        if type(value) is not list:
            raise _Unsure
        return [check(_string(item)) for item in value]

    return each


def _env(value: Any) -> dict[str, str]:
    if type(value) is not dict or not all(type(k) is str and type(v) is str for k, v in value.items()):
        raise _Unsure
    return check_env(dict(value))


def _launcher(value: Any) -> str:
    if _string(value) not in LAUNCHERS:
        raise _Unsure
    return value


def _flag(value: Any) -> bool:
    if type(value) is not bool:
        raise _Unsure
    return value


# field -> the value the model would store for an input, computed by the model's own checks; each
# raises (ValueError or _Unsure) for anything the model might treat differently.
_FAST: dict[str, Callable[[Any], Any]] = {
    "command": _strings(check_text),
    "script": lambda v: check_text(_string(v)),
    "name": lambda v: check_text(_string(v, MAX_NAME)),
    "gpus": _int(0, MAX_GPUS),
    "nodes": _int(1, MAX_NODES),
    "gpus_per_node": _int(0, MAX_GPUS_PER_NODE),
    "gpu_type": lambda v: _string(v, MAX_NAME),
    "gpu_mem": lambda v: parse_memory(_string(v)),
    "cpus_per_gpu": _int(1, MAX_CPUS),
    "mem": lambda v: parse_memory(_string(v)),
    "time": lambda v: parse_walltime(_string(v)),
    "launcher": _launcher,
    "requeue": _flag,
    "env": _env,
    "workdir": lambda v: check_text(_string(v)),
    "array": lambda v: check_array(_string(v)),
    "dependency": lambda v: check_dependency(_string(v)),
    "project": lambda v: check_token(_string(v)),
    "account": lambda v: check_token(_string(v)),
    "partition": lambda v: _string(v, MAX_NAME),
    "qos": lambda v: check_token(_string(v)),
    "directives": _strings(check_directive),
    "wait_for_gpus": _int(0, MAX_WAIT_FOR_GPUS),
}


def quick(fields: dict[str, Any]) -> Request | None:
    """The request ``fields`` make when every value plainly passes the model's checks, else None."""
    try:
        values = {name: _FAST[name](value) for name, value in fields.items()}
        request = Request(**values, model_fields_set=frozenset(values))
        check_shape(request)
    except (KeyError, ValueError, TypeError, _Unsure):
        return None
    return request


def build(fields: dict[str, Any]) -> Request:
    """A validated request: :func:`quick`, else the model (whose ValidationError propagates)."""
    request = quick(fields)
    if request is not None:
        return request
    from gpuhub.request import JobRequest

    return plain(JobRequest(**fields))
