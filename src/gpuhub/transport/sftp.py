"""Files over SFTP: paths, atomic writes, and the pipelined upload behind ``put_files``.

Sending files one request at a time costs five or more round trips per file, which is a
minute for a few hundred small files over a 50 ms link. :class:`UploadPipeline` makes each
batch of files cost about three round trips: every missing directory is created once, then
all temporary files are opened together, written and closed together, and given their mode
and mtime and renamed into place together. It uses paramiko's request internals
(``_async_request``/``_read_response``, which its own SFTPFile prefetching relies on); a
paramiko without them gets :func:`upload_one_by_one`.

Every file is written under a temporary name and renamed into place, so a reader never sees
half a file. SFTP paths are relative to the login directory, so ``~/x`` is sent as ``x``.
The functions here take an open ``paramiko.SFTPClient``; keeping that session alive is the
transport's job.
"""

from __future__ import annotations

import posixpath
import uuid
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, replace

import paramiko
from paramiko import sftp as sftp_proto
from paramiko.message import Message

from gpuhub.transport.base import TransportError, Upload, upload_mode

_BUF = 65536


def remote_path(path: str) -> str:
    """SFTP paths are relative to the login directory: ``~/x`` becomes ``x``."""
    if path == "~":
        return "."
    if path.startswith("~/"):
        return path[2:] or "."
    if path.startswith("~"):
        raise TransportError(f"{path!r}: only ~/ (your own home) is understood in remote paths")
    return path


def error_text(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def makedirs(sftp: paramiko.SFTPClient, directory: str) -> None:
    """``mkdir -p`` over SFTP."""
    if directory in ("", ".", "/"):
        return
    try:
        sftp.stat(directory)
        return
    except FileNotFoundError:
        pass
    makedirs(sftp, posixpath.dirname(directory.rstrip("/")))
    try:
        sftp.mkdir(directory)
    except OSError:
        sftp.stat(directory)  # created meanwhile by someone else is fine; anything else raises


def write_text(sftp: paramiko.SFTPClient, target: str, text: str, mode: int, what: str) -> None:
    """Write ``text`` to ``target`` (from :func:`remote_path`); ``what`` names the file in errors."""
    directory, name = posixpath.split(target)
    tmp = posixpath.join(directory, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        makedirs(sftp, directory)
        with sftp.open(tmp, "wb") as handle:
            handle.set_pipelined(True)
            handle.write(text.encode("utf-8"))
        sftp.chmod(tmp, mode)
        sftp.posix_rename(tmp, target)
    except (OSError, EOFError, paramiko.SSHException) as exc:
        with suppress(OSError, EOFError, paramiko.SSHException):
            sftp.remove(tmp)
        raise TransportError(f"cannot write {what}: {error_text(exc)}") from None


def read_bytes(sftp: paramiko.SFTPClient, path: str, where: str) -> bytes:
    try:
        with sftp.open(remote_path(path), "rb") as handle:
            handle.prefetch()
            return handle.read()
    except FileNotFoundError:
        raise FileNotFoundError(2, f"no such file on {where}", path) from None
    except (OSError, EOFError, paramiko.SSHException) as exc:
        raise TransportError(f"cannot read {path} on {where}: {error_text(exc)}") from None


def can_pipeline(sftp: paramiko.SFTPClient) -> bool:
    """Whether this paramiko has the request internals :class:`UploadPipeline` uses."""
    return hasattr(sftp, "_async_request") and hasattr(sftp, "_read_response")


def upload_one_by_one(sftp: paramiko.SFTPClient, uploads: Sequence[Upload], where: str) -> None:
    """The plain way, one file and several round trips at a time."""
    made: set[str] = set()
    for upload in uploads:
        target = remote_path(upload.remote_path)
        directory, name = posixpath.split(target)
        tmp = posixpath.join(directory, f".{name}.{uuid.uuid4().hex[:12]}.gpuhub-tmp")
        try:
            if directory not in made:
                makedirs(sftp, directory)
                made.add(directory)
            bits = upload_mode(upload)
            with open(upload.local_path, "rb") as src, sftp.open(tmp, "wb") as handle:
                handle.set_pipelined(True)
                while chunk := src.read(_BUF):
                    handle.write(chunk)
            sftp.chmod(tmp, bits)
            if upload.mtime is not None:
                sftp.utime(tmp, (upload.mtime, upload.mtime))
            sftp.posix_rename(tmp, target)
        except OSError as exc:
            with suppress(OSError, EOFError, paramiko.SSHException):
                sftp.remove(tmp)
            raise TransportError(
                f"cannot upload {upload.local_path} to {upload.remote_path} on {where}: {error_text(exc)}"
            ) from None


class _Replies:
    """Receives the replies to pipelined SFTP requests (paramiko hands them to ``_async_response``)."""

    def __init__(self) -> None:
        self.got: list[tuple[int, int, Message]] = []

    def _async_response(self, kind: int, msg: Message, num: int) -> None:
        self.got.append((num, kind, msg))


def _sftp_failure(kind: int, msg: Message) -> str | None:
    """None for an OK status, else why the request failed."""
    if kind != sftp_proto.CMD_STATUS:
        return f"unexpected SFTP reply {kind}"
    code = msg.get_int()
    text = msg.get_text()
    if code == sftp_proto.SFTP_OK:
        return None
    return text or f"SFTP status {code}"


@dataclass
class _Outgoing:
    upload: Upload
    target: str
    tmp: str
    handle: bytes | None = None
    error: str | None = None

    def fail(self, why: str) -> None:
        if self.error is None:
            self.error = why


class UploadPipeline:
    """Many uploads over one SFTP session, with up to ``WINDOW`` requests in flight.

    OpenSSH's sftp-server answers requests in order, so a setstat and a rename sent back to
    back apply in that order.
    """

    WINDOW = 256
    GROUP = 128  # files open at once
    CHUNK = 32768  # bytes per write request, what every SFTP server accepts

    def __init__(self, sftp: paramiko.SFTPClient, where: str) -> None:
        self.sftp = sftp
        self.where = where
        self.replies = _Replies()
        self.pending: dict[int, Callable[[int, Message], None]] = {}

    def send(self, kind: int, *args: object, then: Callable[[int, Message], None]) -> None:
        while len(self.pending) >= self.WINDOW:
            self._receive()
        num = self.sftp._async_request(self.replies, kind, *args)
        self.pending[num] = then

    def _receive(self) -> None:
        self.sftp._read_response()
        got, self.replies.got = self.replies.got, []
        for num, kind, msg in got:
            callback = self.pending.pop(num, None)
            if callback is not None:
                callback(kind, msg)

    def wait(self) -> None:
        while self.pending:
            self._receive()

    def path(self, path: str) -> bytes:
        return self.sftp._adjust_cwd(path)

    def upload(self, uploads: list[Upload]) -> None:
        # Every directory on the way, parents first, in one round trip; "exists" errors are
        # expected and harmless, and a directory that truly cannot be made fails the open below.
        directories: set[str] = set()
        for upload in uploads:
            directory = posixpath.dirname(remote_path(upload.remote_path))
            while directory not in ("", ".", "/", "..") and directory not in directories:
                directories.add(directory)
                directory = posixpath.dirname(directory)
        for directory in sorted(directories, key=lambda d: d.count("/")):
            self.send(sftp_proto.CMD_MKDIR, self.path(directory), paramiko.SFTPAttributes(), then=_ignore_reply)
        self.wait()
        failed: list[_Outgoing] = []
        for start in range(0, len(uploads), self.GROUP):
            failed += self._group(uploads[start : start + self.GROUP])
            if failed:
                break
        if failed:
            first = failed[0]
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise TransportError(
                f"cannot upload {first.upload.local_path} to {first.upload.remote_path} on {self.where}: "
                f"{first.error}{more}"
            )

    def _group(self, uploads: list[Upload]) -> list[_Outgoing]:
        files = []
        for upload in uploads:
            target = remote_path(upload.remote_path)
            directory, name = posixpath.split(target)
            tmp = posixpath.join(directory, f".{name}.{uuid.uuid4().hex[:12]}.gpuhub-tmp")
            files.append(_Outgoing(upload, target, tmp))

        def checker(item: _Outgoing) -> Callable[[int, Message], None]:
            def check(kind: int, msg: Message) -> None:
                why = _sftp_failure(kind, msg)
                if why:
                    item.fail(why)

            return check

        def opener(item: _Outgoing) -> Callable[[int, Message], None]:
            def opened(kind: int, msg: Message) -> None:
                if kind == sftp_proto.CMD_HANDLE:
                    item.handle = msg.get_binary()
                else:
                    item.fail(_sftp_failure(kind, msg) or "no file handle")

            return opened

        flags = sftp_proto.SFTP_FLAG_WRITE | sftp_proto.SFTP_FLAG_CREATE | sftp_proto.SFTP_FLAG_EXCL
        for item in files:
            try:
                item.upload = replace(item.upload, mode=upload_mode(item.upload))
            except OSError as exc:
                item.fail(error_text(exc))
                continue
            self.send(sftp_proto.CMD_OPEN, self.path(item.tmp), flags, paramiko.SFTPAttributes(), then=opener(item))
        self.wait()

        for item in files:
            if item.handle is None:
                continue
            check = checker(item)
            try:
                with open(item.upload.local_path, "rb") as src:
                    offset = 0
                    while chunk := src.read(self.CHUNK):
                        if item.error:
                            break
                        self.send(sftp_proto.CMD_WRITE, item.handle, sftp_proto.int64(offset), chunk, then=check)
                        offset += len(chunk)
            except OSError as exc:
                item.fail(error_text(exc))
            self.send(sftp_proto.CMD_CLOSE, item.handle, then=check)
        self.wait()

        # Times and mode after close: on NFS, writes flushed at close would move the mtime again.
        for item in files:
            if item.handle is None or item.error:
                continue
            attrs = paramiko.SFTPAttributes()
            attrs.st_mode = item.upload.mode
            if item.upload.mtime is not None:
                attrs.st_atime = attrs.st_mtime = int(item.upload.mtime)
            check = checker(item)
            self.send(sftp_proto.CMD_SETSTAT, self.path(item.tmp), attrs, then=check)
            self.send(
                sftp_proto.CMD_EXTENDED,
                "posix-rename@openssh.com",
                self.path(item.tmp),
                self.path(item.target),
                then=check,
            )
        self.wait()

        failed = [item for item in files if item.error]
        for item in failed:
            if item.handle is not None:
                self.send(sftp_proto.CMD_REMOVE, self.path(item.tmp), then=_ignore_reply)
        self.wait()
        return failed


def _ignore_reply(kind: int, msg: Message) -> None:
    pass
