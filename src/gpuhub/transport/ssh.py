"""Commands and files on a site over one SSH connection (paramiko).

One :class:`SSHTransport` holds one SSH connection, opened on first use and shared by every
command (one SSH channel each, several at once from several threads) and by SFTP. If the
connection drops, the next call reconnects once.

Settings come from the site's ``connection`` block and, for whatever it leaves empty, from
``~/.ssh/config`` (``$GPUHUB_SSH_CONFIG`` overrides the path): HostName, User, Port,
IdentityFile, ProxyJump, ProxyCommand, ServerAliveInterval, ConnectTimeout,
UserKnownHostsFile, HostKeyAlias.

Host keys are always checked and never accepted silently. The files read are
``connection.known_hosts`` if set, else ssh_config's UserKnownHostsFile, else
``~/.ssh/known_hosts``; gpuhub's own ``known_hosts`` (written by ``gpuhub sites trust``) is
always read too. Hashed entries, wildcards and ``@revoked`` markers are understood.

Stopping a remote command: closing an SSH channel does *not* stop the command behind it
when no terminal is allocated (OpenSSH only hangs up a pty), so a timed-out ``sleep 300``
would live on. On a timeout gpuhub therefore sends the RFC 4254 "signal" channel request
(TERM, then KILL), which OpenSSH >= 7.9 delivers with ``killpg`` to the whole process group
of the command, before closing the channel. No wrapper around the command is needed, so
stdout and stderr stay exactly what the command wrote.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import logging
import os
import posixpath
import re
import select
import shlex
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path

import paramiko
from paramiko import sftp as sftp_proto
from paramiko.common import cMSG_CHANNEL_REQUEST
from paramiko.message import Message

from gpuhub import paths
from gpuhub.site import Connection
from gpuhub.transport.base import CommandTimeout, Result, Transport, TransportError, Upload, upload_mode

log = logging.getLogger(__name__)
# paramiko logs failed handshakes from its own thread at ERROR level; without a handler
# Python's last-resort handler would print those tracebacks under our one-line errors.
if not logging.getLogger("paramiko").handlers:
    logging.getLogger("paramiko").addHandler(logging.NullHandler())

SSH_CONFIG_ENV = "GPUHUB_SSH_CONFIG"
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


class HostKeyError(TransportError):
    """The server's host key is unknown, changed or revoked."""


class HostKeyUnknown(HostKeyError):
    """No known_hosts file has a key for this server yet."""


class HostKeyRefused(HostKeyError):
    """``sites trust`` refuses a key (it contradicts the published fingerprint or known_hosts)."""

    exit_code = 2


# --------------------------------------------------------------------------------------------
# Configuration: site connection block + ssh_config
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """One SSH server to log in to, with every setting resolved."""

    alias: str  # the name as written in the site file or the jump spec
    hostname: str  # what we connect to
    port: int
    user: str
    identity_files: tuple[str, ...]
    known_hosts_files: tuple[Path, ...]
    keepalive: int
    connect_timeout: float
    host_key_alias: str | None = None
    proxy_command: str | None = None
    identity_fallback: tuple[str, ...] = ()  # jump hosts also try the site's key

    @property
    def key_name(self) -> str:
        """The name of this server in known_hosts: ``host`` on port 22, ``[host]:port`` otherwise."""
        name = self.host_key_alias or self.hostname
        return name if self.port == 22 else f"[{name}]:{self.port}"

    @property
    def label(self) -> str:
        return f"{self.user}@{self.hostname}" + ("" if self.port == 22 else f":{self.port}")


def ssh_config_path() -> Path:
    override = os.environ.get(SSH_CONFIG_ENV)
    return Path(override).expanduser() if override else Path("~/.ssh/config").expanduser()


def load_ssh_config(prefix: str = "") -> paramiko.SSHConfig:
    """The user's ssh_config, after ``prefix`` (ssh_config text that wins, as the first value does)."""
    path = ssh_config_path()
    try:
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        return paramiko.SSHConfig.from_text(prefix + text)
    except (paramiko.ssh_exception.ConfigParseError, OSError, ValueError) as exc:
        raise TransportError(f"cannot read ssh config {path}: {exc}") from None


def gpuhub_known_hosts() -> Path:
    """gpuhub's own known_hosts file, where ``gpuhub sites trust`` writes."""
    return paths.user_config_dir() / "known_hosts"


def _known_hosts_files(explicit: str | None, opts: dict) -> tuple[Path, ...]:
    if explicit:
        files = [explicit]
    elif opts.get("userknownhostsfile"):
        files = shlex.split(opts["userknownhostsfile"])
    else:
        files = ["~/.ssh/known_hosts", "~/.ssh/known_hosts2"]
    out = [Path(f).expanduser() for f in files if f.lower() != "none"]
    own = gpuhub_known_hosts()
    return tuple(dict.fromkeys([*out, own]))


def _int(value: object, what: str) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise TransportError(f"ssh config: {what} {value!r} is not a number") from None


def _jump_specs(spec: str | None) -> list[str]:
    if not spec or spec.strip().lower() == "none":
        return []
    return [part.strip() for part in spec.split(",") if part.strip()]


_JUMP_RE = re.compile(r"^(?:ssh://)?(?:(?P<user>[^@]+)@)?(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:@]+))(?::(?P<port>\d+))?$")


def _parse_jump(spec: str) -> tuple[str | None, str, int | None]:
    match = _JUMP_RE.match(spec)
    if not match:
        raise TransportError(f"proxy_jump entry {spec!r} is not [user@]host[:port]")
    port = match["port"]
    return match["user"], match["v6"] or match["host"], int(port) if port else None


def resolve(connection: Connection, config: paramiko.SSHConfig | None = None) -> tuple[Endpoint, list[Endpoint]]:
    """The target endpoint and the jump hosts before it, site settings over ssh_config."""
    if config is None:
        # The site's port and user go first so that %p and %r in ProxyCommand see them.
        override = "".join(
            f"    {key} {value}\n" for key, value in (("Port", connection.port), ("User", connection.user)) if value
        )
        jump_config = load_ssh_config()
        config = load_ssh_config(f"Host {connection.host}\n{override}") if override else jump_config
    else:
        jump_config = config
    opts = config.lookup(connection.host)
    explicit = connection.model_fields_set
    identity = (connection.identity_file,) if connection.identity_file else tuple(opts.get("identityfile", []))
    if "keepalive_interval" in explicit or "serveraliveinterval" not in opts:
        keepalive = connection.keepalive_interval
    else:
        keepalive = _int(opts["serveraliveinterval"], "ServerAliveInterval")
    if "connect_timeout" in explicit or "connecttimeout" not in opts:
        connect_timeout = connection.connect_timeout
    else:
        connect_timeout = float(_int(opts["connecttimeout"], "ConnectTimeout"))
    proxy_jump = connection.proxy_jump or opts.get("proxyjump")
    proxy_command = None
    if not _jump_specs(proxy_jump) and opts.get("proxycommand", "none").lower() != "none":
        proxy_command = opts["proxycommand"]
    target = Endpoint(
        alias=connection.host,
        hostname=opts["hostname"],
        port=connection.port or _int(opts.get("port", 22), "Port"),
        user=connection.user or opts.get("user") or getpass.getuser(),
        identity_files=tuple(identity),
        known_hosts_files=_known_hosts_files(connection.known_hosts, opts),
        keepalive=keepalive,
        connect_timeout=connect_timeout,
        host_key_alias=opts.get("hostkeyalias"),
        proxy_command=proxy_command,
    )
    jumps = []
    for spec in _jump_specs(proxy_jump):
        user, host, port = _parse_jump(spec)
        jopts = jump_config.lookup(host)
        jumps.append(
            Endpoint(
                alias=host,
                hostname=jopts["hostname"],
                port=port or _int(jopts.get("port", 22), "Port"),
                user=user or jopts.get("user") or getpass.getuser(),
                identity_files=tuple(jopts.get("identityfile", [])),
                known_hosts_files=_known_hosts_files(connection.known_hosts, jopts),
                keepalive=keepalive,
                connect_timeout=connect_timeout,
                host_key_alias=jopts.get("hostkeyalias"),
                identity_fallback=target.identity_files,
            )
        )
    return target, jumps


# --------------------------------------------------------------------------------------------
# known_hosts
# --------------------------------------------------------------------------------------------


def fingerprint(key_b64: str) -> str:
    """OpenSSH's SHA256 fingerprint of a public key blob given in base64."""
    digest = hashlib.sha256(base64.b64decode(key_b64)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class KnownKey:
    path: Path
    lineno: int
    key_type: str
    key_b64: str
    revoked: bool = False

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key_b64)

    @property
    def where(self) -> str:
        return f"{self.path} line {self.lineno}"


@dataclass(frozen=True)
class ServerKey:
    key_type: str
    key_b64: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key_b64)

    @classmethod
    def of(cls, key: paramiko.PKey) -> ServerKey:
        return cls(key.get_name(), key.get_base64())


def _glob(pattern: str, name: str) -> bool:
    # fnmatch would read the brackets of "[host]:port" as a character class.
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name) is not None


def _hashed_match(entry: str, name: str) -> bool:
    parts = entry.split("|")  # "", "1", salt, hash
    if len(parts) != 4:
        return False
    try:
        salt, expected = base64.b64decode(parts[2]), base64.b64decode(parts[3])
    except ValueError:
        return False
    return hmac.compare_digest(hmac.new(salt, name.encode(), hashlib.sha1).digest(), expected)


def _hosts_match(field: str, name: str) -> bool:
    name = name.lower()
    hit = False
    for pattern in field.split(","):
        negated = pattern.startswith("!")
        pattern = pattern[1:] if negated else pattern
        matched = _hashed_match(pattern, name) if pattern.startswith("|1|") else _glob(pattern.lower(), name)
        if matched and negated:
            return False
        hit = hit or matched
    return hit


def known_keys(files: tuple[Path, ...] | list[Path], name: str) -> list[KnownKey]:
    """Every known_hosts entry for ``name`` (``host`` or ``[host]:port``) in ``files``."""
    found = []
    for path in files:
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            raise TransportError(f"cannot read known hosts file {path}: {exc.strerror or exc}") from None
        for lineno, line in enumerate(lines, 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            marker = None
            if fields[0].startswith("@"):
                marker, fields = fields[0], fields[1:]
            if len(fields) < 3 or marker not in (None, "@revoked"):
                continue  # @cert-authority lines need certificate support
            hosts, key_type, key_b64 = fields[:3]
            if _hosts_match(hosts, name):
                found.append(KnownKey(path, lineno, key_type, key_b64, revoked=marker == "@revoked"))
    return found


def append_known_host(path: Path, name: str, key: ServerKey) -> str:
    """Add ``name key`` to the known_hosts file ``path``; return the line written."""
    line = f"{name} {key.key_type} {key.key_b64}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = ""
    if path.is_file() and path.stat().st_size:
        with path.open("rb") as handle:
            handle.seek(-1, os.SEEK_END)
            prefix = "" if handle.read(1) == b"\n" else "\n"
    with path.open("a", encoding="utf-8") as handle:
        handle.write(prefix + line)
    return line


def _check_host_key(endpoint: Endpoint, offered: ServerKey, role: str, site: str, extra: tuple[Path, ...] = ()) -> None:
    """Raise HostKeyError unless ``offered`` is the known key of ``endpoint``."""
    known = known_keys((*endpoint.known_hosts_files, *extra), endpoint.key_name)
    for entry in known:
        if entry.revoked and entry.key_type == offered.key_type and entry.key_b64 == offered.key_b64:
            raise HostKeyError(
                f"host key of {endpoint.key_name} ({role}) is REVOKED in {entry.where}: "
                f"{offered.key_type} {offered.fingerprint}; refusing to connect"
            )
    valid = [k for k in known if not k.revoked]
    if any(k.key_type == offered.key_type and k.key_b64 == offered.key_b64 for k in valid):
        return
    if valid:
        old = next((k for k in valid if k.key_type == offered.key_type), valid[0])
        raise HostKeyError(
            f"HOST KEY CHANGED for {endpoint.key_name} ({role}): known {old.key_type} {old.fingerprint}, "
            f"offered {offered.key_type} {offered.fingerprint} — this may be an attack; if the site really "
            f"changed its keys, remove the old line from {old.path} (line {old.lineno}), e.g. "
            f"ssh-keygen -R '{endpoint.key_name}' -f {old.path}"
        )
    raise HostKeyUnknown(
        f"host key of {endpoint.key_name} ({role}) is not known: {offered.key_type} {offered.fingerprint} ; "
        f"if it matches the fingerprint the site publishes, run `gpuhub sites trust {site}`"
    )


# --------------------------------------------------------------------------------------------
# Connecting
# --------------------------------------------------------------------------------------------

_RSA_ALGOS = ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")
_SHORT_TYPES = {
    "ed25519": ("ssh-ed25519",),
    "rsa": _RSA_ALGOS,
    "ecdsa": ("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521"),
}


def short_key_type(key_type: str) -> str:
    """``ssh-ed25519`` -> ``ed25519``, ``ecdsa-sha2-nistp256`` -> ``ecdsa``, ``ssh-rsa`` -> ``rsa``."""
    key_type = key_type.lower()
    if key_type.startswith("ecdsa"):
        return "ecdsa"
    if key_type.startswith("rsa-sha2") or key_type == "ssh-rsa":
        return "rsa"
    return key_type.removeprefix("ssh-")


def _prefer_host_key_types(transport: paramiko.Transport, wanted: list[str]) -> None:
    """Ask for the host key types we can check first (as OpenSSH does with known_hosts)."""
    options = transport.get_security_options()
    available = list(options.key_types)
    first: list[str] = []
    for key_type in wanted:
        algos = _RSA_ALGOS if key_type == "ssh-rsa" else _SHORT_TYPES.get(key_type, (key_type,))
        first.extend(a for a in algos if a in available and a not in first)
    if first:
        options.key_types = [*first, *(a for a in available if a not in first)]


def _hint(ip_restricted: bool, site: str, via_jump: bool) -> str:
    if not ip_restricted:
        return ""
    if via_jump:
        return f"; site {site} only admits registered addresses: the jump host's address must be registered"
    return f"; site {site} only admits registered addresses; use a VPN or connection.proxy_jump"


def _open_socket(endpoint: Endpoint, role: str, hint: str) -> socket.socket | paramiko.ProxyCommand:
    if endpoint.proxy_command:
        try:
            return paramiko.ProxyCommand(endpoint.proxy_command)
        except (OSError, paramiko.SSHException) as exc:
            raise TransportError(f"ProxyCommand for {endpoint.alias} ({role}) failed to start: {exc}") from None
    address = f"{endpoint.hostname}:{endpoint.port}"
    try:
        sock = socket.create_connection((endpoint.hostname, endpoint.port), timeout=endpoint.connect_timeout)
    except socket.gaierror as exc:
        raise TransportError(f"cannot resolve host name {endpoint.hostname!r} ({role}): {exc.strerror}") from None
    except ConnectionRefusedError:
        raise TransportError(f"connection to {address} ({role}) refused: no SSH server listens there{hint}") from None
    except TimeoutError:
        raise TransportError(f"no answer from {address} ({role}) within {endpoint.connect_timeout:g} s{hint}") from None
    except OSError as exc:
        raise TransportError(f"cannot connect to {address} ({role}): {exc.strerror or exc}{hint}") from None
    with suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _handshake(sock: object, endpoint: Endpoint, role: str, hint: str, prefer: list[str]) -> paramiko.Transport:
    transport = paramiko.Transport(sock)
    transport.banner_timeout = transport.handshake_timeout = endpoint.connect_timeout
    transport.auth_timeout = endpoint.connect_timeout
    _prefer_host_key_types(transport, prefer)
    done = threading.Event()
    address = f"{endpoint.hostname}:{endpoint.port}"
    try:
        transport.start_client(event=done)
        finished = done.wait(endpoint.connect_timeout + 1)
    except (paramiko.SSHException, OSError, EOFError) as exc:
        transport.close()
        raise TransportError(f"SSH handshake with {address} ({role}) failed: {exc}{hint}") from None
    if not finished:
        transport.close()
        raise TransportError(
            f"SSH handshake with {address} ({role}) timed out after {endpoint.connect_timeout:g} s{hint}"
        )
    if not transport.is_active():
        exc = transport.get_exception()
        transport.close()
        text = str(exc) if exc else "the server closed the connection"
        if "banner" in text.lower() or isinstance(exc, EOFError):
            if isinstance(getattr(exc, "__context__", None), TimeoutError):
                text = f"no SSH greeting within {endpoint.connect_timeout:g} s"
            else:
                text = "the server closed the connection before the SSH greeting"
        raise TransportError(f"SSH handshake with {address} ({role}) failed: {text}{hint}")
    return transport


@dataclass
class _Keys:
    tried: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    encrypted: list[str] = field(default_factory=list)


def _load_private_key(path: str, keys: _Keys, quiet_missing: bool = False) -> paramiko.PKey | None:
    file = Path(path).expanduser()
    if not file.is_file():
        if not quiet_missing:
            keys.problems.append(f"identity file {path} does not exist")
        return None
    try:
        return paramiko.PKey.from_path(file)
    except (TypeError, paramiko.PasswordRequiredException):
        # cryptography raises TypeError for an encrypted key loaded without a password.
        keys.encrypted.append(path)
    except PermissionError:
        keys.problems.append(f"identity file {path} is not readable")
    except (ValueError, OSError, paramiko.SSHException, paramiko.pkey.UnknownKeyType):
        keys.problems.append(f"identity file {path} is not a private key gpuhub can read")
    return None


def _candidate_keys(endpoint: Endpoint, keys: _Keys) -> Iterator[tuple[str, paramiko.PKey]]:
    explicit = list(dict.fromkeys([*endpoint.identity_files, *endpoint.identity_fallback]))
    seen: set[str] = set()
    for path in explicit:
        key = _load_private_key(path, keys)
        if key is not None:
            seen.add(key.get_base64())
            yield path, key
    agent = None
    try:
        agent = paramiko.Agent()
        agent_keys = agent.get_keys()
    except (paramiko.SSHException, OSError):
        agent_keys = ()
    try:
        for key in agent_keys:
            if key.get_base64() not in seen:
                seen.add(key.get_base64())
                yield f"agent key {key.fingerprint}", key
    finally:
        if agent is not None:
            agent.close()
    if not endpoint.identity_files:  # like ssh: default keys only when none is configured
        for name in ("id_ed25519", "id_ecdsa", "id_rsa"):
            path = f"~/.ssh/{name}"
            key = _load_private_key(path, keys, quiet_missing=True)
            if key is not None and key.get_base64() not in seen:
                yield path, key


def _authenticate(transport: paramiko.Transport, endpoint: Endpoint, role: str) -> None:
    keys = _Keys()
    for label, key in _candidate_keys(endpoint, keys):
        keys.tried.append(label)
        try:
            remaining = transport.auth_publickey(endpoint.user, key)
        except paramiko.BadAuthenticationType as exc:
            allowed = ", ".join(exc.allowed_types) or "none"
            raise TransportError(
                f"{endpoint.label} ({role}) does not accept SSH keys (it allows: {allowed}); gpuhub only uses keys"
            ) from None
        except paramiko.AuthenticationException:
            if not transport.is_active():
                break
            continue
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise TransportError(f"connection to {endpoint.label} ({role}) lost during authentication: {exc}") from None
        if transport.is_authenticated():
            log.debug("authenticated to %s with %s", endpoint.label, label)
            return
        if remaining:
            raise TransportError(
                f"{endpoint.label} ({role}) asks for a second factor ({', '.join(remaining)}) after the key; "
                "gpuhub logs in with keys only and cannot answer it"
            )
    if keys.encrypted and not transport.is_authenticated():
        files = ", ".join(keys.encrypted)
        raise TransportError(
            f"cannot log in to {endpoint.label} ({role}): the key {files} is protected by a passphrase and "
            f"gpuhub does not ask for passphrases; load it into ssh-agent (ssh-add {keys.encrypted[0]}) and retry"
        )
    tried = ", ".join(keys.tried) or "none (no identity file, no ssh-agent key, no ~/.ssh/id_* key)"
    extra = ("; " + "; ".join(keys.problems)) if keys.problems else ""
    raise TransportError(
        f"authentication to {endpoint.label} ({role}) failed: keys tried: {tried}{extra}; "
        "check the user name and connection.identity_file, or load your key into ssh-agent"
    )


def _tunnel(previous: paramiko.Transport, via: Endpoint, endpoint: Endpoint, role: str) -> paramiko.Channel:
    try:
        return previous.open_channel(
            "direct-tcpip",
            dest_addr=(endpoint.hostname, endpoint.port),
            src_addr=("127.0.0.1", 0),
            timeout=endpoint.connect_timeout,
        )
    except paramiko.ChannelException as exc:
        why = {1: "it forbids TCP forwarding (AllowTcpForwarding)", 2: "it cannot reach that address"}.get(
            exc.code, exc.text
        )
        raise TransportError(
            f"jump host {via.label} could not open a connection to {endpoint.hostname}:{endpoint.port} ({role}): {why}"
        ) from None
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise TransportError(
            f"jump host {via.label} failed to forward to {endpoint.hostname}:{endpoint.port}: {exc}"
        ) from None


def _known_types(endpoint: Endpoint, extra: tuple[Path, ...] = ()) -> list[str]:
    return list(dict.fromkeys(k.key_type for k in known_keys((*endpoint.known_hosts_files, *extra), endpoint.key_name)))


def _connect_chain(site: str, target: Endpoint, jumps: list[Endpoint], ip_restricted: bool) -> list[paramiko.Transport]:
    """Open and authenticate every hop; the last transport is the target's."""
    opened: list[paramiko.Transport] = []
    hops = [*jumps, target]
    try:
        for index, endpoint in enumerate(hops):
            role = f"site {site}" if endpoint is target else f"jump host of site {site}"
            hint = _hint(ip_restricted, site, via_jump=bool(jumps))
            if index == 0:
                sock: object = _open_socket(endpoint, role, hint if not jumps else "")
            else:
                sock = _tunnel(opened[-1], hops[index - 1], endpoint, role)
            transport = _handshake(sock, endpoint, role, hint if endpoint is target else "", _known_types(endpoint))
            opened.append(transport)
            _check_host_key(endpoint, ServerKey.of(transport.get_remote_server_key()), role, site)
            _authenticate(transport, endpoint, role)
            if endpoint.keepalive > 0:
                transport.set_keepalive(endpoint.keepalive)
    except BaseException:
        for transport in reversed(opened):
            transport.close()
        raise
    return opened


# --------------------------------------------------------------------------------------------
# `gpuhub sites trust`: fetch host keys without logging in to the target
# --------------------------------------------------------------------------------------------


@dataclass
class HostKeyScan:
    """What a server offered, and what gpuhub already knows about it."""

    role: str  # "site NAME" or "jump host of site NAME"
    endpoint: Endpoint
    key: ServerKey
    known_in: KnownKey | None  # the matching known_hosts entry, if any
    published: str | None = None  # fingerprint the site file publishes for this key type
    published_types: tuple[str, ...] = ()

    @property
    def is_target(self) -> bool:
        return self.role.startswith("site ")

    @property
    def matches_published(self) -> bool | None:
        """True/False when the site publishes a fingerprint for this key type; None when it does not."""
        if self.published is None:
            return None
        return _same_fingerprint(self.published, self.key.fingerprint)


def judge(scan: HostKeyScan, site: str) -> str:
    """How far a not-yet-known key can be trusted: a sentence to show, or HostKeyRefused."""
    name, key = scan.endpoint.key_name, scan.key
    short = short_key_type(key.key_type)
    if not scan.is_target:
        return "jump host: compare this fingerprint with the one its administrators publish"
    if scan.matches_published:
        return f"matches the {short} fingerprint published in the site file"
    if scan.matches_published is False:
        raise HostKeyRefused(
            f"{name} (site {site}) offers {key.key_type} {key.fingerprint} but the site file publishes "
            f"{scan.published} for {short} keys — this may be an attack; not trusted"
        )
    if scan.published_types:
        raise HostKeyRefused(
            f"{name} (site {site}) offers a {short} key ({key.fingerprint}) but the site file publishes fingerprints "
            f"only for {', '.join(scan.published_types)}; not trusted"
        )
    return (
        f"site {site} publishes no fingerprint (connection.host_key_fingerprints): compare this one with "
        "the fingerprint the site documents before accepting it"
    )


def _same_fingerprint(a: str, b: str) -> bool:
    def norm(value: str) -> str:
        value = value.strip().rstrip("=")
        return value if value.upper().startswith("SHA256:") else "SHA256:" + value

    return norm(a)[7:] == norm(b)[7:]


def scan_host_keys(
    site: str,
    connection: Connection,
    decide: Callable[[HostKeyScan], bool],
    extra_known_hosts: tuple[Path, ...] = (),
) -> list[HostKeyScan]:
    """Fetch the host key of every hop (jump hosts, then the site) without logging in to the site.

    For each hop ``decide(scan)`` is called; it returns whether to go on (an unknown jump host
    must be accepted to reach the next hop). A key that contradicts known_hosts raises
    :class:`HostKeyRefused`. Jump hosts are logged in to (to open the tunnel); the site is not.
    """
    target, jumps = resolve(connection)
    published = {short_key_type(k): v for k, v in connection.host_key_fingerprints.items()}
    hops = [*jumps, target]
    opened: list[paramiko.Transport] = []
    scans: list[HostKeyScan] = []
    try:
        for index, endpoint in enumerate(hops):
            is_target = endpoint is target
            role = f"site {site}" if is_target else f"jump host of site {site}"
            hint = _hint(connection.ip_restricted, site, via_jump=bool(jumps)) if is_target or not jumps else ""
            if index == 0:
                sock: object = _open_socket(endpoint, role, hint)
            else:
                sock = _tunnel(opened[-1], hops[index - 1], endpoint, role)
            prefer = _known_types(endpoint, extra_known_hosts)
            if is_target:
                prefer = [*prefer, *(t for s in published for t in _SHORT_TYPES.get(s, ()))]
            transport = _handshake(sock, endpoint, role, hint, prefer)
            opened.append(transport)
            offered = ServerKey.of(transport.get_remote_server_key())
            try:
                _check_host_key(endpoint, offered, role, site, extra_known_hosts)
                known = next(
                    k
                    for k in known_keys((*endpoint.known_hosts_files, *extra_known_hosts), endpoint.key_name)
                    if not k.revoked and k.key_type == offered.key_type and k.key_b64 == offered.key_b64
                )
            except HostKeyUnknown:
                known = None
            except HostKeyError as exc:
                raise HostKeyRefused(exc.message) from None
            scan = HostKeyScan(role, endpoint, offered, known)
            if is_target:
                scan.published = published.get(short_key_type(offered.key_type))
                scan.published_types = tuple(published)
            scans.append(scan)
            if not decide(scan):
                break
            if not is_target:
                _authenticate(transport, endpoint, role)
    finally:
        for transport in reversed(opened):
            transport.close()
    return scans


# --------------------------------------------------------------------------------------------
# The transport
# --------------------------------------------------------------------------------------------


def _remote_path(path: str) -> str:
    """SFTP paths are relative to the login directory: ``~/x`` becomes ``x``."""
    if path == "~":
        return "."
    if path.startswith("~/"):
        return path[2:] or "."
    if path.startswith("~"):
        raise TransportError(f"{path!r}: only ~/ (your own home) is understood in remote paths")
    return path


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
            chain = _connect_chain(self.site_name, target, jumps, self.connection.ip_restricted)
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

    def stream(self, argv: list[str]) -> Iterator[str]:
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
                    select.select([fd], [], [], 30.0)
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

    def _makedirs(self, sftp: paramiko.SFTPClient, directory: str) -> None:
        if directory in ("", ".", "/"):
            return
        try:
            sftp.stat(directory)
            return
        except FileNotFoundError:
            pass
        self._makedirs(sftp, posixpath.dirname(directory.rstrip("/")))
        try:
            sftp.mkdir(directory)
        except OSError:
            sftp.stat(directory)  # created meanwhile by someone else is fine; anything else raises

    def put_text(self, path: str, text: str, mode: int = 0o644) -> None:
        target = _remote_path(path)
        directory, name = posixpath.split(target)
        tmp = posixpath.join(directory, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
        with self._sftp_client() as sftp:
            try:
                self._makedirs(sftp, directory)
                with sftp.open(tmp, "wb") as handle:
                    handle.set_pipelined(True)
                    handle.write(text.encode("utf-8"))
                sftp.chmod(tmp, mode)
                sftp.posix_rename(tmp, target)
            except (OSError, EOFError, paramiko.SSHException) as exc:
                with suppress(OSError, EOFError, paramiko.SSHException):
                    sftp.remove(tmp)
                raise TransportError(f"cannot write {path} on {self.where}: {_why(exc)}") from None

    def get_text(self, path: str) -> str:
        with self._sftp_client() as sftp:
            try:
                with sftp.open(_remote_path(path), "rb") as handle:
                    handle.prefetch()
                    data = handle.read()
            except FileNotFoundError:
                raise FileNotFoundError(2, f"no such file on {self.where}", path) from None
            except (OSError, EOFError, paramiko.SSHException) as exc:
                raise TransportError(f"cannot read {path} on {self.where}: {_why(exc)}") from None
        return data.decode("utf-8", errors="replace")

    def put_file(self, local_path: str, remote_path: str, mtime: float | None = None, mode: int | None = None) -> None:
        self.put_files([Upload(local_path, remote_path, mtime, mode)])

    def put_files(self, uploads: Sequence[Upload]) -> None:
        """Upload over the shared SFTP session with requests pipelined.

        Sending files one request at a time costs five or more round trips per file, which
        is a minute for a few hundred small files over a 50 ms link. Here each batch of files
        costs about three round trips: every missing directory is created once, then all
        temporary files are opened together, written and closed together, and given their
        mode and mtime and renamed into place together.
        """
        uploads = list(uploads)
        if not uploads:
            return
        with self._sftp_client() as sftp:
            try:
                if hasattr(sftp, "_async_request") and hasattr(sftp, "_read_response"):
                    _UploadPipeline(sftp, self.where).upload(uploads)
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
                        f"uploading {len(uploads)} file(s) to {self.where} failed: {_why(exc)}"
                    ) from None
                raise

    def _put_files_one_by_one(self, sftp: paramiko.SFTPClient, uploads: list[Upload]) -> None:
        made: set[str] = set()
        for upload in uploads:
            target = _remote_path(upload.remote_path)
            directory, name = posixpath.split(target)
            tmp = posixpath.join(directory, f".{name}.{uuid.uuid4().hex[:12]}.gpuhub-tmp")
            try:
                if directory not in made:
                    self._makedirs(sftp, directory)
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
                    f"cannot upload {upload.local_path} to {upload.remote_path} on {self.where}: {_why(exc)}"
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


class _UploadPipeline:
    """Many uploads over one SFTP session, with up to ``WINDOW`` requests in flight.

    Uses paramiko's request internals (``_async_request``/``_read_response``, which its own
    SFTPFile prefetching relies on); OpenSSH's sftp-server answers requests in order, so a
    setstat and a rename sent back to back apply in that order.
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
            directory = posixpath.dirname(_remote_path(upload.remote_path))
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
            target = _remote_path(upload.remote_path)
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
                item.fail(_why(exc))
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
                item.fail(_why(exc))
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


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _text(chunks: list[bytes]) -> str:
    return b"".join(chunks).decode("utf-8", errors="replace")
