"""A connection keeper: one background process that holds one verified SSH connection and runs
commands on it for later gpuhub processes, until it has been idle for ``connection.persist``
seconds. Started by :func:`gpuhub.transport.keepers.spawn` as
``python -m gpuhub.transport.keeper SETTINGS_JSON``; see :mod:`gpuhub.transport.persist`.

It connects with the very code a gpuhub command uses (:class:`SSHTransport`: host keys checked,
ProxyJump, keys only) and runs each request through :meth:`SSHTransport.run`, so a timeout stops
the remote command exactly as it does without a keeper. It never reconnects: when its connection
is gone it answers "fall back" (the client then connects itself, nothing having run) and ends.

One keeper per socket: it holds an exclusive ``flock`` on the lock file next to the socket for
its whole life, so a second keeper started for the same connection ends at once, and a keeper
that gets the lock may remove a socket left behind by one killed with ``kill -9``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from gpuhub.transport import persist
from gpuhub.transport.base import CommandTimeout, Transport, TransportError
from gpuhub.transport.ssh import SSHTransport
from gpuhub.transport.ssh_config import resolve

REQUEST_WAIT = 30.0  # seconds a client may take to send its request once connected
TICK = 1.0  # seconds between looks at the idle time, the connection and known_hosts


class NotStarted(TransportError):
    """Nothing reached the server: the client may safely run the command itself."""


class KeptSSH(SSHTransport):
    """An SSHTransport that never reconnects, and says when a command was never sent."""

    def _client(self) -> Any:
        current = self._transport
        if self.connections_opened and (current is None or not current.is_active()):
            raise NotStarted(f"the kept connection to {self.where} was lost")
        return super()._client()

    def _session(self) -> Any:
        try:
            return super()._session()
        except NotStarted:
            raise
        except TransportError as exc:  # no channel, so no command
            raise NotStarted(exc.format_message()) from None


class Keeper:
    def __init__(self, settings: dict[str, Any]) -> None:
        self.site = str(settings["site"])
        self.fields: dict[str, Any] = settings["connection"]
        self.fields_set: list[str] = list(settings["fields_set"])
        self.persist = int(settings["persist"])
        self.params = persist.params(self.site, self.fields, self.fields_set)
        self.directory = persist.socket_dir()
        self.path = persist.socket_path(self.directory, self.params)
        self.lock_path = self.path.with_suffix(".lock")
        self.ssh: KeptSSH | None = None
        self.target = ""
        self.jumps: list[str] = []
        self.watched: list[list[Any]] = []
        self.listener: socket.socket | None = None
        self.stopping = threading.Event()
        self.cond = threading.Condition()
        self.active = 0
        self.commands = 0
        self.started = time.time()
        self.last_used = time.time()
        self.last = time.monotonic()

    # -- life ---------------------------------------------------------------------------------

    def connect(self) -> None:
        from gpuhub.sitedata import Connection

        connection = Connection(**self.fields, model_fields_set=frozenset(self.fields_set))
        target, jumps = resolve(connection)
        self.target, self.jumps = target.label, [j.label for j in jumps]
        files = dict.fromkeys(f for e in (target, *jumps) for f in e.known_hosts_files)
        # Stamped before connecting: an edit while we connect makes the first request refused.
        self.watched = self.stamps(list(files))
        self.ssh = KeptSSH(self.site, connection)
        self.ssh._client()
        if persist.params(self.site, self.fields, self.fields_set) != self.params:
            raise TransportError("the files the connection depends on changed while connecting")

    @staticmethod
    def stamps(files: list[Path]) -> list[list[Any]]:
        return [persist.stamp(f) for f in [persist.ssh_config_path(), *files]]

    def changed(self) -> bool:
        paths = [Path(s[0]) for s in self.watched[1:]]
        return self.stamps(paths) != self.watched

    def listen(self) -> socket.socket:
        with suppress(FileNotFoundError):
            self.path.unlink()  # a socket left by a keeper that was killed: we hold the lock
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            listener.bind(str(self.path))
        finally:
            os.umask(old)
        listener.listen(64)
        listener.settimeout(TICK)
        return listener

    def stop(self) -> None:
        self.stopping.set()
        listener = self.listener
        if listener is not None:
            with suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes accept() at once

    def due(self) -> bool:
        """Whether the keeper should end now: idle for long enough, connection gone, or a file
        the connection was verified with changed."""
        assert self.ssh is not None
        with self.cond:
            idle = self.active == 0 and time.monotonic() - self.last >= self.persist
        return idle or not self.ssh.alive() or self.changed()

    def serve_forever(self) -> None:
        listener = self.listener = self.listen()
        with self.cond:
            self.last = time.monotonic()  # idle from now: connecting may have taken a while
        look = time.monotonic() + TICK
        while not self.stopping.is_set():
            if time.monotonic() >= look:  # also when requests keep coming (a listing every 50 ms)
                look = time.monotonic() + TICK
                if self.due():
                    self.stop()
                    break
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if not self.stopping.is_set():
                    time.sleep(0.05)
                continue
            with self.cond:
                self.active += 1
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()
        listener.close()
        self.remove()
        with self.cond:  # commands already running finish and get their answer
            while self.active:
                self.cond.wait()

    def remove(self) -> None:
        """Take the socket and the lock file away while still holding the lock, so that they
        never name a keeper that has ended."""
        for path in (self.path, self.lock_path):
            with suppress(FileNotFoundError):
                path.unlink()

    # -- requests -----------------------------------------------------------------------------

    def serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                if persist.peer_uid(conn) != os.getuid():
                    return
                conn.settimeout(REQUEST_WAIT)
                persist.send(conn, {"keeper": persist.PROTOCOL})
                request = persist.receive(conn)
                conn.settimeout(None)
                reply = self.answer(request)
                conn.settimeout(REQUEST_WAIT)
                persist.send(conn, reply)
        except (OSError, persist.Closed):
            pass  # the client went away: it sees an error of its own
        finally:
            with self.cond:
                self.active -= 1
                self.cond.notify_all()

    def info(self) -> dict[str, Any]:
        with self.cond:
            running = self.active - 1  # not this request
        return {"pid": os.getpid(), "site": self.site, "target": self.target, "jumps": self.jumps,
                "started": self.started, "last_used": self.last_used, "persist": self.persist,
                "commands": self.commands, "running": running, "closing": self.stopping.is_set()}

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "info":
            return self.info()
        if op == "close":
            self.stop()
            return {"closed": True}
        if op != "run":
            return {"fallback": f"unknown request {op!r}"}
        if request.get("params") != self.params:
            return {"fallback": "the connection parameters differ"}
        argv, stdin, timeout = request.get("argv"), request.get("stdin"), request.get("timeout")
        if (not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv)
                or not isinstance(stdin, str | None) or not isinstance(timeout, int | float | None)):
            return {"fallback": "a malformed request"}
        assert self.ssh is not None
        if self.stopping.is_set() or self.changed() or not self.ssh.alive():
            self.stop()
            return {"fallback": "the keeper is ending"}
        wanted = request.get("persist")
        if isinstance(wanted, int) and 0 < wanted <= persist.MAX_PERSIST:
            self.persist = wanted  # the latest command's setting
        return self.run(argv, stdin, timeout)

    def used(self, ran: bool = True) -> None:
        """A command ended: the idle time starts again (listings and refusals do not count)."""
        with self.cond:
            self.commands += ran
            self.last = time.monotonic()
            self.last_used = time.time()

    def run(self, argv: list[str], stdin: str | None, timeout: float | None) -> dict[str, Any]:
        assert self.ssh is not None
        where = {"where": self.ssh.where}
        try:
            result = self.ssh.run(argv, stdin=stdin, timeout=timeout, check=False)  # type: ignore[arg-type]
        except NotStarted as exc:
            if not self.ssh.alive():
                self.stop()
            return {"fallback": exc.format_message()}
        except CommandTimeout as exc:
            self.used()
            return {**where, "timeout": {"stdout": exc.stdout, "stderr": exc.stderr}}
        except TransportError as exc:
            if not self.ssh.alive():
                self.stop()
            return {**where, "error": exc.format_message()}
        except Exception as exc:  # the command may have run: say so, never "fall back"
            return {**where, "error": f"`{argv[0]}` on {self.ssh.where} failed in its keeper: {exc!r}"}
        self.used()
        return {**where, "result": {"returncode": result.returncode, "stdout": result.stdout,
                                    "stderr": result.stderr}}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not persist.supported():
        return 2
    keeper = Keeper(json.loads(argv[0]))
    try:
        persist.make_dir(keeper.directory)
        fd = persist.lock(keeper.lock_path)
    except (OSError, persist.Unsafe):
        return 1
    if fd is None:
        return 0  # another keeper serves this connection
    signal.signal(signal.SIGTERM, lambda *_: keeper.stop())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # started from a terminal: ^C there is not for us
    try:
        keeper.connect()
    except Exception:
        keeper.remove()
        return 1
    try:
        keeper.serve_forever()
    finally:
        ssh: Transport | None = keeper.ssh
        if ssh is not None:
            ssh.close()
        keeper.remove()
        os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
