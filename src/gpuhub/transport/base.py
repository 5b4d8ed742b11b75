"""The transport interface and its result and error types."""

from __future__ import annotations

import base64
import os
import shlex
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from gpuhub.errors import GpuhubError


@dataclass(frozen=True)
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def _tail(text: str, limit: int = 400) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


class CommandError(GpuhubError):
    """A command ran and failed; carries everything needed to understand why."""

    def __init__(self, result: Result, where: str = "") -> None:
        self.result = result
        detail = _tail(result.stderr) or _tail(result.stdout) or "no output"
        place = f" on {where}" if where else ""
        super().__init__(f"`{shlex.join(result.argv)}`{place} failed (exit {result.returncode}): {detail}")


class CommandTimeout(GpuhubError):
    def __init__(self, argv: list[str], timeout: float, where: str = "", stdout: str = "", stderr: str = "") -> None:
        self.argv, self.timeout, self.stdout, self.stderr = argv, timeout, stdout, stderr
        place = f" on {where}" if where else ""
        super().__init__(f"`{shlex.join(argv)}`{place} did not finish within {timeout:g} s and was stopped")


class TransportError(GpuhubError):
    """Could not reach the site at all (connection, authentication, host key)."""


@dataclass(frozen=True)
class Upload:
    """One local file to copy to ``remote_path``, then give ``mtime`` and ``mode`` (None: the local file's bits)."""

    local_path: str
    remote_path: str
    mtime: float | None = None
    mode: int | None = None


def upload_mode(upload: Upload) -> int:
    """The permission bits the remote copy gets."""
    return upload.mode if upload.mode is not None else os.stat(upload.local_path).st_mode & 0o777


def remote_argv_path(path: str) -> str:
    """A remote path as a command argument: ``~/x`` becomes ``x`` (commands run in the home
    directory, and an argument is never tilde-expanded); a leading ``-`` gets ``./``."""
    if path in ("~", "~/"):
        return "."
    if path.startswith("~/"):
        path = path[2:].lstrip("/") or "."
    return "./" + path if path.startswith("-") else path


# Writes stdin (base64) to a temporary file next to $1, then sets mode $2 and mtime $3 and renames it.
_PUT_FILE_SCRIPT = (
    'set -e; mkdir -p -- "$(dirname -- "$1")"; t="$1.$$.gpuhub-tmp"; trap \'rm -f -- "$t"\' EXIT; '
    'base64 -d > "$t"; chmod -- "$2" "$t"; if [ -n "$3" ]; then touch -m -d "@$3" -- "$t"; fi; '
    'mv -f -- "$t" "$1"; trap - EXIT'
)


class Transport(ABC):
    """Run commands and move text files on a site."""

    where: str = "this machine"

    @abstractmethod
    def run(self, argv: list[str], stdin: str | None = None, timeout: float = 60.0, check: bool = True) -> Result:
        """Run ``argv`` (no shell); raise CommandError if ``check`` and it fails, CommandTimeout on timeout."""

    @abstractmethod
    def put_text(self, path: str, text: str, mode: int = 0o644) -> None:
        """Write ``text`` to ``path`` atomically (a reader never sees half a file)."""

    @abstractmethod
    def get_text(self, path: str) -> str: ...

    @abstractmethod
    def stream(self, argv: list[str], idle: float | None = None) -> Iterator[str]:
        """Run ``argv`` and yield its stdout line by line until it ends (or the caller stops).

        With ``idle``, an empty string is yielded after each ``idle`` seconds without output, so
        the caller can look at something else (has the job ended?) while nothing is printed.
        """

    def ensure_dir(self, path: str, timeout: float = 60.0) -> None:
        """``mkdir -p`` once per transport: submitting 100 jobs must not cost 100 extra round trips."""
        known: set[str] = self.__dict__.setdefault("_known_dirs", set())
        if path not in known:
            self.run(["mkdir", "-p", "--", path], timeout=timeout)
            known.add(path)

    def put_file(self, local_path: str, remote_path: str, mtime: float | None = None, mode: int | None = None) -> None:
        """Copy the local file ``local_path`` (any bytes) to ``remote_path``.

        Parent directories are created; the file appears atomically (temporary file, then
        rename); ``mtime`` (seconds since the epoch) is set when given; ``mode`` defaults to
        the local file's permission bits. Errors name the file.

        This generic version pipes the file through :meth:`run` (base64, POSIX shell, GNU
        touch); transports override it with something faster.
        """
        upload = Upload(local_path, remote_path, mtime, mode)
        try:
            data = base64.b64encode(Path(local_path).read_bytes()).decode("ascii")
            bits = upload_mode(upload)
        except OSError as exc:
            raise TransportError(f"cannot read {local_path}: {exc.strerror or exc}") from None
        stamp = "" if mtime is None else str(int(mtime))
        argv = ["sh", "-c", _PUT_FILE_SCRIPT, "sh", remote_argv_path(remote_path), f"{bits:o}", stamp]
        result = self.run(argv, stdin=data, timeout=max(60.0, len(data) / 1e6), check=False)
        if not result.ok:
            detail = _tail(result.stderr) or f"exit {result.returncode}"
            raise TransportError(f"cannot upload {local_path} to {remote_path} on {self.where}: {detail}")

    def put_files(self, uploads: Sequence[Upload]) -> None:
        """Copy many files, as :meth:`put_file` does each; stops at the first failure."""
        for upload in uploads:
            self.put_file(upload.local_path, upload.remote_path, upload.mtime, upload.mode)

    def alive(self) -> bool:
        return True

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def checked(self, result: Result, check: bool) -> Result:
        if check and not result.ok:
            raise CommandError(result, self.where)
        return result
