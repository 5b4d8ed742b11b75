"""Where and how to log in: the site's ``connection`` block, then ssh_config.

Settings come from the site's ``connection`` block and, for whatever it leaves empty, from
``~/.ssh/config`` (``$GPUHUB_SSH_CONFIG`` overrides the path): HostName, User, Port,
IdentityFile, ProxyJump, ProxyCommand, ServerAliveInterval, ConnectTimeout,
UserKnownHostsFile, HostKeyAlias. :func:`resolve` turns them into one :class:`Endpoint` for
the site and one for each ProxyJump hop before it.
"""

from __future__ import annotations

import getpass
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import paramiko

from gpuhub.transport.base import TransportError
from gpuhub.transport.hostkeys import gpuhub_known_hosts
from gpuhub.transport.persist import SSH_CONFIG_ENV, ssh_config_path

if TYPE_CHECKING:
    from gpuhub.site import Connection

__all__ = ["SSH_CONFIG_ENV", "Endpoint", "load_ssh_config", "resolve", "ssh_config_path"]


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


def load_ssh_config(prefix: str = "") -> paramiko.SSHConfig:
    """The user's ssh_config, after ``prefix`` (ssh_config text that wins, as the first value does)."""
    path = ssh_config_path()
    try:
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        return paramiko.SSHConfig.from_text(prefix + text)
    except (paramiko.ssh_exception.ConfigParseError, OSError, ValueError) as exc:
        raise TransportError(f"cannot read ssh config {path}: {exc}") from None


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
