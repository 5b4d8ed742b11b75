"""Commands over a kept SSH connection when there is one, over a direct one otherwise.

:class:`KeptTransport` sends :meth:`run` to the site's connection keeper (see
:mod:`gpuhub.transport.persist`): a process that holds the verified connection, so this process
imports no paramiko and makes no handshake. Everything else (``stream`` for ``logs --follow``,
SFTP transfers) and every command no keeper can take go over a direct :class:`SSHTransport`,
opened only then; the first process that connects directly starts a keeper for the next ones.

No command runs twice: a command goes to the direct connection only when the keeper could not
have received it (no keeper, a keeper that refuses before running it). Once the keeper has the
request, losing it is an error that says the command may have run, as a dropped SSH connection
is.
"""

from __future__ import annotations

import getpass
import shlex
import threading
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from gpuhub.transport import keepers, persist
from gpuhub.transport.base import CommandTimeout, Result, Transport, TransportError, Upload

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

# Beyond the command's own timeout: the keeper then stops it (TERM, a grace, KILL, a grace).
REPLY_MARGIN = 30.0


class KeptTransport(Transport):
    """One site's transport: ``run`` through its keeper if it has one, the rest directly."""

    def __init__(self, site_name: str, connection: Any, seconds: int) -> None:
        self.site_name = site_name
        self.connection = connection
        self.seconds = seconds
        self._fields = persist.connection_fields(connection)
        self._fields_set = sorted(connection.model_fields_set)
        self._direct: Any = None  # an SSHTransport, made on first need
        self._lock = threading.Lock()
        self._where: str | None = None
        self._start_keeper = False
        self._spawned = False
        self._closed = False
        self.kept_runs = 0  # commands a keeper ran for this transport

    # -- what other code reads from an SSH transport ------------------------------------------

    @property  # type: ignore[override]
    def where(self) -> str:
        if self._direct is not None:
            return str(self._direct.where)
        if self._where is not None:
            return self._where
        return f"site {self.site_name} ({self.connection.user or getpass.getuser()}@{self.connection.host})"

    @property
    def endpoint(self) -> Any:
        """The resolved login (user, host, port), as :class:`SSHTransport` has it."""
        return self.direct().endpoint

    @property
    def connections_opened(self) -> int:
        return self._direct.connections_opened if self._direct is not None else 0

    def direct(self) -> Any:
        with self._lock:
            if self._direct is None:
                from gpuhub.transport.ssh import SSHTransport

                self._direct = SSHTransport(self.site_name, self.connection)
            return self._direct

    def alive(self) -> bool:
        return not self._closed

    def close(self) -> None:
        with self._lock:
            if self._direct is not None:
                self._direct.close()
            self._closed = True

    # -- commands -----------------------------------------------------------------------------

    def run(self, argv: list[str], stdin: str | None = None, timeout: float = 60.0, check: bool = True) -> Result:
        if not argv:
            raise ValueError("run() needs a command")
        argv = list(argv)
        direct = self._direct
        # A connection this process opened anyway (SFTP, a command no keeper took) serves the rest.
        if direct is None or not direct.connections_opened or not direct.alive():
            try:
                return self.checked(self._kept(argv, stdin, timeout), check)
            except keepers.NoKeeper as exc:
                self._start_keeper = self._start_keeper or exc.start
        direct = self.direct()
        try:
            return direct.run(argv, stdin, timeout, check)  # type: ignore[no-any-return]
        finally:
            self._maybe_spawn(direct)

    def _maybe_spawn(self, direct: Any) -> None:
        """Start a keeper once this process has proved the connection works (a keeper for a host
        that cannot be reached would only fail again, in the background, at every command)."""
        if self._start_keeper and not self._spawned and direct.connections_opened:
            self._spawned = True
            with suppress(OSError):  # the next command connects directly again: slower, not wrong
                keepers.spawn(self.site_name, self._fields, self._fields_set, self.seconds)

    def _kept(self, argv: list[str], stdin: str | None, timeout: float | None) -> Result:
        """The command's result from the keeper; NoKeeper when it never reached one."""
        parameters = persist.params(self.site_name, self._fields, self._fields_set)
        directory = persist.socket_dir()
        try:
            persist.check_dir(directory)
        except FileNotFoundError:  # no keeper yet; one can make it if $XDG_RUNTIME_DIR (or /tmp) is there
            raise keepers.NoKeeper("no socket directory", start=directory.parent.is_dir()) from None
        except (OSError, persist.Unsafe) as exc:
            raise keepers.NoKeeper(str(exc), start=False) from None
        sock = keepers.open_keeper(persist.socket_path(directory, parameters))
        with sock:
            request = {"op": "run", "params": parameters, "argv": argv, "stdin": stdin, "timeout": timeout,
                       "persist": self.seconds}
            try:
                persist.send(sock, request)
            except OSError:  # the keeper ended before it had the whole request
                raise keepers.NoKeeper("the keeper is ending", start=True) from None
            sock.settimeout(None if timeout is None else timeout + REPLY_MARGIN)
            try:
                reply = persist.receive(sock)
            except TimeoutError:
                why = f"its connection keeper did not answer within {timeout + REPLY_MARGIN:g} s"
                raise self._lost(argv, why) from None
            except (OSError, persist.Closed):
                raise self._lost(argv, "its connection keeper ended") from None
        if "fallback" in reply:
            raise keepers.NoKeeper(str(reply["fallback"]), start=True)
        if isinstance(reply.get("where"), str):
            self._where = reply["where"]
        if isinstance(reply.get("result"), dict):
            got = reply["result"]
            self.kept_runs += 1
            return Result(argv, int(got["returncode"]), str(got["stdout"]), str(got["stderr"]))
        if isinstance(reply.get("timeout"), dict):
            got = reply["timeout"]
            raise CommandTimeout(argv, timeout, self.where, str(got.get("stdout", "")), str(got.get("stderr", "")))
        if isinstance(reply.get("error"), str):
            raise TransportError(reply["error"])
        raise self._lost(argv, "its connection keeper answered something else")

    def _lost(self, argv: list[str], why: str) -> TransportError:
        return TransportError(
            f"connection to {self.where} was lost while `{shlex.join(argv)}` ran ({why}); the command may have run"
        )

    # -- the rest goes over a direct connection -----------------------------------------------

    def stream(self, argv: list[str], idle: float | None = None) -> Iterator[str]:
        return self.direct().stream(argv, idle)  # type: ignore[no-any-return]

    def put_text(self, path: str, text: str, mode: int = 0o644) -> None:
        self.direct().put_text(path, text, mode)

    def get_text(self, path: str) -> str:
        return self.direct().get_text(path)  # type: ignore[no-any-return]

    def put_file(self, local_path: str, remote_path: str, mtime: float | None = None, mode: int | None = None) -> None:
        self.direct().put_file(local_path, remote_path, mtime, mode)

    def put_files(self, uploads: Sequence[Upload]) -> None:
        self.direct().put_files(uploads)
