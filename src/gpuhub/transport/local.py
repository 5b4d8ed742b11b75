"""Commands on this machine, through subprocess."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from gpuhub.transport.base import CommandTimeout, Result, Transport, TransportError, Upload, upload_mode


class LocalTransport(Transport):
    """Commands run in the home directory, as they do over SSH, so relative paths mean the same."""

    where = "this machine"

    def run(self, argv: list[str], stdin: str | None = None, timeout: float = 60.0, check: bool = True) -> Result:
        try:
            # A new session so a timeout can kill the whole process group, grandchildren included.
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",  # a file name that is not UTF-8 must not break a listing (as over SSH)
                start_new_session=True,
                cwd=Path.home(),
            )
        except FileNotFoundError:
            if not Path.home().is_dir():  # commands start in the home directory
                raise TransportError(f"home directory {Path.home()} does not exist") from None
            raise TransportError(f"command not found on this machine: {argv[0]!r}") from None
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate()
            raise CommandTimeout(argv, timeout, self.where, out, err) from None
        return self.checked(Result(list(argv), proc.returncode, out, err), check)

    def put_text(self, path: str, text: str, mode: int = 0o644) -> None:
        target = _home_relative(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.chmod(tmp, mode)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_text(self, path: str) -> str:
        return _home_relative(path).read_text(encoding="utf-8", errors="replace")

    def put_file(self, local_path: str, remote_path: str, mtime: float | None = None, mode: int | None = None) -> None:
        target = _home_relative(remote_path)
        tmp: str | None = None
        try:
            bits = upload_mode(Upload(local_path, remote_path, mtime, mode))
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".gpuhub-tmp")
            with os.fdopen(fd, "wb") as out, open(local_path, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
            os.chmod(tmp, bits)
            if mtime is not None:
                os.utime(tmp, (mtime, mtime))
            os.replace(tmp, target)
        except OSError as exc:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            why = exc.strerror or str(exc)
            raise TransportError(f"cannot upload {local_path} to {remote_path} on {self.where}: {why}") from None
        except BaseException:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            raise

    def stream(self, argv: list[str], idle: float | None = None) -> Iterator[str]:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, start_new_session=True, bufsize=0, cwd=Path.home())
        try:
            assert proc.stdout is not None
            fd = proc.stdout.fileno()
            pending = b""
            while True:
                if not select.select([fd], [], [], idle)[0]:
                    yield ""
                    continue
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", errors="replace") + "\n"
            if pending:
                yield pending.decode("utf-8", errors="replace")
        finally:
            _kill_group(proc)
            proc.wait()


def _home_relative(path: str) -> Path:
    target = Path(path).expanduser()
    return target if target.is_absolute() else Path.home() / target


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
