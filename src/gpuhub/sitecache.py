"""Validated sites kept between runs, so a command that contacts no site starts fast.

Reading and validating every site file (YAML, then the pydantic models) costs far more than the
rest of a ``gpuhub render``. The result is kept in the user cache directory, keyed by everything it
was made from: the path, size, modification and change time and inode of every site file in every
layer, the gpuhub version and the code that validates them. Any change to any of these is a miss,
and the files are read again; a cache is never trusted across changed files.

The cache is a pickle, read only from a file the user owns that nobody else can write, in a
directory nobody else can write (the same trust as the user's own ``~/.bashrc``). It is written
atomically (temporary file, then rename): a crash leaves the old file or the new one. A missing,
damaged or stale cache is simply rebuilt; ``GPUHUB_SITE_CACHE=off`` disables it.
"""

from __future__ import annotations

import os
import pickle
import stat
import sys
import zlib
from pathlib import Path
from typing import Any

from gpuhub import __version__
from gpuhub.record import Factory, Record

FORMAT = 3  # 2: sites kept as gpuhub.sitedata classes; 3: entries as gpuhub.record classes
SUFFIXES = (".yaml", ".yml")
_PACKAGE = Path(__file__).resolve().parent
# The code whose behaviour a cached result depends on: a change to it (a checkout being worked
# on) is a miss, like a change to a site file.
_CODE_DIRS = (_PACKAGE, _PACKAGE / "backends", _PACKAGE / "broker")


class Entry(Record, frozen=False):
    """One site: the files it comes from, then either the validated site or the error it raised."""

    sources: list[tuple[str, str]]  # (layer, path), lowest layer first
    site: bytes | None = None  # pickled gpuhub.sitedata.Site
    error: str | None = None  # the first problem, as commands using the site print it
    problems: list[str] | None = None  # every problem, for `sites validate`
    summary: dict[str, Any] = Factory(dict)  # what `sites list` shows
    views: dict[str, Any] = Factory(dict)  # what `sites show` prints: "text", "json"


def cache_dir() -> Path:
    from gpuhub.paths import user_cache_dir

    return user_cache_dir()


def enabled() -> bool:
    return os.environ.get("GPUHUB_SITE_CACHE", "on").lower() not in ("off", "0", "no", "false")


def _stats(directory: Path, suffixes: tuple[str, ...]) -> list[tuple[Any, ...]]:
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:
        return []
    out = []
    for entry in entries:
        if not entry.name.endswith(suffixes) or entry.name.startswith("."):
            continue
        try:
            st = entry.stat()
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            out.append((entry.path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    return out


def fingerprint(layers: list[tuple[str, Path]]) -> tuple[Any, ...]:
    """Everything the validated sites depend on; equal fingerprints mean equal results."""
    files = [(name, str(path), _stats(path, SUFFIXES)) for name, path in layers]
    return (FORMAT, __version__, sys.version, _pydantic_stamp(), code_stamp(), repr(files))


_CODE: list[tuple[Any, ...]] = []


def code_stamp() -> tuple[Any, ...]:
    """Path, size, times and inode of gpuhub's own modules (read once per process)."""
    if not _CODE:
        _CODE.append(tuple(tuple(s) for d in _CODE_DIRS for s in _stats(d, (".py",))))
    return _CODE[0]


def _pydantic_stamp() -> tuple[Any, ...]:
    """Where pydantic is and when it was installed: an upgrade changes how pickles load."""
    import importlib.util

    spec = importlib.util.find_spec("pydantic")
    origin = spec.origin if spec and spec.origin else ""
    try:
        st = os.stat(origin)
    except OSError:
        return (origin,)
    return (origin, st.st_mtime_ns, st.st_size)


def file_tag(text: str) -> str:
    """A short name for the cache file of ``text`` (its search paths) in this Python environment:
    gpuhub installed in two venvs keeps two caches, not one each rebuilds after the other (their
    pydantic or gpuhub differ, so do their keys). Only a name: the file holds the whole key and a
    reader checks it, so two sharing a name only rebuild each other's cache, never read a wrong
    one; crc32 loads no OpenSSL at start-up, unlike hashlib."""
    return f"{zlib.crc32(repr((sys.prefix, text)).encode()):08x}"


def _file_for(layers: list[tuple[str, Path]]) -> Path:
    return cache_dir() / f"sites-{file_tag(repr([(n, str(p)) for n, p in layers]))}.pickle"


def private(st: os.stat_result) -> bool:
    """Owned by this user and writable by nobody else."""
    return st.st_uid == os.getuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def load(layers: list[tuple[str, Path]], key: tuple[Any, ...]) -> dict[str, Entry] | None:
    """The cached sites for these layers, or None when there is no usable, up-to-date cache."""
    stored = read_private(_file_for(layers))
    if not isinstance(stored, dict) or stored.get("key") != key or not isinstance(stored.get("sites"), dict):
        return None
    return stored["sites"]


def save(layers: list[tuple[str, Path]], key: tuple[Any, ...], sites: dict[str, Entry]) -> None:
    """Write the cache atomically; failing to write it is never an error (it is only a cache)."""
    write_private(_file_for(layers), {"key": key, "sites": sites})


def read_private(path: Path) -> Any:
    """What a cache file holds, or None: caches off, no such file, not private, damaged."""
    return load_private(path) if enabled() else None


def write_private(path: Path, value: Any) -> None:
    """Pickle ``value`` into ``path`` atomically, unless caches are off; errors are ignored."""
    if enabled():
        dump_private(path, value)


def load_private(path: Path, limit: int | None = None) -> Any:
    """What a pickle file holds, or None: no such file, not private, over ``limit`` bytes, damaged."""
    try:
        with open(path, "rb") as handle:
            st = os.fstat(handle.fileno())
            if not (private(st) and private(os.stat(path.parent))) or (limit is not None and st.st_size > limit):
                return None
            data = handle.read()
        return pickle.loads(data)
    except Exception:  # missing, unreadable, truncated or from another version: rebuilt by the caller
        return None


def dump_private(path: Path, value: Any) -> None:
    """Pickle ``value`` into ``path`` atomically, in a private directory; errors are ignored."""
    import tempfile

    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
        os.replace(tmp, path)
        tmp = None
    except OSError:
        pass
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def site_from(entry: Entry) -> Any:
    """The validated site of an entry, a ``gpuhub.sitedata.Site`` (the caller has checked it has one)."""
    assert entry.site is not None
    return pickle.loads(entry.site)
