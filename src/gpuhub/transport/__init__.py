"""Transports run scheduler commands and move files: on this machine or over SSH.

Every scheduler command in gpuhub goes through :meth:`Transport.run`, which has a timeout,
kills what it started when the timeout hits, and raises errors that carry argv, exit code,
stdout and stderr.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

from gpuhub.transport.base import CommandError, CommandTimeout, Result, Transport

__all__ = ["CommandError", "CommandTimeout", "Result", "Transport", "transport_for"]


class _OnFirstUse(types.ModuleType):
    """Stands in for an installed module until one of its attributes is used, then imports it."""

    def __getattr__(self, attr: str) -> Any:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), attr)


def _defer(name: str) -> None:
    """Make ``import name`` cheap: the module is imported when one of its attributes is used.

    paramiko imports ``invoke``, when it is installed, only to run the ``Match exec`` lines of
    an ssh_config; importing it costs as much as all the rest of paramiko, on every command
    that connects anywhere. Every module here that imports paramiko is in this package, so this
    runs first. (``importlib.util.LazyLoader`` would not do: an ``import`` statement reads the
    module's ``__spec__``, which loads it.)"""
    if name in sys.modules:
        return
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return
    if spec is None:  # not installed: ``import name`` fails as it would have
        return
    stand_in = _OnFirstUse(name)
    stand_in.__spec__ = spec
    sys.modules[name] = stand_in


_defer("invoke")

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
        from gpuhub.transport.persist import persist_seconds, supported

        connection = site.connection
        if host is not None:
            connection = connection.model_copy(update={"host": host.address, "port": host.port or connection.port})
        seconds = persist_seconds(connection)
        if seconds and supported():  # commands through a kept connection: no paramiko, no handshake
            from gpuhub.transport.kept import KeptTransport

            transport = KeptTransport(site.name, connection, seconds)
        else:
            from gpuhub.transport.ssh import SSHTransport

            transport = SSHTransport(site.name, connection)
    _CACHE[key] = transport
    return transport


def close_all() -> None:
    for transport in _CACHE.values():
        transport.close()
    _CACHE.clear()
