"""Starting connection keepers, talking to one, listing and closing them (``gpuhub connections``).

See :mod:`gpuhub.transport.persist` for what a keeper is and why it can be trusted.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from gpuhub.errors import GpuhubError
from gpuhub.transport import persist

HELLO_WAIT = 5.0  # seconds a keeper may take to greet a client (a loaded machine)
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes, the last one a NUL


class NoKeeper(Exception):
    """No keeper could take the request, and nothing was sent: connect directly.
    ``start`` says whether starting a keeper could help next time."""

    def __init__(self, why: str, start: bool) -> None:
        super().__init__(why)
        self.start = start


# The keeper this process started for each connection, while it runs (the hosts of a pool may share one).
_SPAWNED: dict[str, Any] = {}  # subprocess.Popen


def spawn(site_name: str, fields: dict[str, Any], fields_set: list[str], seconds: int) -> None:
    """Start a keeper for this connection, in the background, and do not wait for it."""
    import subprocess  # only the process that connects directly starts one

    import gpuhub

    settings = {"site": site_name, "connection": fields, "fields_set": fields_set, "persist": seconds}
    key = json.dumps([site_name, fields, fields_set], sort_keys=True)
    started = _SPAWNED.get(key)
    if started is not None and started.poll() is None:
        return
    env = dict(os.environ)
    # The keeper must run this very gpuhub, whatever made it importable here (pytest's
    # pythonpath, a sys.path change): the socket's digest names this version's protocol.
    source = str(Path(gpuhub.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    _SPAWNED[key] = subprocess.Popen(
        [sys.executable, "-m", "gpuhub.transport.keeper", json.dumps(settings)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        close_fds=True, start_new_session=True, env=env,
    )


def open_keeper(path: Path) -> socket.socket:
    """A connection to the keeper at ``path``, greeted; NoKeeper (nothing sent) otherwise."""
    if len(os.fsencode(str(path))) > MAX_SOCKET_PATH:
        raise NoKeeper(f"socket path {path} is too long", start=False)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(HELLO_WAIT)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise NoKeeper("no keeper", start=True) from None
        except OSError as exc:
            raise NoKeeper(f"cannot reach the keeper: {exc}", start=False) from None
        if persist.peer_uid(sock) != os.getuid():
            raise NoKeeper("the socket belongs to another user", start=False)
        try:
            hello = persist.receive(sock)
        except (OSError, persist.Closed):
            raise NoKeeper("the keeper is ending", start=True) from None  # e.g. idle, between two accepts
        if hello.get("keeper") != persist.PROTOCOL:
            raise NoKeeper("the keeper speaks another protocol", start=False)
    except BaseException:
        sock.close()
        raise
    return sock


def ask(path: Path, request: dict[str, Any], wait: float | None = HELLO_WAIT) -> dict[str, Any]:
    """Send ``request`` to the keeper at ``path`` and return its answer (for info and close)."""
    with open_keeper(path) as sock:
        persist.send(sock, request)
        sock.settimeout(wait)
        return persist.receive(sock)


def _directory() -> Path | None:
    directory = persist.socket_dir()
    try:
        persist.check_dir(directory)
    except FileNotFoundError:
        return None
    except (OSError, persist.Unsafe) as exc:
        raise GpuhubError(f"kept SSH connections are not used: {exc}") from None
    return directory


def _forget_stale(path: Path) -> None:
    """A socket nobody answers on: remove it, if no keeper holds its lock."""
    lock_path = path.with_suffix(".lock")
    try:
        fd = persist.lock(lock_path)
    except OSError:
        return
    if fd is None:
        return  # a keeper is starting or ending: it owns the socket
    try:
        for stale in (path, lock_path):
            with suppress(FileNotFoundError):
                stale.unlink()
    finally:
        os.close(fd)


def running() -> list[dict[str, Any]]:
    """Every keeper of this user that answers, as it describes itself (no secrets)."""
    directory = _directory()
    if directory is None:
        return []
    found = []
    for path in sorted(directory.glob("*.sock")):
        try:
            info = ask(path, {"op": "info"})
        except NoKeeper as exc:
            if exc.start:
                _forget_stale(path)
            continue
        except (OSError, persist.Closed):
            continue
        found.append({**info, "socket": str(path)})
    return found


def close(keepers: list[dict[str, Any]], wait: float = 10.0) -> list[dict[str, Any]]:
    """Ask each keeper to end (it finishes the commands it runs first); wait for them a little."""
    closed = []
    for keeper in keepers:
        try:
            if ask(Path(keeper["socket"]), {"op": "close"}).get("closed"):
                closed.append(keeper)
        except (NoKeeper, OSError, persist.Closed):
            continue
    deadline = time.monotonic() + wait
    for keeper in closed:
        while Path(keeper["socket"]).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    return closed
