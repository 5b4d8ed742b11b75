"""The transport interface and its result and error types."""

from __future__ import annotations

import shlex
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

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
    def stream(self, argv: list[str]) -> Iterator[str]:
        """Run ``argv`` and yield its stdout line by line until it ends (or the caller stops)."""

    def alive(self) -> bool:
        return True

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def checked(self, result: Result, check: bool) -> Result:
        if check and not result.ok:
            raise CommandError(result, self.where)
        return result
