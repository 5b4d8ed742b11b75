"""Jinja2 for untrusted templates: no Python reachable, and bounded time, size and depth.

Site files, and the templates they name, travel between labs like any data file, so a template is
untrusted input. Rendering one must never run code on the user's machine, exhaust its memory or
hang. Three layers:

- :class:`jinja2.sandbox.ImmutableSandboxedEnvironment`: no ``_``-attributes (so no
  ``__globals__``), no calls to unsafe callables, no mutation of lists and dicts;
- a budget per render (:func:`budget`): loop iterations plus calls, call depth, template loads
  (include/extends/import), output size and wall time;
- operators and filters that multiply sizes (``*``, ``**``, ``%``, ``join``, ``center``, format
  widths, ...) are checked before they run, and every value they make is bounded.

Breaking a limit raises :class:`TemplateLimitError` naming it.
"""

from __future__ import annotations

import contextvars
import functools
import re
import string
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import jinja2
import jinja2.sandbox
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

MAX_STEPS = 200_000  # loop iterations plus calls in one render
MAX_DEPTH = 60  # nested macro and function calls
MAX_LOADS = 100  # templates loaded by one render (include, extends, import): stops include loops
MAX_VALUE = 1 << 22  # characters of a string, items of a list, made by the template
MAX_OUTPUT = 1 << 24  # characters of one rendered file
MAX_INT_BITS = 4096  # integers a template computes
MAX_SECONDS = 10.0  # wall time of one render; honest templates take milliseconds
_LOOP_FILTER = "_gpuhub_bounded_loop"


class TemplateLimitError(jinja2.TemplateRuntimeError):
    """A template went over one of the limits of this module."""


@dataclass
class _Budget:
    deadline: float
    steps: int = 0
    depth: int = 0
    loads: int = 0

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise TemplateLimitError(f"more than {MAX_STEPS} loop iterations and calls (a runaway loop?)")
        if time.monotonic() > self.deadline:
            raise TemplateLimitError(f"rendering took more than {MAX_SECONDS:g} s (a runaway loop?)")


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("gpuhub_template_budget", default=None)


def _budget() -> _Budget:
    # Outside `budget()` (a template rendered directly) each loop and call is bounded on its own.
    return _BUDGET.get() or _Budget(time.monotonic() + MAX_SECONDS)


@contextmanager
def budget() -> Iterator[None]:
    """A fresh budget for one render."""
    token = _BUDGET.set(_Budget(time.monotonic() + MAX_SECONDS))
    try:
        yield
    finally:
        _BUDGET.reset(token)


def render_bounded(template: jinja2.Template, context: dict[str, Any]) -> str:
    """Render with a fresh budget, stopping as soon as the output is too large."""
    with budget():
        parts, size = [], 0
        for chunk in template.generate(context):
            size += len(chunk)
            if size > MAX_OUTPUT:
                raise TemplateLimitError(f"output larger than {MAX_OUTPUT} characters")
            parts.append(chunk)
        return "".join(parts)


# --- size checks ------------------------------------------------------------------------------


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | bytes | list | tuple | dict) else 0


def _check_size(size: int, what: str) -> None:
    if size > MAX_VALUE:
        raise TemplateLimitError(f"{what} would make a value of {size} items; the limit is {MAX_VALUE}")


def _check_int(value: Any, what: str) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_VALUE:
        raise TemplateLimitError(f"{what}: {value if abs(value) < 10**12 else 'a huge number'} is over {MAX_VALUE}")


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        for seq, times in ((left, right), (right, left)):
            if _size(seq) and isinstance(times, int):
                _check_size(_size(seq) * max(times, 0), "'*'")
        if isinstance(left, int) and isinstance(right, int):
            _check_bits(abs(left).bit_length() + abs(right).bit_length(), "'*'")
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0:
            _check_bits(max(abs(left).bit_length(), 1) * right, "'**'")
    elif operator == "+":
        if _size(left) or _size(right):
            _check_size(_size(left) + _size(right), "'+'")
    elif operator == "%" and isinstance(left, str):
        _check_percent_format(left)


def _check_bits(bits: int, what: str) -> None:
    if bits > MAX_INT_BITS:
        raise TemplateLimitError(f"{what} would make an integer of about {bits} bits; the limit is {MAX_INT_BITS}")


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0 +-]*(\*|\d*)(?:\.(\*|\d*))?")


def _check_percent_format(fmt: str) -> None:
    for match in _PERCENT_SPEC.finditer(fmt):
        for width in match.groups():
            if width == "*" or (width and int(width) > MAX_VALUE):
                raise TemplateLimitError(f"format width {width!r} is not allowed (at most {MAX_VALUE})")


def _check_brace_format(fmt: str) -> None:
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError as exc:
        raise TemplateLimitError(f"bad format string: {exc}") from None
    for _, _, spec, _ in fields:
        if not spec:
            continue
        if "{" in spec:
            raise TemplateLimitError("nested format fields are not allowed in templates")
        if any(int(d) > MAX_VALUE for d in re.findall(r"\d+", spec)):
            raise TemplateLimitError(f"format spec {spec[:20]!r} asks for more than {MAX_VALUE} characters")


def _estimate(name: str, value: Any, args: tuple[Any, ...], kwargs: dict[str, Any], method: bool = False) -> None:
    """Before a filter (or, with ``method``, a str/list method) runs: refuse what would build something huge."""
    for arg in (*args, *kwargs.values()):
        _check_int(arg, name)
    if name == "join":
        if method:  # sep.join(items)
            sep, items = value, args[0] if args else ()
        else:  # items | join(sep)
            sep, items = (args[0] if args else kwargs.get("d", "")), value
        items = items if isinstance(items, list | tuple | str | dict) else ()
        _check_size(_size(sep) * len(items) + sum(_size(i) for i in items), "join")
    elif name == "replace" and isinstance(value, str) and len(args) >= 2:
        old, new = str(args[0]), str(args[1])
        count = len(value) + 1 if not old else value.count(old)
        _check_size(len(value) + count * max(len(new) - len(old), 0), "replace")
    elif name == "indent" and isinstance(value, str):
        width = args[0] if args else kwargs.get("width", 4)
        if isinstance(width, int):
            _check_size(len(value) + (value.count("\n") + 1) * width, "indent")
    elif name == "format" and isinstance(value, str):
        _check_percent_format(value)


def _bounded_result(name: str, result: Any) -> Any:
    _check_size(_size(result), name)
    return result


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    pass_arg = getattr(func, "jinja_pass_arg", None)

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _budget().step()
        first = 1 if pass_arg is not None else 0  # environment/context comes before the value
        value = args[first] if len(args) > first else None
        _estimate(name, value, tuple(args[first + 1 :]), kwargs)
        return _bounded_result(name, func(*args, **kwargs))

    return guarded


def _bounded_loop(iterable: Any) -> Iterator[Any]:
    """Every ``{% for %}`` iterates through this (see :meth:`SafeEnvironment._parse`)."""
    budget_now = _budget()
    for item in iterable:
        budget_now.step()
        yield item


class _BoundedNamespace(Namespace):
    """``namespace()`` whose attributes cannot grow without bound across loop iterations."""

    def __setitem__(self, name: str, value: Any) -> None:
        _check_size(_size(value), f"namespace attribute {name!r}")
        super().__setitem__(name, value)


class SafeEnvironment(ImmutableSandboxedEnvironment):
    """The environment every gpuhub template renders in (shipped ones too)."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals.pop("lipsum", None)  # lipsum(n=10**9) makes gigabytes of text
        self.globals["namespace"] = _BoundedNamespace
        for name, func in list(self.filters.items()):
            self.filters[name] = _guard_filter(name, func)
        self.filters[_LOOP_FILTER] = _bounded_loop

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, _LOOP_FILTER, [], [], None, None, lineno=loop.lineno)
        return tree

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _budget().step()
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        current = _budget()
        current.step()
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str | list | tuple | dict):
            _estimate(getattr(__obj, "__name__", "call"), owner, args, kwargs, method=True)
        current.depth += 1
        try:
            if current.depth > MAX_DEPTH:
                raise TemplateLimitError(f"calls nested more than {MAX_DEPTH} deep (a recursive macro?)")
            result = super().call(__context, __obj, *args, **kwargs)
        finally:
            current.depth -= 1
        return _bounded_result("call", result)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _check_brace_format(value.__self__)
        return wrapped

    def get_template(self, name: Any, parent: str | None = None, globals: Any = None) -> jinja2.Template:
        current = _BUDGET.get()
        if current is not None:
            current.loads += 1
            if current.loads > MAX_LOADS:
                raise TemplateLimitError(f"more than {MAX_LOADS} templates loaded (an include or extends loop?)")
        return super().get_template(name, parent, globals)


# What else rendering an untrusted template can raise; render() turns each into a one-line error.
UNTRUSTED_ERRORS = (
    RecursionError,
    MemoryError,
    OverflowError,
    UnicodeDecodeError,
    TypeError,
    ValueError,
    ArithmeticError,
    LookupError,
    AttributeError,
)


def describe(exc: BaseException) -> str:
    """One line for a template failure; the message is cut so a hostile template cannot flood it."""
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text; save the template as UTF-8"
    if isinstance(exc, RecursionError):
        return "templates or macros nested too deeply (an include or macro calling itself?)"
    if isinstance(exc, MemoryError):
        return "rendering ran out of memory"
    if isinstance(exc, jinja2.sandbox.SecurityError):
        text = f"not allowed in a template: {exc}"
    elif isinstance(exc, OverflowError) and "MAX_RANGE" in str(exc):
        text = f"range() of more than {jinja2.sandbox.MAX_RANGE} items"
    elif isinstance(exc, jinja2.TemplateError):
        text = str(exc.message if isinstance(exc, jinja2.TemplateError) and exc.message else exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:199] + "…"
