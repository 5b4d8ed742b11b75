"""What a connection keeper and its clients agree on: the setting, the socket directory, the
parameters a kept connection was verified with, and the framing of their messages.

A keeper (:mod:`gpuhub.transport.keeper`) holds one verified SSH connection and runs commands
for later gpuhub processes over a Unix socket, so that they skip importing paramiko and the SSH
handshake (what OpenSSH's ControlPersist does for ``ssh``). This module imports no paramiko:
every gpuhub process that finds a keeper pays only for what is here.

Trust: the socket lives in a directory only the user can enter (checked before every use: owned
by the user, mode 0700, not a symlink), the keeper checks its peer's uid and the client its
keeper's. The socket's name is a digest of everything the connection depends on, known_hosts
files included (with their size, mtime and inode: a connection verified against an old
known_hosts is never reused), and each request repeats those parameters in full, so a digest
collision cannot hand a command to the wrong connection. No secret is ever sent: only paths,
names and the commands gpuhub would send over SSH anyway.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import stat
import struct
import zlib
from pathlib import Path
from typing import Any

from gpuhub import __version__
from gpuhub.errors import ConfigError, shown
from gpuhub.limits import MAX_SSH_PERSIST as MAX_PERSIST
from gpuhub.limits import ssh_persist_seconds

ENV = "GPUHUB_SSH_PERSIST"
DEFAULT_PERSIST = 600  # ten minutes: a working session, not a forgotten process
PROTOCOL = 1
SSH_CONFIG_ENV = "GPUHUB_SSH_CONFIG"
_HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 30  # a command's output is kept in memory by both sides anyway
_CONNECTION_FIELDS = ("host", "port", "user", "identity_file", "known_hosts", "proxy_jump",
                      "keepalive_interval", "connect_timeout", "ip_restricted")


def ssh_config_path() -> Path:
    override = os.environ.get(SSH_CONFIG_ENV)
    return Path(override).expanduser() if override else Path("~/.ssh/config").expanduser()


def persist_seconds(connection: Any) -> int:
    """How long a keeper stays after its last command; 0: no keeper. ``GPUHUB_SSH_PERSIST``
    (0 turns keepers off for a whole process tree, as the test suite does) wins over the site's
    ``connection.persist``."""
    raw = os.environ.get(ENV)
    if raw is None or not raw.strip():
        return int(getattr(connection, "persist", DEFAULT_PERSIST))
    value = ssh_persist_seconds(raw)
    if value is None:
        raise ConfigError(
            f"{ENV}={shown(raw)} is not a number of seconds from 0 to {MAX_PERSIST} (0: no kept connections)"
        )
    return value


def supported() -> bool:
    """Keepers need Unix sockets whose peer's uid can be read (Linux's SO_PEERCRED)."""
    return hasattr(socket, "AF_UNIX") and hasattr(socket, "SO_PEERCRED")


# -- the socket directory ------------------------------------------------------------------


def socket_dir() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return Path(runtime) / "gpuhub"
    return Path(f"/tmp/gpuhub-{os.getuid()}")


class Unsafe(Exception):
    """The socket directory is not the user's own private directory: keepers are not used."""


def check_dir(path: Path) -> None:
    """Raise FileNotFoundError when ``path`` is missing, Unsafe unless it is a real directory
    (not a symlink) owned by this user with mode 0700: anyone else who could write there could
    put a socket of theirs where a keeper's should be."""
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise Unsafe(f"{path} is not a directory")
    if info.st_uid != os.getuid():
        raise Unsafe(f"{path} belongs to uid {info.st_uid}")
    if stat.S_IMODE(info.st_mode) != 0o700:
        raise Unsafe(f"{path} has mode {stat.S_IMODE(info.st_mode):o}, not 700")


def make_dir(path: Path) -> None:
    """Create the socket directory (mode 0700) if missing, then check it."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    else:
        os.chmod(path, 0o700)  # whatever the umask took away
    check_dir(path)


def peer_uid(sock: socket.socket) -> int:
    pid_uid_gid = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", pid_uid_gid)[1]


# -- the parameters of a kept connection ---------------------------------------------------


def _absolute(path: str | None) -> str | None:
    return None if path is None else os.path.abspath(os.path.expanduser(path))


def stamp(path: Path | str) -> list[Any]:
    """A file as its content is judged by: path, size, mtime, ctime, inode (None: missing)."""
    path = os.path.abspath(path)
    try:
        info = os.stat(path)
    except OSError:
        return [path, None]
    return [path, info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]


def known_hosts_candidates(known_hosts: str | None) -> list[Path]:
    """The known_hosts files a connection may be checked against, ssh_config aside (the ssh
    config file's own stamp covers a UserKnownHostsFile it names; the keeper stamps the files it
    really read too)."""
    from gpuhub.transport.hostkeys import gpuhub_known_hosts

    files = [known_hosts] if known_hosts else ["~/.ssh/known_hosts", "~/.ssh/known_hosts2"]
    return [*(Path(f).expanduser() for f in files), gpuhub_known_hosts()]


def connection_fields(connection: Any) -> dict[str, Any]:
    """The site's connection settings a keeper is started with (paths made absolute, so the
    keeper reads the same files wherever it runs)."""
    fields = {name: getattr(connection, name) for name in _CONNECTION_FIELDS}
    fields["identity_file"] = _absolute(fields["identity_file"])
    fields["known_hosts"] = _absolute(fields["known_hosts"])
    return fields


def params(site_name: str, fields: dict[str, Any], fields_set: list[str]) -> dict[str, Any]:
    """Everything a verified connection depends on. Two processes reuse one connection only when
    these are equal."""
    return {
        "protocol": PROTOCOL,
        "version": __version__,
        "site": site_name,
        "connection": fields,
        "fields_set": sorted(set(fields_set) & set(_CONNECTION_FIELDS)),
        "ssh_config": stamp(ssh_config_path()),
        "known_hosts": [stamp(p) for p in known_hosts_candidates(fields["known_hosts"])],
        "home": os.path.expanduser("~"),
        "uid": os.getuid(),
    }


def digest(parameters: dict[str, Any]) -> str:
    """64 bits of checksums: only a name (a keeper compares the parameters in full), and hashlib
    would load OpenSSL at every command."""
    data = json.dumps(parameters, sort_keys=True).encode()
    return f"{zlib.crc32(data):08x}{zlib.adler32(data):08x}"


def socket_path(directory: Path, parameters: dict[str, Any]) -> Path:
    return directory / f"{digest(parameters)}.sock"


def lock(path: Path) -> int | None:
    """A keeper's lock on ``path``, or None when another keeper holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # A keeper that was ending may have removed the file after we opened it: a lock on a
        # removed file guards nothing.
        if os.stat(path, follow_symlinks=False).st_ino != os.fstat(fd).st_ino:
            raise BlockingIOError
    except (BlockingIOError, FileNotFoundError):
        os.close(fd)
        return None
    return fd


# -- messages: a 4-byte length, then JSON ----------------------------------------------------


class Closed(Exception):
    """The other side closed the socket or sent something that is not a message."""


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    # ensure_ascii keeps arguments that are not valid UTF-8 (surrogate escapes) intact.
    data = json.dumps(message, separators=(",", ":")).encode("ascii")
    sock.sendall(_HEADER.pack(len(data)) + data)


def _exactly(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise Closed("end of stream")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive(sock: socket.socket) -> dict[str, Any]:
    (size,) = _HEADER.unpack(_exactly(sock, _HEADER.size))
    if size > MAX_FRAME:
        raise Closed(f"a message of {size} bytes")
    try:
        message = json.loads(_exactly(sock, size))
    except ValueError:
        raise Closed("not a message") from None
    if not isinstance(message, dict):
        raise Closed("not a message")
    return message
