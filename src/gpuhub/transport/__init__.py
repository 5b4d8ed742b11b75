"""Transports run scheduler commands and move files: on this machine or over SSH.

Every scheduler command in gpuhub goes through :meth:`Transport.run`, which has a timeout,
kills what it started when the timeout hits, and raises errors that carry argv, exit code,
stdout and stderr.
"""

from __future__ import annotations

from gpuhub.transport.base import CommandError, CommandTimeout, Result, Transport

__all__ = ["CommandError", "CommandTimeout", "Result", "Transport", "transport_for"]

_CACHE: dict[str, Transport] = {}


def transport_for(site, host=None) -> Transport:  # type: ignore[no-untyped-def]
    """One transport per site (per host of a lab-server pool, ``host`` being a ``LabHost``) per
    process, reused for every command and file transfer."""
    key = site.name if host is None else f"{site.name}/{host.name}"
    cached = _CACHE.get(key)
    if cached is not None and cached.alive():
        return cached
    if site.connection is None:
        from gpuhub.transport.local import LocalTransport

        transport: Transport = LocalTransport()
    else:
        from gpuhub.transport.ssh import SSHTransport

        connection = site.connection
        if host is not None:
            connection = connection.model_copy(update={"host": host.address, "port": host.port or connection.port})
        transport = SSHTransport(site.name, connection)
    _CACHE[key] = transport
    return transport


def close_all() -> None:
    for transport in _CACHE.values():
        transport.close()
    _CACHE.clear()
