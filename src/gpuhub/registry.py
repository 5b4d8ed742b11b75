"""Finding and loading site files, layer over layer.

Layers, lowest first: shipped (``site_configs/``) < system config dir < user config dir <
directories in ``GPUHUB_SITES`` (colon-separated; the first one wins, as in ``PATH``).
A higher layer's file for the same site is deep-merged over the lower ones, so a user can set
one field (``connection.user``, ``defaults.project``) without copying the shipped file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuhub import sitecache
from gpuhub.errors import ConfigError, shown
from gpuhub.paths import shipped_dir, system_sites_dir, user_sites_dir
from gpuhub.record import Record

if TYPE_CHECKING:
    from pydantic import ValidationError

    from gpuhub.site import Site
    from gpuhub.sitedata import Site as PlainSite

SUFFIXES = sitecache.SUFFIXES
MAX_PROBLEMS = 50  # problems of one site file reported


class Layer(Record):
    name: str  # shipped, system, user, env
    path: Path


class SiteSource(Record):
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


def _site_names_in(directory: Path) -> list[str]:
    """The names of a directory's site files (the entries' types come with the listing: every
    command lists every layer, and a stat per file added up over many sites)."""
    try:
        with os.scandir(directory) as entries:
            return [entry.name.rpartition(".")[0] for entry in entries
                    if entry.name.endswith(SUFFIXES) and not entry.name.startswith(".") and entry.is_file()]
    except OSError:  # no such directory
        return []


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse one site file; any problem becomes a one-line ConfigError naming file and line."""
    from gpuhub.siteyaml import read_yaml as read

    return read(path)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; anything else (lists included) is replaced by the higher layer."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


SITE_NAME = r"[a-z0-9][a-z0-9_-]{0,63}"  # compiled on first use: a plan from the cache names no site


def valid_site_name(name: str) -> bool:
    return re.fullmatch(SITE_NAME, name, re.ASCII) is not None


def site_sources(name: str) -> list[SiteSource]:
    """Every file that contributes to site ``name``, lowest layer first."""
    if not valid_site_name(name):
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
        names.update(_site_names_in(layer.path))
    return sorted(names)


class SiteError(ConfigError):
    """A site file breaks its schema: the first problem (commands that use the site print one
    line); ``problems`` has them all, for `gpuhub sites validate`."""

    def __init__(self, problems: list[str], total: int) -> None:
        more = total - 1
        hint = f" (and {more} more problem{'s' * (more > 1)}: `gpuhub sites validate` lists them)" if more else ""
        super().__init__(problems[0] + hint)
        self.problems = problems


def load_site(name: str) -> PlainSite:
    """The merged, validated site ``name`` (as plain classes, see :mod:`gpuhub.sitedata`);
    ConfigError if unknown or invalid."""
    if not valid_site_name(name):
        site_sources(name)  # raises the error that explains site names
    entry = validated().get(name)
    if entry is None:
        raise ConfigError(unknown_site_message(name, site_names()))
    if entry.error is not None:
        raise entry_error(entry)
    return sitecache.site_from(entry)


def entry_error(entry: sitecache.Entry) -> ConfigError:
    """The error a site's files raised when they were validated, as it was raised then."""
    exc = ConfigError(entry.error or "")
    exc.problems = entry.problems or [exc.message]  # type: ignore[attr-defined]
    return exc


_MEMO: dict[str, Any] = {}


def validated() -> dict[str, sitecache.Entry]:
    """Every configured site, validated: from the cache when no file changed, else read again."""
    current = [(layer.name, layer.path) for layer in layers()]
    key = sitecache.fingerprint(current)
    if _MEMO.get("key") == key:
        return _MEMO["sites"]
    sites = sitecache.load(current, key)
    if sites is None:
        sites = {name: _entry(name) for name in site_names()}
        sitecache.save(current, key, sites)
    _MEMO.update(key=key, sites=sites)
    return sites


def _entry(name: str) -> sitecache.Entry:
    import pickle

    files = [(layer.name, str(layer.path / f"{name}{suffix}")) for layer in layers() for suffix in SUFFIXES
             if (layer.path / f"{name}{suffix}").is_file()]
    try:
        sources = site_sources(name)
        site = build_site(name, sources)
    except ConfigError as exc:
        return sitecache.Entry(files, error=exc.message, problems=getattr(exc, "problems", None) or [exc.message])
    from gpuhub.sitedata import from_model
    from gpuhub.siteview import describe

    views = {"json": site.model_dump(mode="json"), "text": describe(site, sources)}
    # Kept as plain classes, so that a command reading the cache never imports pydantic.
    return sitecache.Entry(files, site=pickle.dumps(from_model(site), protocol=pickle.HIGHEST_PROTOCOL),
                           summary=summary(site), views=views)


def summary(site: Site) -> dict[str, Any]:
    """What `gpuhub sites list` shows of a site."""
    return {
        "name": site.name,
        "scheduler": site.scheduler,
        "host": site.connection.host if site.connection else None,
        "description": site.description,
        "partitions": list(site.partitions),
        "gpu_models": sorted({p.gpu_model for p in site.partitions.values() if p.gpu_model}),
    }


def site_entry(name: str) -> sitecache.Entry:
    """The validated site ``name`` with its files and views; ConfigError if unknown or invalid."""
    entry = validated().get(name) if valid_site_name(name) else None
    if entry is None:
        load_site(name)  # raises the right error
    assert entry is not None
    if entry.error is not None:
        raise entry_error(entry)
    return entry


def unknown_site_message(name: str, known: list[str]) -> str:
    """``unknown site 'jeanzay'; did you mean 'jean-zay'? known sites: ...``"""
    import difflib

    squash = {k.replace("-", "").replace("_", "").lower(): k for k in known}
    close = [squash[s] for s in difflib.get_close_matches(name.replace("-", "").replace("_", "").lower(), squash, 1)]
    guess = f"did you mean {close[0]!r}? " if close else ""
    hint = f"known sites: {', '.join(known)}" if known else "no site files found"
    return f"unknown site {name!r}; {guess}{hint} (see `gpuhub sites list`)"


def build_site(name: str, sources: list[SiteSource]) -> Site:
    from pydantic import ValidationError

    from gpuhub.site import Site

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


def load_sites(names: Iterable[str]) -> tuple[list[PlainSite], dict[str, str]]:
    """Many sites at once, from the validated-site cache: the sites that load and, for the
    others, the one-line reason."""
    entries = validated()
    sites, broken = [], {}
    for name in names:
        entry = entries.get(name)
        if entry is None:
            broken[name] = unknown_site_message(name, sorted(entries))
        elif entry.error is not None:
            broken[name] = entry.error
        else:
            sites.append(sitecache.site_from(entry))
    return sites, broken


def list_sites() -> list[PlainSite]:
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

    from gpuhub.site import Site

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
    from gpuhub.siteyaml import line_of

    return line_of(path, loc)
