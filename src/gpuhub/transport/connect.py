"""Opening an SSH connection: TCP (or ProxyCommand), handshake, host key, key login; hop by hop.

With ProxyJump every hop after the first is reached through a ``direct-tcpip`` channel of
the hop before it, and each hop's host key is checked like the site's own. Only keys log in
(identity files, then ssh-agent, then ``~/.ssh/id_*`` when none is configured): gpuhub asks
for no password or passphrase, and every failure says which keys were tried and why.

paramiko pitfalls handled here: it logs failed handshakes from its own thread at ERROR level
(a NullHandler keeps those tracebacks off the terminal); it asks for host key types in its
own fixed order, so a server with several keys may show one that known_hosts has no entry
for (the types known_hosts has are asked for first, as OpenSSH does); and an encrypted key
loaded without a password may raise TypeError (from cryptography), not PasswordRequiredException.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from gpuhub.transport.base import TransportError
from gpuhub.transport.hostkeys import RSA_ALGOS, SHORT_TYPES, ServerKey, check_host_key, known_types
from gpuhub.transport.ssh_config import Endpoint

log = logging.getLogger(__name__)
# paramiko logs failed handshakes from its own thread at ERROR level; without a handler
# Python's last-resort handler would print those tracebacks under our one-line errors.
if not logging.getLogger("paramiko").handlers:
    logging.getLogger("paramiko").addHandler(logging.NullHandler())


def _prefer_host_key_types(transport: paramiko.Transport, wanted: list[str]) -> None:
    """Ask for the host key types we can check first (as OpenSSH does with known_hosts)."""
    options = transport.get_security_options()
    available = list(options.key_types)
    first: list[str] = []
    for key_type in wanted:
        algos = RSA_ALGOS if key_type == "ssh-rsa" else SHORT_TYPES.get(key_type, (key_type,))
        first.extend(a for a in algos if a in available and a not in first)
    if first:
        options.key_types = [*first, *(a for a in available if a not in first)]


def address_hint(ip_restricted: bool, site: str, via_jump: bool) -> str:
    if not ip_restricted:
        return ""
    if via_jump:
        return f"; site {site} only admits registered addresses: the jump host's address must be registered"
    return f"; site {site} only admits registered addresses; use a VPN or connection.proxy_jump"


def open_socket(endpoint: Endpoint, role: str, hint: str) -> socket.socket | paramiko.ProxyCommand:
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


def handshake(sock: object, endpoint: Endpoint, role: str, hint: str, prefer: list[str]) -> paramiko.Transport:
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


def authenticate(transport: paramiko.Transport, endpoint: Endpoint, role: str) -> None:
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


def tunnel(previous: paramiko.Transport, via: Endpoint, endpoint: Endpoint, role: str) -> paramiko.Channel:
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


def connect_chain(site: str, target: Endpoint, jumps: list[Endpoint], ip_restricted: bool) -> list[paramiko.Transport]:
    """Open and authenticate every hop; the last transport is the target's."""
    opened: list[paramiko.Transport] = []
    hops = [*jumps, target]
    try:
        for index, endpoint in enumerate(hops):
            role = f"site {site}" if endpoint is target else f"jump host of site {site}"
            hint = address_hint(ip_restricted, site, via_jump=bool(jumps))
            if index == 0:
                sock: object = open_socket(endpoint, role, hint if not jumps else "")
            else:
                sock = tunnel(opened[-1], hops[index - 1], endpoint, role)
            transport = handshake(sock, endpoint, role, hint if endpoint is target else "", known_types(endpoint))
            opened.append(transport)
            check_host_key(endpoint, ServerKey.of(transport.get_remote_server_key()), role, site)
            authenticate(transport, endpoint, role)
            if endpoint.keepalive > 0:
                transport.set_keepalive(endpoint.keepalive)
    except BaseException:
        for transport in reversed(opened):
            transport.close()
        raise
    return opened
