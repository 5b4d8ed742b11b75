"""The scheduler-backend interface: everything gpuhub needs from a scheduler, in one class.

``plan``, ``render``, ``jobs``, ``accounting.collect``, the exporter and the CLI talk to a
scheduler only through a :class:`Backend` (got from :func:`gpuhub.backends.backend_for`), and
read what it can do from its :class:`Capabilities` instead of comparing scheduler names.

A backend builds files and commands and parses outputs; every command it runs goes through the
:class:`~gpuhub.transport.base.Transport` it is given (this machine or SSH), so one backend
serves a local and a remote site alike. Methods that only build text (``context``,
``submit_argv``, ``launch``, ``log_paths``, ``check_site``) do no I/O.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from gpuhub.backends.capabilities import Capabilities
from gpuhub.backends.common import launch
from gpuhub.record import Record

if TYPE_CHECKING:
    from datetime import datetime

    from gpuhub.accounting.collect import Outcome
    from gpuhub.accounting.store import UsageStore
    from gpuhub.exporter.readings import SiteReading
    from gpuhub.plan import Allocation
    from gpuhub.render import RenderedJob
    from gpuhub.site import Site
    from gpuhub.states import JobStatus
    from gpuhub.transport.base import Transport

LAUNCHERS = ("none", "torchrun", "srun")


class Finding(Record):
    """One value of a site file checked against the live site (``gpuhub sites check``)."""

    path: str  # dotted field of the site file
    ok: bool
    message: str
    fix: str | None = None  # the YAML value to write at ``path``, when one is known


class SiteProblem(Record):
    """A scheduler-specific mistake in a site file: the dotted field it is in, and what is wrong."""

    field: tuple[str, ...]
    message: str


class Backend(ABC):
    """One scheduler. Subclasses set the class attributes and implement the abstract methods."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities] = Capabilities()
    files: ClassVar[dict[str, str]]  # output file -> template; the first is the main file
    plain_files: ClassVar[frozenset[str]] = frozenset()  # files not shell-quoted (submit descriptions)
    stdin_file: ClassVar[str | None] = None  # file sent on the submit command's standard input
    usage_source: ClassVar[str] = "ledger"  # the `accounting.source` collect_usage reads

    # --- site files -------------------------------------------------------------------------

    def check_site(self, site: Site) -> list[SiteProblem]:
        """Scheduler-specific checks of a site file; the registry adds file:line to each problem."""
        problems = _connection_problems(site, self.capabilities.connection)
        source = site.accounting.source
        if source not in (None, "ledger", self.usage_source):
            allowed = " or ".join(sorted({"ledger", self.usage_source}))
            problems.append(SiteProblem(("accounting", "source"),
                                        f"{source!r} is not a usage source of {site.scheduler} sites; use {allowed}"))
        if "lab" in site.model_fields_set and not self.capabilities.gpu_locks:
            problems.append(SiteProblem(("lab",), f"'lab' settings are for lab GPU servers (scheduler ssh), "
                                                  f"not for {site.scheduler}"))
        return problems

    # --- building a job (pure) --------------------------------------------------------------

    @abstractmethod
    def context(self, alloc: Allocation, token: str | None) -> dict[str, Any]:
        """Template variables for ``alloc``; ``token`` tags the submission so it can be found again."""

    @abstractmethod
    def submit_argv(self) -> list[str]:
        """The submit command, run in the directory the files were written to (or with stdin_file)."""

    def launch(self, alloc: Allocation) -> tuple[list[str], str]:
        """Lines preparing the launch, and the command line starting the user's ranks."""
        return launch(alloc, srun=False)

    def is_plain(self, file_name: str) -> bool:
        return file_name in self.plain_files

    # --- a job's life (through a transport) -------------------------------------------------

    @abstractmethod
    def submit(self, transport: Transport, job: RenderedJob, token: str, timeout: float = 60.0) -> str:
        """Send ``job`` and return the scheduler's id for it."""

    @abstractmethod
    def parse_submit(self, stdout: str) -> str:
        """The job id from the submit command's output; GpuhubError when there is none."""

    @abstractmethod
    def find_by_tokens(self, transport: Transport, tokens: list[str], timeout: float = 60.0) -> dict[str, str]:
        """{token: id} of the jobs that reached the scheduler with these tokens, in one call.

        Used to adopt a submission whose answer was lost (connection drop, killed client).
        """

    def abandon(self, transport: Transport, tokens: list[str], timeout: float = 60.0) -> None:
        """Make sure submissions given up on (not found by :meth:`find_by_tokens`) never start.

        A scheduler whose submit is one atomic call needs nothing; a backend whose submission
        has several steps must leave a mark that stops a half-done one from starting later.
        """
        return None

    @abstractmethod
    def poll(
        self, transport: Transport, ids: list[str], timeout: float = 60.0, tasks: dict[str, int] | None = None
    ) -> dict[str, JobStatus]:
        """Status of many jobs in one (or a fixed few) calls; ``tasks``: array sizes by id.

        An id the scheduler no longer knows is left out of the answer.
        """

    @abstractmethod
    def cancel(self, transport: Transport, ids: list[str], timeout: float = 60.0) -> None:
        """Cancel many jobs in one call."""

    def cancel_pending(self, transport: Transport, ids: list[str], timeout: float = 60.0) -> None:
        """Cancel those of ``ids`` that have not started; a job that has started keeps running.

        Used by failover, which must never leave two attempts running. This default looks, then
        cancels what it saw pending (a job starting in between is cancelled too); a scheduler
        that can decide atomically overrides it.
        """
        from gpuhub.states import State

        found = self.poll(transport, ids, timeout=timeout)
        pending = [i for i in ids if i in found and found[i].state == State.PENDING]
        if pending:
            self.cancel(transport, pending, timeout=timeout)

    @abstractmethod
    def log_paths(self, scheduler_id: str, job_name: str, log_dir: str, task: int | None = None) -> tuple[str, str]:
        """Where the job's standard output and error are, as paths the transport reads."""

    def job_transport(self, site: Site, scheduler_id: str) -> Transport:
        """The transport that reaches a job's files (its logs): the site's, unless the backend
        spreads jobs over several machines."""
        from gpuhub.transport import transport_for

        return transport_for(site)

    def submit_notes(self, token: str) -> list[str]:
        """What the user should hear about a submission just made (where it went and why)."""
        return []

    # --- accounting and live GPUs ----------------------------------------------------------

    def collect_usage(
        self, store: UsageStore, site: Site, start: str, end: str, chunk: int, out: Outcome,
        progress: Callable[[str], None],
    ) -> None:
        """Bring the site's GPU runs of ``[start, end]`` into ``store`` (idempotently) from
        :attr:`usage_source`, and record what happened in ``out``. The default reads the gpuhub
        ledger (jobs gpuhub submitted); a site's ``accounting.source: ledger`` picks it too."""
        from gpuhub.accounting.ledger_usage import collect_ledger

        collect_ledger(store, site, start, end, out, progress)

    @abstractmethod
    def read_gpus(self, site: Site, transport: Transport, deadline: float) -> SiteReading:
        """Live GPUs (configured/allocated per node and model) and queued jobs; ``deadline`` is a
        ``time.monotonic()`` value the probe must finish by."""

    def expected_start(self, transport: Transport, alloc: Allocation, timeout: float = 60.0
                       ) -> tuple[datetime | None, str]:
        """When the scheduler expects ``alloc`` to start, and where that comes from; (None, "") when
        it cannot tell. Raises GpuhubError when the scheduler would refuse the job (the broker
        then excludes the site with that reason)."""
        return None, ""

    def check_live(self, site: Site, transport: Transport, timeout: float = 60.0) -> list[Finding]:
        """``gpuhub sites check``: every checkable value of the site file against the live site."""
        from gpuhub.errors import GpuhubError

        raise GpuhubError(f"`sites check` is not available for {self.name} sites yet")


def _connection_problems(site: Site, rule: str) -> list[SiteProblem]:
    if rule == "required" and site.connection is None:
        return [SiteProblem((), f"a {site.scheduler} site needs a 'connection' block with at least 'host'")]
    if rule == "none" and site.connection is not None:
        return [SiteProblem(("connection",), f"the {site.scheduler} scheduler runs on this machine and takes no "
                                             "'connection'")]
    return []
