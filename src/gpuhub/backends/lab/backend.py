"""The ``ssh`` backend: lab GPU servers, one host or a pool, GPUs reserved by locks on each host.

A job id is the submission token on a single server, ``TOKEN@HOST`` on a pool (HOST: a name of
``lab.hosts``). Operations on many jobs take one command per host, hosts in parallel.
"""

from __future__ import annotations

import getpass
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

from gpuhub.backends.base import SiteProblem
from gpuhub.backends.capabilities import CAPABILITIES
from gpuhub.backends.lab import ops
from gpuhub.backends.lab.discovery import Entry, Probe
from gpuhub.backends.lab.ops import Launch
from gpuhub.backends.lab.placement import choose, verdict
from gpuhub.backends.shell import SSHBackend, jobs_root
from gpuhub.backends.shell_scripts import STARTED
from gpuhub.errors import GpuhubError, NoFreeGpus
from gpuhub.sitedata import LabHost, Site

if TYPE_CHECKING:
    from gpuhub.exporter.readings import SiteReading
    from gpuhub.render import RenderedJob
    from gpuhub.states import JobStatus
    from gpuhub.transport.base import Transport

T = TypeVar("T")
VIEW_TTL = 10.0  # seconds a pool probe may still choose hosts for the next submissions


def pool(site: Site) -> list[LabHost]:
    """The site's hosts: ``lab.hosts``, or the one of ``connection.host``."""
    assert site.connection is not None
    return list(site.lab.hosts) or [LabHost(name=site.connection.host)]


def host_named(site: Site, name: str | None) -> LabHost:
    """The host of a job id's ``@HOST`` (None: the site's ``connection.host``)."""
    assert site.connection is not None
    wanted = name or site.connection.host
    for host in pool(site):
        if host.name == wanted:
            return host
    raise GpuhubError(f"site {site.name!r} has no host {wanted!r} in lab.hosts (removed from the pool?)")


def split_id(job_id: str) -> tuple[str, str | None]:
    token, _, host = job_id.partition("@")
    return token, host or None


def dir_id(job_id: str) -> str:
    """The job directory (and lock suffix) of a job id: ``TOKEN``, or ``TOKEN.HOST`` on a pool, so
    that pool hosts sharing a home directory (NFS) never share a job directory."""
    token, host = split_id(job_id)
    return f"{token}.{host}" if host else token


def host_transport(site: Site, host: LabHost) -> Transport:
    from gpuhub.transport import transport_for

    return transport_for(site, host if site.lab.hosts else None)


def on_hosts(hosts: list[LabHost], work: Callable[[LabHost], T]) -> dict[str, T | BaseException]:
    """``work`` on every host at once; each host's result or exception, by host name."""

    def guarded(host: LabHost) -> T | BaseException:
        try:
            return work(host)
        except Exception as exc:  # reported per host by the caller
            return exc

    if len(hosts) == 1:
        return {hosts[0].name: guarded(hosts[0])}
    with ThreadPoolExecutor(max_workers=min(16, len(hosts))) as pool_:
        return dict(zip([h.name for h in hosts], pool_.map(guarded, hosts), strict=True))


class LabBackend(SSHBackend):
    """Lab GPU servers: :class:`SSHBackend` jobs that reserve their GPUs before they run."""

    capabilities = CAPABILITIES["ssh"]

    def __init__(self) -> None:
        self._notes: dict[str, list[str]] = {}  # token -> where the job went and why
        self._views: dict[str, tuple[float, dict[str, Probe]]] = {}  # site -> (when, probes): see _place

    def check_site(self, site: Site) -> list[SiteProblem]:
        problems = super().check_site(site)
        names = [h.name for h in site.lab.hosts]
        if names and site.connection and site.connection.host not in names:
            problems.append(SiteProblem(("connection", "host"), (
                f"{site.connection.host!r} must be one of lab.hosts ({', '.join(names)}): the pool host "
                "commands of no particular job go to")))
        return problems

    @staticmethod
    def _site(transport: Transport) -> Site:
        """The site a transport belongs to (the interface hands operations a transport only)."""
        from gpuhub.registry import load_site

        name = getattr(transport, "site_name", None)
        if name is None:
            raise GpuhubError("a lab-server site is reached over SSH; this transport is not")
        return load_site(name)

    def submit_notes(self, token: str) -> list[str]:
        return self._notes.pop(token, [])

    # --- submit -----------------------------------------------------------------------------

    def submit(self, transport: Transport, job: RenderedJob, token: str, timeout: float = 60.0) -> str:
        alloc = job.allocation
        site = alloc.site
        wait = alloc.request.wait_for_gpus
        user = _user(site, transport)
        host, why, cached = self._place(site, alloc.gpus, wait is not None, user, timeout)
        job_id, launch = self._launch(site, host, job, token, timeout)
        if launch.kind == "refused" and cached:
            # Placed from a recent view that proved stale: look again, and try the host chosen then.
            self._views.pop(site.name, None)
            other, why, _ = self._place(site, alloc.gpus, wait is not None, user, timeout)
            if other.name != host.name:
                host = other
                job_id, launch = self._launch(site, host, job, token, timeout)
        if launch.kind == "refused":
            self._views.pop(site.name, None)
            raise NoFreeGpus(ops.refusal(host.name, launch, ops.thresholds(site.lab), wait is None))
        notes = [why] if why else []
        if launch.kind == "queued":
            notes.append(f"queued on {host.name}: {launch.reason}")
        elif launch.kind == "started" and launch.gpus:
            notes.append(f"GPUs {','.join(map(str, launch.gpus))} of {host.name} reserved (CUDA_VISIBLE_DEVICES)")
        self._remember(site, host, dir_id(job_id), user, alloc.gpus, launch)
        self._notes[token] = notes
        return job_id

    def _launch(self, site: Site, host: LabHost, job: RenderedJob, token: str, timeout: float) -> tuple[str, Launch]:
        job_id = f"{token}@{host.name}" if site.lab.hosts else token
        wait = job.allocation.request.wait_for_gpus
        args = ops.wrapper_args(job.allocation, site.lab, host, dir_id(job_id), ops.NO_WAIT if wait is None else wait)
        return job_id, ops.launch(host_transport(site, host), job, dir_id(job_id), args, host.name, timeout)

    def _place(self, site: Site, need: int, wait: bool, user: str, timeout: float) -> tuple[LabHost, str, bool]:
        """The host for a job, why, and whether the choice came from a recent view (not a fresh probe).

        Submitting many jobs in a row, each probe of every host would cost more than the job's
        own start: the probes of the last :data:`VIEW_TTL` seconds, updated with what this process
        placed since, choose instead. The host decides in the end; a stale view only costs a retry.
        """
        hosts = pool(site)
        if len(hosts) == 1:
            return hosts[0], "", False
        if need == 0:
            return host_named(site, None), "", False
        when, probes = self._views.get(site.name, (0.0, {}))
        cached = bool(probes) and time.monotonic() - when < VIEW_TTL
        if not cached:
            fresh = self.probe_all(site, hosts, timeout)
            probes = {h: p for h, p in fresh.items() if isinstance(p, Probe)}
            if not probes:
                failures = "; ".join(f"{h}: {e}" for h, e in fresh.items())
                raise GpuhubError(f"no host of {site.name} answered: {failures}")
            self._views[site.name] = (time.monotonic(), probes)
        seen = list(probes.values())
        down = [f"{h.name} did not answer" for h in hosts if h.name not in probes]
        limits = ops.thresholds(site.lab)
        pick = choose(seen, limits, need, user, wait)
        if pick.host:
            return host_named(site, pick.host), "; ".join([pick.reason, *down]), cached
        if cached:  # never refuse on an old view
            self._views.pop(site.name, None)
            return self._place(site, need, wait, user, timeout)
        lines = [f"no host of {site.name} can run {need} GPU(s) now:"]
        for probe in seen:
            lines.append(f"  {probe.host}: {verdict(probe, limits, need, user).reason}")
            lines += [f"    {line}" for line in ops.holder_lines(probe, limits)]
        lines += [f"  {d}" for d in down]
        if not wait and pick.verdict.kind != "never":
            lines.append("  wait in a host's queue with --wait-for-gpus [TIMEOUT]")
        raise NoFreeGpus("\n".join(lines))

    def _remember(self, site: Site, host: LabHost, job_dir: str, user: str, need: int, launch: Launch) -> None:
        """Update the recent view with the job just placed, as the host now sees it."""
        view = self._views.get(site.name)
        probe = view[1].get(host.name) if view else None
        if probe is None or not need:
            return
        now = int(time.time())
        if launch.kind == "started":
            keys = {g.index: g.key for g in probe.gpus}
            probe.locks += [Entry(keys[i], job_dir, user, 0, now, 1, True) for i in launch.gpus if i in keys]
        elif launch.kind == "queued":
            probe.queue.append(Entry(str(time.time_ns()), job_dir, user, 0, now, need, True))

    def probe_all(self, site: Site, hosts: list[LabHost], timeout: float = 30.0) -> dict[str, Probe | BaseException]:
        return on_hosts(hosts, lambda h: ops.probe(host_transport(site, h), site.lab, h, timeout))

    def probe_pool(self, site: Site, timeout: float = 30.0) -> tuple[list[Probe], dict[str, str]]:
        """Every host's probe, in parallel; the hosts that failed, with why."""
        probes, errors = [], {}
        for name, got in self.probe_all(site, pool(site), timeout).items():
            if isinstance(got, Probe):
                probes.append(got)
            else:
                errors[name] = " ".join((getattr(got, "message", None) or str(got) or type(got).__name__).split())
        return probes, errors

    def find_by_tokens(self, transport: Transport, tokens: list[str], timeout: float = 60.0) -> dict[str, str]:
        if not tokens:
            return {}
        site = self._site(transport)
        ids = {h.name: {dir_id(f"{t}@{h.name}" if site.lab.hosts else t): t for t in tokens} for h in pool(site)}

        def started(host: LabHost) -> set[str]:
            result = host_transport(site, host).run(
                ["bash", "-c", STARTED, "gpuhub-find", jobs_root()], stdin="\n".join(ids[host.name]) + "\n",
                timeout=timeout,
            )
            return set(result.stdout.split())

        found: dict[str, str] = {}
        for name, got in on_hosts(pool(site), started).items():
            if isinstance(got, BaseException):
                raise got
            for directory in got & set(ids[name]):
                token = ids[name][directory]
                found[token] = f"{token}@{name}" if site.lab.hosts else token
        return found

    # --- follow -----------------------------------------------------------------------------

    def _by_host(self, site: Site, ids: list[str]) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = defaultdict(list)
        for job_id in ids:
            groups[host_named(site, split_id(job_id)[1]).name].append(job_id)
        return groups

    def poll(
        self, transport: Transport, ids: list[str], timeout: float = 60.0, tasks: dict[str, int] | None = None
    ) -> dict[str, JobStatus]:
        if not ids:
            return {}
        site = self._site(transport)
        groups = self._by_host(site, ids)

        def one(host: LabHost) -> dict[str, JobStatus]:
            return ops.status(host_transport(site, host), [dir_id(i) for i in groups[host.name]], host.name, timeout)

        out: dict[str, JobStatus] = {}
        for name, got in on_hosts([host_named(site, n) for n in groups], one).items():
            if isinstance(got, BaseException):
                raise got
            out.update({i: got[dir_id(i)] for i in groups[name] if dir_id(i) in got})
        return out

    def cancel(self, transport: Transport, ids: list[str], timeout: float = 60.0) -> None:
        if not ids:
            return
        site = self._site(transport)
        groups = self._by_host(site, ids)
        results = on_hosts(
            [host_named(site, n) for n in groups],
            lambda h: ops.cancel(host_transport(site, h), [dir_id(i) for i in groups[h.name]], timeout),
        )
        self._views.pop(site.name, None)
        for got in results.values():
            if isinstance(got, BaseException):
                raise got

    def abandon(self, transport: Transport, tokens: list[str], timeout: float = 60.0) -> None:
        site = self._site(transport)
        on_hosts(pool(site), lambda h: ops.cancel(
            host_transport(site, h), [dir_id(f"{t}@{h.name}" if site.lab.hosts else t) for t in tokens], timeout))

    def log_paths(self, scheduler_id: str, job_name: str, log_dir: str, task: int | None = None) -> tuple[str, str]:
        return super().log_paths(dir_id(scheduler_id), job_name, log_dir, task)

    def job_transport(self, site: Site, scheduler_id: str) -> Transport:
        return host_transport(site, host_named(site, split_id(scheduler_id)[1]))

    # --- live GPUs --------------------------------------------------------------------------

    def read_gpus(self, site: Site, transport: Transport, deadline: float) -> SiteReading:
        probes = self.probe_all(site, pool(site), max(0.5, deadline - time.monotonic()))
        failed = [p for p in probes.values() if not isinstance(p, Probe)]
        if failed and len(failed) == len(probes):
            raise failed[0]
        return reading(site, probes)


def reading(site: Site, probes: dict[str, Probe | BaseException]) -> SiteReading:
    """The exporter's view of a pool: per host and model, GPUs held, used outside gpuhub or
    reserved count as allocated; a host that did not answer has no usable GPU."""
    from gpuhub.exporter.readings import NodeGpus, SiteReading, model_from_device_name

    limits = ops.thresholds(site.lab)
    nodes = []
    for name, probe in probes.items():
        if not isinstance(probe, Probe):
            nodes.append(NodeGpus(name, False, {}, {}, per_host=True))
            continue
        total: dict[str, int] = defaultdict(int)
        used: dict[str, int] = defaultdict(int)
        down: dict[str, int] = defaultdict(int)
        for s in probe.classify(limits):
            model = model_from_device_name(s.gpu.name)
            if s.state == "unavailable":
                down[model] += 1
                continue
            total[model] += 1
            if s.state in ("held", "foreign", "reserved"):
                used[model] += 1
        nodes.append(NodeGpus(name, True, dict(total), dict(used), per_host=True))
        if down:
            nodes.append(NodeGpus(name, False, dict(down), {}, per_host=True))
    return SiteReading(nodes=nodes)


def _user(site: Site, transport: Transport) -> str:
    """The login name on the hosts (the per-user GPU limit counts it)."""
    endpoint = getattr(transport, "endpoint", None)
    if endpoint is not None and getattr(endpoint, "user", None):
        return str(endpoint.user)
    assert site.connection is not None
    return site.connection.user or getpass.getuser()
