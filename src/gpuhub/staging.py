"""Copy a local project directory to a site before a job runs there (``gpuhub submit --stage DIR``).

Only what changed is sent. One remote command lists the files already there with their size,
mtime and mode; a local file whose size, whole-second mtime and mode all match is skipped
(the quick check rsync makes). Each file sent gets the local mtime, so the next run skips it.
A file edited within the same second without changing its size is not noticed; touching it
(or any later edit) is.

Uploads go through :meth:`Transport.put_files` (pipelined SFTP over SSH); every remote
command gets its paths as separate arguments, so any file name works.

Excludes are fnmatch patterns (``*``, ``?``, ``[...]``; case-sensitive) tried against every
path component and against the path relative to the staged directory, so ``data`` skips
every directory or file named ``data``, ``*.pyc`` every compiled file and ``src/gen/*``
one subtree. A pattern with a trailing ``/`` matches directories only; a leading ``/``
anchors it to the top of the staged directory. A ``.gpuhubignore`` file at the top adds
patterns, one a line (blank lines and ``#`` comments ignored; ``!`` negation is not
supported).

Symbolic links: a link to a file inside the staged directory is followed (its content is sent);
a link to a file outside it is refused (a link to ``~/.ssh/id_ed25519`` would send the key) unless
``follow_symlinks`` is set; links to directories and dangling links are skipped and listed in
:attr:`StageResult.links_skipped`. A file name that is not UTF-8 is refused: the site's listing
could not name it back.

With ``delete=True`` remote files that no longer exist locally are removed, in one command,
together with directories left empty by that. Excluded paths and skipped links are never
deleted, so data, checkpoints and ``wandb`` runs the job wrote next to the code survive.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import posixpath
import re
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from gpuhub.errors import GpuhubError
from gpuhub.transport.base import Transport, Upload, remote_argv_path

log = logging.getLogger(__name__)

DEFAULT_EXCLUDES = (
    ".git",
    "__pycache__",
    "*.pyc",
    ".venv",
    "venv",
    ".mypy_cache",
    ".pytest_cache",
    ".ipynb_checkpoints",
    "data",
    "wandb",
    "*.ckpt",
    ".DS_Store",
)
IGNORE_FILE = ".gpuhubignore"
STAGE_ROOT = "gpuhub-stage"
# Mode bits a staged file may carry: never group- or world-writable (a Windows checkout reports 0o666).
_MODE_MASK = 0o755

# Lists the files under DIR ($1) as "SIZE MTIME MODE PATH", NUL-terminated, PATH relative to DIR.
# A missing DIR lists nothing.
_LIST_SCRIPT = (
    '[ -e "$1" ] || [ -L "$1" ] || exit 0; '
    '[ -d "$1" ] || { echo "$1 exists and is not a directory" >&2; exit 3; }; '
    'exec find -H "$1" -mindepth 1 '
    "-type f -printf '%s %T@ %m %P\\0'"
)
# Removes the files named on stdin (NUL-separated), then tries the directories given as
# arguments (deepest first); a directory that is not empty stays.
_DELETE_SCRIPT = 'xargs -0 rm -f -- || exit 1; [ "$#" -eq 0 ] || rmdir -- "$@" 2>/dev/null; exit 0'


class StageError(GpuhubError):
    """The local directory cannot be staged (missing, not a directory, unreadable)."""

    exit_code = 2


@dataclass(frozen=True)
class StageResult:
    remote_dir: str  # as commands on the site see it: relative to the remote home, or absolute
    sent: int  # files uploaded (new or changed)
    skipped: int  # files already up to date on the site
    deleted: int  # remote files removed (delete=True)
    bytes_sent: int
    seconds: float
    excluded: int = 0  # local files and directories left out by the exclude patterns
    links_skipped: tuple[str, ...] = ()  # directory and dangling symlinks, relative paths


@dataclass(frozen=True)
class _LocalFile:
    path: str  # absolute local path
    size: int
    mtime: float
    mode: int


def remote_dir_for(local_dir: Path) -> str:
    """Where ``local_dir`` is staged by default: ``gpuhub-stage/<name>-<8 hex>``, under the remote home.

    The hash of the absolute local path keeps two checkouts with the same name apart, and
    gives the same directory every time, which is what makes the second upload cheap.
    """
    absolute = Path(os.path.abspath(Path(local_dir).expanduser()))
    digest = hashlib.sha256(str(absolute).encode("utf-8", "surrogateescape")).hexdigest()[:8]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", absolute.name).strip("._") or "project"
    return f"{STAGE_ROOT}/{name}-{digest}"


class _Excluder:
    def __init__(self, patterns: Sequence[str]) -> None:
        self.rules: list[tuple[str, bool, bool]] = []  # (pattern, directories only, anchored)
        for raw in patterns:
            pattern = raw.strip()
            if not pattern:
                continue
            dir_only = pattern.endswith("/")
            anchored = pattern.startswith("/")
            pattern = pattern.strip("/")
            if pattern:
                self.rules.append((pattern, dir_only, anchored))

    def match(self, rel: str, is_dir: bool) -> bool:
        """Whether the entry ``rel`` (posix, relative) is excluded; its parents are not looked at."""
        name = rel.rsplit("/", 1)[-1]
        for pattern, dir_only, anchored in self.rules:
            if dir_only and not is_dir:
                continue
            if fnmatch.fnmatchcase(rel, pattern) or (not anchored and fnmatch.fnmatchcase(name, pattern)):
                return True
        return False

    def match_path(self, rel: str, is_dir: bool = False) -> bool:
        """Whether ``rel`` or any directory above it is excluded."""
        parts = rel.split("/")
        for depth in range(1, len(parts)):
            if self.match("/".join(parts[:depth]), True):
                return True
        return self.match(rel, is_dir)


def read_ignore_file(local_dir: Path) -> list[str]:
    """The patterns of ``local_dir/.gpuhubignore`` (none if it does not exist)."""
    path = local_dir / IGNORE_FILE
    try:
        text = path.read_text(encoding="utf-8-sig")  # an editor's byte-order mark is not part of a pattern
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise StageError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _scan(
    root: Path, excluder: _Excluder, follow_symlinks: bool = False
) -> tuple[dict[str, _LocalFile], set[str], list[str], int]:
    """Files (relative posix path -> facts), directories, skipped links and the excluded count."""
    inside = os.path.realpath(root)
    files: dict[str, _LocalFile] = {}
    dirs: set[str] = set()
    links: list[str] = []
    excluded = 0

    def fail(exc: OSError) -> NoReturn:
        raise StageError(f"cannot read {exc.filename}: {exc.strerror or exc}")

    for top, dirnames, filenames, in_dir in _walk(root, fail):
        prefix = "" if top == "" else top + "/"
        keep = []
        for name in sorted(dirnames):
            rel = prefix + name
            if os.path.islink(os.path.join(in_dir, name)):
                if not excluder.match(rel, True):
                    links.append(rel)
                continue
            if excluder.match(rel, True):
                excluded += 1
                continue
            _check_name(rel, root)
            keep.append(name)
            dirs.add(rel)
        dirnames[:] = keep
        for name in sorted(filenames):
            rel = prefix + name
            full = os.path.join(in_dir, name)
            if excluder.match(rel, False):
                excluded += 1
                continue
            _check_name(rel, root)
            try:
                info = os.stat(full)  # follows a link to a file
            except FileNotFoundError:
                links.append(rel)  # dangling link (or removed just now)
                continue
            except OSError as exc:
                fail(exc)
            if stat.S_ISDIR(info.st_mode):  # a link to a directory that os.walk listed as a file
                links.append(rel)
                continue
            if not stat.S_ISREG(info.st_mode):
                continue  # sockets, FIFOs, devices
            if not follow_symlinks and os.path.islink(full):
                _check_link(full, rel, root, inside)
            files[rel] = _LocalFile(full, info.st_size, info.st_mtime, stat.S_IMODE(info.st_mode) & _MODE_MASK)
    return files, dirs, links, excluded


def _check_name(rel: str, root: Path) -> None:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        shown = rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise StageError(
            f"cannot stage {root}/{shown}: its name is not UTF-8; rename it, or exclude it in {IGNORE_FILE}"
        ) from None


def _check_link(full: str, rel: str, root: Path, inside: str) -> None:
    target = os.path.realpath(full)
    if os.path.commonpath([inside, target]) != inside:
        raise StageError(
            f"{root}/{rel} is a symbolic link to {target}, outside {root}: not sent (a key or a secret "
            f"could leak); exclude it in {IGNORE_FILE}, or pass --follow-symlinks to send what it points to"
        )


def check_local(local_dir: Path, follow_symlinks: bool = False) -> int:
    """What :func:`stage` checks before sending anything (for a dry run): the number of files it would consider."""
    root = _root(local_dir)
    files, _, _, _ = _scan(root, _Excluder([*DEFAULT_EXCLUDES, *read_ignore_file(root)]), follow_symlinks)
    return len(files)


def _root(local_dir: Path) -> Path:
    root = Path(local_dir).expanduser()
    if not root.exists():
        raise StageError(f"cannot stage {local_dir}: no such directory")
    if not root.is_dir():
        raise StageError(f"cannot stage {local_dir}: not a directory")
    return root


def _walk(root: Path, onerror: Callable[[OSError], NoReturn]) -> Iterator[tuple[str, list[str], list[str], str]]:
    """os.walk with paths relative to ``root`` in posix form (for laptops on Windows too)."""
    base = str(root)
    for in_dir, dirnames, filenames in os.walk(base, onerror=onerror, followlinks=False):
        rel = os.path.relpath(in_dir, base)
        top = "" if rel == "." else rel.replace(os.sep, "/")
        yield top, dirnames, filenames, in_dir


def _normalize_remote(remote_dir: str) -> str:
    if remote_dir.startswith("~") and not remote_dir.startswith("~/") and remote_dir != "~":
        raise StageError(f"cannot stage into {remote_dir!r}: only ~/ (your own home) is understood")
    path = remote_argv_path(remote_dir.strip())
    if path != "/":
        path = path.rstrip("/")
    path = posixpath.normpath(path) if path else path
    if path in ("", ".", "/", "./", ".."):
        raise StageError(f"refusing to stage into {remote_dir!r}: give a directory below your remote home")
    return path if not path.startswith("-") else "./" + path


def _remote_listing(transport: Transport, remote_dir: str) -> dict[str, tuple[int, int, int]]:
    """Remote relative path -> (size, whole-second mtime, mode) of every file under ``remote_dir``."""
    result = transport.run(["sh", "-c", _LIST_SCRIPT, "sh", remote_dir], timeout=300.0)
    files: dict[str, tuple[int, int, int]] = {}
    for record in result.stdout.split("\0"):
        if not record:
            continue
        parts = record.split(" ", 3)
        if len(parts) != 4:
            continue
        size, mtime, mode, rel = parts
        try:
            files[rel] = (int(size), int(float(mtime)), int(mode, 8))
        except ValueError:
            files[rel] = (-1, -1, -1)  # unparsable: send again
    return files


def stage(
    transport: Transport,
    local_dir: Path,
    remote_dir: str | None = None,
    excludes: Sequence[str] = DEFAULT_EXCLUDES,
    extra_excludes: Sequence[str] = (),
    delete: bool = False,
    follow_symlinks: bool = False,
) -> StageResult:
    """Bring ``remote_dir`` on the site up to date with ``local_dir``; see the module docstring.

    ``remote_dir`` defaults to :func:`remote_dir_for`; relative paths are relative to the remote
    home. Raises :class:`StageError` (exit code 2) when ``local_dir`` is missing or not a
    directory, and a :class:`~gpuhub.errors.GpuhubError` naming the file when an upload fails.
    """
    start = time.monotonic()
    root = _root(local_dir)
    target = _normalize_remote(remote_dir if remote_dir is not None else remote_dir_for(root))
    excluder = _Excluder([*excludes, *extra_excludes, *read_ignore_file(root)])
    local, local_dirs, links, excluded = _scan(root, excluder, follow_symlinks)

    remote = _remote_listing(transport, target)
    changed = [rel for rel, facts in local.items() if remote.get(rel) != (facts.size, int(facts.mtime), facts.mode)]
    deleted = 0
    if delete:
        protected = set(links)
        gone = [
            rel
            for rel in remote
            if rel not in local
            and not excluder.match_path(rel)
            and not any(rel == p or rel.startswith(p + "/") for p in protected)
        ]
        if gone:
            emptied: set[str] = set()
            for rel in gone:
                parent = posixpath.dirname(rel)
                while parent and parent not in local_dirs and parent not in emptied:
                    emptied.add(parent)
                    parent = posixpath.dirname(parent)
            order = sorted(emptied, key=lambda d: (-d.count("/"), d))
            argv = ["sh", "-c", _DELETE_SCRIPT, "sh", *(posixpath.join(target, d) for d in order)]
            stdin = "".join(posixpath.join(target, rel) + "\0" for rel in sorted(gone))
            transport.run(argv, stdin=stdin, timeout=300.0)
            deleted = len(gone)

    # After deleting, so that a local file may replace a remote directory of the same name.
    uploads = [
        Upload(local[rel].path, posixpath.join(target, rel), local[rel].mtime, local[rel].mode) for rel in changed
    ]
    log.debug("staging %s to %s: %d of %d files changed", root, target, len(uploads), len(local))
    transport.put_files(uploads)

    return StageResult(
        remote_dir=target,
        sent=len(uploads),
        skipped=len(local) - len(uploads),
        deleted=deleted,
        bytes_sent=sum(local[rel].size for rel in changed),
        seconds=time.monotonic() - start,
        excluded=excluded,
        links_skipped=tuple(sorted(links)),
    )
