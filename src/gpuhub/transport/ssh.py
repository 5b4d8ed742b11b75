"""Commands and files on a site over one SSH connection (paramiko).

One :class:`SSHTransport` holds one SSH connection, opened on first use and shared by every
command (one SSH channel each, several at once from several threads) and by SFTP. If the
connection drops, the next call reconnects once.

Stopping a remote command: closing an SSH channel does *not* stop the command behind it
when no terminal is allocated (OpenSSH only hangs up a pty), so a timed-out ``sleep 300``
would live on. On a timeout gpuhub therefore sends the RFC 4254 "signal" channel request
(TERM, then KILL), which OpenSSH >= 7.9 delivers with ``killpg`` to the whole process group
of the command, before closing the channel. No wrapper around the command is needed, so
stdout and stderr stay exactly what the command wrote.

The rest lives next to this module: :mod:`~gpuhub.transport.ssh_config` (site settings and
ssh_config), :mod:`~gpuhub.transport.hostkeys` (known_hosts), :mod:`~gpuhub.transport.connect`
(opening and logging in, hop by hop), :mod:`~gpuhub.transport.trust` (``gpuhub sites trust``)
and :mod:`~gpuhub.transport.sftp` (file transfers). The names other code uses are importable
from here too.
"""

from __future__ import annotations

import getpass
import logging
import select
import shlex
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING

import paramiko
from paramiko.common import cMSG_CHANNEL_REQUEST
from paramiko.message import Message

from gpuhub.transport import sftp as files
from gpuhub.transport.base import CommandTimeout, Result, Transport, TransportError, Upload
from gpuhub.transport.connect import connect_chain
from gpuhub.transport.hostkeys import (
    HostKeyError,
    HostKeyRefused,
    HostKeyUnknown,
    KnownKey,
    ServerKey,
    append_known_host,
    fingerprint,
    gpuhub_known_hosts,
    known_keys,
)
from gpuhub.transport.ssh_config import Endpoint, load_ssh_config, resolve
from gpuhub.transport.trust import HostKeyScan, judge, scan_host_keys

if TYPE_CHECKING:
    from gpuhub.site import Connection

log = logging.getLogger(__name__)

# OpenSSH's default MaxSessions is 10 per connection; the SFTP session takes one more.
MAX_CHANNELS = 8
_BUF = 65536
_SIGNAL_GRACE = 2.0

__all__ = [
    "Endpoint",
    "HostKeyError",
    "HostKeyRefused",
    "HostKeyScan",
    "HostKeyUnknown",
    "KnownKey",
    "SSHTransport",
    "ServerKey",
    "append_known_host",
    "fingerprint",
    "gpuhub_known_hosts",
    "judge",
    "known_keys",
    "load_ssh_config",
    "resolve",
    "scan_host_keys",
]


def _send_signal(chan: paramiko.Channel, name: str) -> None:
    """RFC 4254 section 6.9 "signal" request (paramiko has no public API for it)."""
    if chan.closed:
        return
    msg = Message()
    msg.add_byte(cMSG_CHANNEL_REQUEST)
    msg.add_int(chan.remote_chanid)
    msg.add_string("signal")
    msg.add_boolean(False)
    msg.add_string(name)
    with suppress(paramiko.SSHException, EOFError, OSError):
        chan.transport._send_user_message(msg)


def _pump(chan: paramiko.Channel, out: list[bytes], err: list[bytes], deadline: float) -> bool:
    """Read stdout and stderr until the command ends (True) or ``deadline`` passes (False)."""
    fd = chan.fileno()  # readable whenever stdout or stderr has data, or at EOF

    def drain() -> None:
        while chan.recv_ready():
            out.append(chan.recv(_BUF))
        while chan.recv_stderr_ready():
            err.append(chan.recv_stderr(_BUF))

    while True:
        drain()
        if chan.eof_received or chan.closed:
            drain()  # data that came in just before the EOF
            return chan.status_event.wait(max(0.0, deadline - time.monotonic()))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        select.select([fd], [], [], min(remaining, 30.0))


def _feed(chan: paramiko.Channel, data: bytes) -> None:
    with suppress(OSError, EOFError, paramiko.SSHException):
        if data:
            chan.sendall(data)
        chan.shutdown_write()


class SSHTransport(Transport):
    """Commands and files on one site, over one SSH connection opened on first use."""

    def __init__(self, site_name: str, connection: Connection) -> None:
        self.site_name = site_name
        self.connection = connection
        self._lock = threading.Lock()
        self._sftp_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_CHANNELS)
        self._transport: paramiko.Transport | None = None
        self._jumps: list[paramiko.Transport] = []
        self._sftp: paramiko.SFTPClient | None = None
        self._sftp_owner: paramiko.Transport | None = None
        self._closed = False
        self.connections_opened = 0
        self.endpoint: Endpoint | None = None
        try:
            self.endpoint, _ = resolve(connection)
            user = self.endpoint.user
        except TransportError:  # reported again, in full, on first use
            user = connection.user or getpass.getuser()
        self.where = f"site {site_name} ({user}@{connection.host})"

    # -- connection -------------------------------------------------------------------------

    def _client(self) -> paramiko.Transport:
        current = self._transport
        if current is not None and current.is_active():
            return current
        with self._lock:
            current = self._transport
            if current is not None and current.is_active():
                return current
            self._drop_locked()
            target, jumps = resolve(self.connection)
            self.endpoint = target
            log.debug("connecting to %s", self.where)
            chain = connect_chain(self.site_name, target, jumps, self.connection.ip_restricted)
            self._transport, self._jumps = chain[-1], chain[:-1]
            self._closed = False
            self.connections_opened += 1
            return self._transport

    def _drop_locked(self) -> None:
        if self._sftp is not None:
            with suppress(Exception):
                self._sftp.close()
        self._sftp = self._sftp_owner = None
        for transport in [self._transport, *reversed(self._jumps)]:
            if transport is not None:
                with suppress(Exception):
                    transport.close()
        self._transport, self._jumps = None, []

    def _drop(self, transport: paramiko.Transport) -> None:
        with self._lock:
            if self._transport is transport:
                self._drop_locked()

    def _session(self) -> paramiko.Channel:
        """A new session channel; reconnects once if the connection turns out to be dead."""
        for attempt in (1, 2):
            transport = self._client()
            try:
                return self._open_session(transport)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                if attempt == 2 or (transport.is_active() and isinstance(exc, paramiko.ChannelException)):
                    raise TransportError(f"cannot open a session on {self.where}: {exc}") from None
                log.debug("connection to %s lost (%s); reconnecting", self.where, exc)
                self._drop(transport)
        raise AssertionError("unreachable")

    def _open_session(self, transport: paramiko.Transport) -> paramiko.Channel:
        # A server with a low MaxSessions refuses channels while others are open: wait a little.
        deadline = time.monotonic() + (self.endpoint.connect_timeout if self.endpoint else 20.0)
        while True:
            try:
                return transport.open_session(timeout=self.endpoint.connect_timeout if self.endpoint else 20.0)
            except paramiko.ChannelException:
                if not transport.is_active() or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    @contextmanager
    def _slot(self, deadline: float) -> Iterator[None]:
        wait = deadline - time.monotonic()
        got = self._slots.acquire() if wait == float("inf") else self._slots.acquire(timeout=max(0.0, wait))
        if not got:
            raise TransportError(f"all {MAX_CHANNELS} sessions to {self.where} stayed busy; try again")
        try:
            yield
        finally:
            self._slots.release()

    def alive(self) -> bool:
        transport = self._transport
        if transport is None:
            return not self._closed
        return transport.is_active()

    def close(self) -> None:
        with self._lock:
            self._drop_locked()
            self._closed = True

    # -- commands ---------------------------------------------------------------------------

    def run(self, argv: list[str], stdin: str | None = None, timeout: float = 60.0, check: bool = True) -> Result:
        if not argv:
            raise ValueError("run() needs a command")
        argv = list(argv)
        command = shlex.join(argv)
        start = time.monotonic()
        deadline = start + timeout if timeout is not None else float("inf")
        out: list[bytes] = []
        err: list[bytes] = []
        with self._slot(deadline):
            chan = self._session()
            try:
                chan.exec_command(command)
                data = stdin.encode() if stdin is not None else b""
                if len(data) <= 32768:
                    _feed(chan, data)
                else:  # a writer thread, so a command that answers before reading everything cannot deadlock us
                    threading.Thread(target=_feed, args=(chan, data), daemon=True).start()
                if not _pump(chan, out, err, deadline):
                    ended = self._terminate(chan, out, err)
                    stdout, stderr = _text(out), _text(err)
                    if not ended:
                        stderr += "\n(the remote command may still be running: the server ignored the stop signal)"
                    raise CommandTimeout(argv, timeout, self.where, stdout, stderr)
                if chan.exit_status == -1 and not chan.transport.is_active():
                    raise TransportError(f"connection to {self.where} was lost while `{command}` ran")
                code = chan.exit_status  # -1 when the command was killed by a signal
            except paramiko.SSHException as exc:
                raise TransportError(f"`{command}` on {self.where}: connection failed: {exc}") from None
            finally:
                chan.close()
        return self.checked(Result(argv, code, _text(out), _text(err)), check)

    def _terminate(self, chan: paramiko.Channel, out: list[bytes], err: list[bytes]) -> bool:
        """Stop the remote command: TERM, then KILL, to its whole process group."""
        for signal_name in ("TERM", "KILL"):
            _send_signal(chan, signal_name)
            if _pump(chan, out, err, time.monotonic() + _SIGNAL_GRACE):
                return True
        return False

    def stream(self, argv: list[str], idle: float | None = None) -> Iterator[str]:
        command = shlex.join(argv)
        with self._slot(float("inf")):
            chan = self._session()
            try:
                chan.exec_command(command)
                chan.shutdown_write()
                fd = chan.fileno()
                pending = b""
                while True:
                    while chan.recv_stderr_ready():  # not shown, but read so the channel window never fills
                        chan.recv_stderr(_BUF)
                    if chan.recv_ready():
                        pending += chan.recv(_BUF)
                        *lines, pending = pending.split(b"\n")
                        for line in lines:
                            yield line.decode("utf-8", errors="replace") + "\n"
                        continue
                    if chan.eof_received or chan.closed:
                        if chan.recv_ready() or chan.recv_stderr_ready():
                            continue
                        break
                    if not select.select([fd], [], [], idle or 30.0)[0] and idle:
                        yield ""
                if pending:
                    yield pending.decode("utf-8", errors="replace")
            finally:
                if not chan.exit_status_ready():
                    _send_signal(chan, "TERM")  # e.g. `tail -f` ends now rather than at its next write
                chan.close()

    # -- files ------------------------------------------------------------------------------

    @contextmanager
    def _sftp_client(self) -> Iterator[paramiko.SFTPClient]:
        with self._sftp_lock:
            for attempt in (1, 2):
                transport = self._client()
                if self._sftp is not None and self._sftp_owner is transport and not self._sftp.sock.closed:
                    break
                try:
                    self._sftp = paramiko.SFTPClient.from_transport(transport)
                    self._sftp_owner = transport
                    break
                except (paramiko.SSHException, EOFError, OSError) as exc:
                    if attempt == 2:
                        raise TransportError(f"cannot start SFTP on {self.where}: {exc}") from None
                    self._drop(transport)
            assert self._sftp is not None
            yield self._sftp

    def put_text(self, path: str, text: str, mode: int = 0o644) -> None:
        target = files.remote_path(path)  # a path gpuhub cannot use fails before connecting
        with self._sftp_client() as sftp:
            files.write_text(sftp, target, text, mode, f"{path} on {self.where}")

    def get_text(self, path: str) -> str:
        with self._sftp_client() as sftp:
            data = files.read_bytes(sftp, path, self.where)
        return data.decode("utf-8", errors="replace")

    def put_file(self, local_path: str, remote_path: str, mtime: float | None = None, mode: int | None = None) -> None:
        self.put_files([Upload(local_path, remote_path, mtime, mode)])

    def put_files(self, uploads: Sequence[Upload]) -> None:
        """Upload over the shared SFTP session with requests pipelined (see :mod:`gpuhub.transport.sftp`)."""
        uploads = list(uploads)
        if not uploads:
            return
        with self._sftp_client() as sftp:
            try:
                if files.can_pipeline(sftp):
                    files.UploadPipeline(sftp, self.where).upload(uploads)
                else:  # a paramiko without the request internals used above
                    self._put_files_one_by_one(sftp, uploads)
            except TransportError:
                raise
            except BaseException as exc:
                # Replies may still be on their way: this SFTP session cannot be trusted any more.
                with suppress(Exception):
                    sftp.close()
                self._sftp = self._sftp_owner = None
                if isinstance(exc, (OSError, EOFError, paramiko.SSHException)):
                    raise TransportError(
                        f"uploading {len(uploads)} file(s) to {self.where} failed: {files.error_text(exc)}"
                    ) from None
                raise

    def _put_files_one_by_one(self, sftp: paramiko.SFTPClient, uploads: list[Upload]) -> None:
        files.upload_one_by_one(sftp, uploads, self.where)


def _text(chunks: list[bytes]) -> str:
    return b"".join(chunks).decode("utf-8", errors="replace")
