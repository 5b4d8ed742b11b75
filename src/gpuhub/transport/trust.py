"""``gpuhub sites trust``: fetch a site's host key without logging in to the site.

Every hop is connected to as for a real connection, but only jump hosts are logged in to
(their tunnel is needed to reach the next hop); the site's key is only looked at. A key is
weighed against what the site file publishes (``connection.host_key_fingerprints``) and
against known_hosts: a contradiction is refused with :class:`HostKeyRefused`, never
overwritten, because a changed host key is what an attack looks like.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import paramiko

from gpuhub.transport.connect import address_hint, authenticate, handshake, open_socket, tunnel
from gpuhub.transport.hostkeys import (
    SHORT_TYPES,
    HostKeyError,
    HostKeyRefused,
    HostKeyUnknown,
    KnownKey,
    ServerKey,
    check_host_key,
    known_keys,
    known_types,
    short_key_type,
)
from gpuhub.transport.ssh_config import Endpoint, resolve

if TYPE_CHECKING:
    from gpuhub.site import Connection


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
            hint = address_hint(connection.ip_restricted, site, via_jump=bool(jumps)) if is_target or not jumps else ""
            if index == 0:
                sock: object = open_socket(endpoint, role, hint)
            else:
                sock = tunnel(opened[-1], hops[index - 1], endpoint, role)
            prefer = known_types(endpoint, extra_known_hosts)
            if is_target:
                prefer = [*prefer, *(t for s in published for t in SHORT_TYPES.get(s, ()))]
            transport = handshake(sock, endpoint, role, hint, prefer)
            opened.append(transport)
            offered = ServerKey.of(transport.get_remote_server_key())
            try:
                check_host_key(endpoint, offered, role, site, extra_known_hosts)
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
                authenticate(transport, endpoint, role)
    finally:
        for transport in reversed(opened):
            transport.close()
    return scans
