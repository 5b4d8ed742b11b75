"""Finding and loading site files, layer over layer.

Layers, lowest first: shipped (``site_configs/``) < system config dir < user config dir <
directories in ``GPUHUB_SITES`` (colon-separated; the first one wins, as in ``PATH``).
A higher layer's file for the same site is deep-merged over the lower ones, so a user can set
one field (``connection.user``, ``defaults.project``) without copying the shipped file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gpuhub import yaml_limits
from gpuhub.errors import ConfigError, shown
from gpuhub.paths import shipped_dir, system_sites_dir, user_sites_dir
from gpuhub.site import Site

SUFFIXES = (".yaml", ".yml")
MAX_PROBLEMS = 50  # problems of one site file reported


@dataclass(frozen=True)
class Layer:
    name: str  # shipped, system, user, env
    path: Path


@dataclass(frozen=True)
class SiteSource:
    """One file contributing to a site, with its parsed content."""

    layer: str
    path: Path
    data: dict[str, Any]


def layers() -> list[Layer]:
    """Search directories, lowest precedence first."""
    out = [Layer("shipped", shipped_dir("site_configs"))]
    out.append(Layer("system", system_sites_dir()))
    out.append(Layer("user", user_sites_dir()))
    extra = [p for p in os.environ.get("GPUHUB_SITES", "").split(os.pathsep) if p]
    out.extend(Layer("GPUHUB_SITES", Path(p).expanduser()) for p in reversed(extra))
    return out


def _site_files(directory: Path) -> Iterator[Path]:
    if not directory.is_dir():
        return
    for path in sorted(directory.iterdir()):
        if path.suffix in SUFFIXES and path.is_file() and not path.name.startswith("."):
            yield path


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


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; anything else (lists included) is replaced by the higher layer."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


SITE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}", re.ASCII)


def site_sources(name: str) -> list[SiteSource]:
    """Every file that contributes to site ``name``, lowest layer first."""
    if not SITE_NAME_RE.fullmatch(name):
        raise ConfigError(
            f"site {shown(name)}: a site name is 1 to 64 lower-case letters, digits, '-' or '_' "
            "(see `gpuhub sites list`)"
        )
    found = []
    for layer in layers():
        for suffix in SUFFIXES:
            path = layer.path / f"{name}{suffix}"
            if path.is_file():
                found.append(SiteSource(layer.name, path, read_yaml(path)))
    return found


def site_names() -> list[str]:
    names: set[str] = set()
    for layer in layers():
        names.update(p.stem for p in _site_files(layer.path))
    return sorted(names)


class SiteError(ConfigError):
    """A site file breaks its schema: the first problem (commands that use the site print one
    line); ``problems`` has them all, for `gpuhub sites validate`."""

    def __init__(self, problems: list[str], total: int) -> None:
        more = total - 1
        hint = f" (and {more} more problem{'s' * (more > 1)}: `gpuhub sites validate` lists them)" if more else ""
        super().__init__(problems[0] + hint)
        self.problems = problems


def load_site(name: str) -> Site:
    """The merged, validated site ``name``; ConfigError if unknown or invalid."""
    sources = site_sources(name)
    if not sources:
        raise ConfigError(unknown_site_message(name, site_names()))
    return build_site(name, sources)


def unknown_site_message(name: str, known: list[str]) -> str:
    """``unknown site 'jeanzay'; did you mean 'jean-zay'? known sites: ...``"""
    import difflib

    squash = {k.replace("-", "").replace("_", "").lower(): k for k in known}
    close = [squash[s] for s in difflib.get_close_matches(name.replace("-", "").replace("_", "").lower(), squash, 1)]
    guess = f"did you mean {close[0]!r}? " if close else ""
    hint = f"known sites: {', '.join(known)}" if known else "no site files found"
    return f"unknown site {name!r}; {guess}{hint} (see `gpuhub sites list`)"


def build_site(name: str, sources: list[SiteSource]) -> Site:
    merged: dict[str, Any] = {}
    for src in sources:
        merged = deep_merge(merged, src.data)
    declared = merged.get("name", name)
    if declared != name:
        top = next(s for s in reversed(sources) if "name" in s.data)
        raise ConfigError(
            f"{top.path}:{_line_of(top.path, ('name',))}: name {declared!r} differs from the file name "
            f"{name!r}; a site's name is its file name"
        )
    merged["name"] = name
    try:
        site = Site.model_validate(merged)
    except ValidationError as exc:
        raise SiteError(format_validation_error(exc, sources).splitlines(), exc.error_count()) from None
    _check_with_backend(site, sources)
    return site


def _check_with_backend(site: Site, sources: list[SiteSource]) -> None:
    """The scheduler's own rules (a Slurm directive starts with '-'...), as ``file:line: field: message``."""
    from gpuhub.backends import backend_for

    problems = backend_for(site.scheduler).check_site(site)
    lines = []
    for problem in problems:
        src = _owner(problem.field, sources) if problem.field else sources[-1]
        where = f"{src.path}:{_line_of(src.path, problem.field)}" if src else f"site {site.name}"
        lines.append(f"{where}: {'.'.join(problem.field) or '(top level)'}: {problem.message}")
    if lines:
        raise SiteError(lines, len(lines))


def load_file(path: Path) -> Site:
    """Validate one standalone site file (used by `sites validate PATH`)."""
    return build_site(path.stem, [SiteSource("file", path, read_yaml(path))])


def list_sites() -> list[Site]:
    return [load_site(n) for n in site_names()]


# --- error formatting -------------------------------------------------------------------------


def format_validation_error(exc: ValidationError, sources: list[SiteSource]) -> str:
    """One line per problem: ``file:line: field.path: what is wrong (allowed: ...)``."""
    lines = []
    errors = exc.errors(include_url=False)
    if len(errors) > MAX_PROBLEMS:  # each line reads the file again to find its line number
        lines.append(f"... and {len(errors) - MAX_PROBLEMS} more problems")
        errors = errors[:MAX_PROBLEMS]
    for err in errors:
        loc = tuple(str(p) for p in err["loc"])
        src = _owner(loc, sources)
        where = f"{src.path}:{_line_of(src.path, loc)}" if src else f"site {sources[-1].path.stem}"
        field = ".".join(loc) or "(top level)"
        lines.append(f"{where}: {field}: {_describe(err, loc)}")
    return "\n".join(lines[1:] + lines[:1] if len(lines) > MAX_PROBLEMS else lines)


def _describe(err: dict[str, Any], loc: tuple[str, ...]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        return f"unknown key {shown(loc[-1])}; allowed keys: {', '.join(allowed)}"
    if kind == "missing":
        return "required key is missing"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    given = err.get("input")
    if not isinstance(given, dict | list) and shown(given) not in msg:
        msg = f"{msg} (got {shown(given)})"
    return msg


def _allowed_keys(parent: tuple[str, ...]) -> list[str]:
    from pydantic import BaseModel

    model: Any = Site
    for part in parent:
        field = model.model_fields.get(part) if isinstance(model, type) else None
        if field is None:
            # inside a dict (partition key) or list (index): step to the item model
            continue
        model = _item_model(field.annotation)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
    return sorted(model.model_fields) if isinstance(model, type) else []


def _item_model(annotation: Any) -> Any:
    from typing import get_args

    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in reversed(get_args(annotation)):
        found = _item_model(arg)
        if found is not None:
            return found
    return None


def _owner(loc: tuple[str, ...], sources: list[SiteSource]) -> SiteSource | None:
    """The highest layer whose file holds the longest prefix of ``loc``."""
    best, best_len = None, -1
    for src in sources:
        depth = _depth(src.data, loc)
        if depth >= best_len and depth > 0:
            best, best_len = src, depth
    return best or (sources[-1] if sources else None)


def _depth(data: Any, loc: tuple[str, ...]) -> int:
    depth = 0
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            break
        depth += 1
    return depth


def _line_of(path: Path, loc: Iterable[str]) -> int:
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
