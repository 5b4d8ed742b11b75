"""Reading site files: safe, bounded YAML with no duplicate keys and walltimes kept as text.

Imported only when a site file must actually be read: the validated-site cache spares it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from gpuhub import yaml_limits
from gpuhub.errors import ConfigError, shown

MAX_FILE_BYTES = 1 << 20  # a site file; the largest shipped one is a few KiB


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe loader that refuses duplicate keys (a silent override is an admin's worst bug)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {shown(key)} (first at line {seen[key] + 1})", mark
            )
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

# YAML 1.1 reads 20:00:00 as the base-60 number 72000; in a site file it is always a walltime.
# Keep such scalars as strings by dropping the sexagesimal int and float resolvers.
_SEXAGESIMAL = {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _SEXAGESIMAL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse one site file; any problem becomes a one-line ConfigError naming file and line."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:  # /dev/zero, a 2 GB mistake
            raise ConfigError(f"{path}: not a site file (a regular file of at most {MAX_FILE_BYTES >> 20} MiB)")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        yaml_limits.check(text, path)
        data = yaml.load(text, Loader=_Loader)
    except yaml_limits.YamlLimitError as exc:
        where = f"{path}:{exc.mark.line + 1}:{exc.mark.column + 1}" if exc.mark else str(path)
        raise ConfigError(f"{where}: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = " ".join((exc.problem or exc.context or "invalid YAML").split())[:200]
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {shown(str(exc), 200)}") from None
    except (ValueError, RecursionError, MemoryError) as exc:  # a value the constructor cannot build
        raise ConfigError(f"{path}: unreadable value: {shown(str(exc))}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a site file is a mapping of keys (name:, scheduler:, ...), not a {_kind(data)}")
    return data


def _kind(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number"}.get(type(value), type(value).__name__)


def line_of(path: Path, loc: Iterable[str]) -> int:
    """1-based line of the deepest node of ``loc`` present in the file (1 if none)."""
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):
        return 1
    line = node.start_mark.line if node else 0
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if str(k.value) == part), None)
            if match is None:
                break
            line, node = match[0].start_mark.line, match[1]
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line
        else:
            break
    return line + 1
