"""Bounds on a YAML document, checked on its event stream before anything is built from it.

A site file is untrusted data. Three things in YAML can hurt the reader before any schema runs:
aliases that expand exponentially ("billion laughs": nine levels of nine ``*a`` references make
387 million nodes), nesting deep enough to overflow the C parser's stack (it crashes the
interpreter) or Python's recursion limit, and integers with thousands of digits. The event stream
is read iteratively, so checking it is safe whatever the document holds.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

MAX_DEPTH = 64  # nested mappings and sequences; real site files use fewer than 8
MAX_NODES = 50_000  # nodes after expanding every alias; a large site file has a few thousand
MAX_DIGITS = 40  # digits of a plain integer scalar
_LONG_NUMBER = re.compile(rf"[-+]?[0-9_]{{{MAX_DIGITS + 1},}}(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?")

_Parser = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlLimitError(ValueError):
    def __init__(self, message: str, mark: yaml.Mark | None) -> None:
        super().__init__(message)
        self.mark = mark


def check(text: str, path: Path) -> None:
    """Raise :class:`YamlLimitError` (with the position) when ``text`` breaks a bound."""
    sizes: dict[str, int] = {}  # anchor -> nodes of the anchored value, aliases expanded
    stack: list[list] = []  # open collections: [anchor, nodes so far]
    total = 0
    for event in yaml.parse(text, Loader=_Parser):
        if isinstance(event, yaml.CollectionStartEvent):
            if len(stack) >= MAX_DEPTH:
                raise YamlLimitError(f"nested more than {MAX_DEPTH} levels deep", event.start_mark)
            stack.append([event.anchor, 1])
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            anchor, size = stack.pop()
        elif isinstance(event, yaml.ScalarEvent):
            anchor, size = event.anchor, 1
            if not event.style and _LONG_NUMBER.fullmatch(event.value):
                digits = sum(c.isdigit() for c in event.value)
                raise YamlLimitError(f"a number with {digits} digits (at most {MAX_DIGITS})", event.start_mark)
        elif isinstance(event, yaml.AliasEvent):
            anchor, size = None, sizes.get(event.anchor, 1)
        else:
            continue
        if anchor is not None:
            sizes[anchor] = size
        if stack:
            stack[-1][1] += size
        total += size if not stack else 0
        if (stack[0][1] if stack else total) > MAX_NODES or size > MAX_NODES:
            raise YamlLimitError(
                f"aliases expand to more than {MAX_NODES} values (an alias bomb?); write the values out instead",
                event.start_mark,
            )
