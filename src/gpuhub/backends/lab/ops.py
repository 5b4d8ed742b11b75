"""Lab-server operations on one host, through a transport: probe, launch, status, cancel.

Each is one remote command. Job directories are the shell backend's (``~/.gpuhub/jobs/TOKEN``),
so logs, adoption after a lost connection and the process checks are the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpuhub.backends import shell
from gpuhub.backends.lab import remote
from gpuhub.backends.lab.discovery import Probe, Thresholds, parse_probe
from gpuhub.errors import GpuhubError
from gpuhub.record import Record
from gpuhub.states import JobStatus, State
from gpuhub.units import format_walltime

if TYPE_CHECKING:
    from gpuhub.plan import Allocation
    from gpuhub.render import RenderedJob
    from gpuhub.site import Lab, LabHost
    from gpuhub.transport.base import Transport

WAIT_FOREVER = 0
NO_WAIT = -1


def lock_dir(lab: Lab, host: LabHost) -> str:
    return host.lock_dir or lab.lock_dir


def nvidia_smi(lab: Lab, host: LabHost) -> str:
    return host.nvidia_smi or lab.nvidia_smi


def thresholds(lab: Lab) -> Thresholds:
    return Thresholds(lab.busy_memory_mib, lab.busy_utilization, frozenset(lab.reserved_gpus), lab.max_gpus_per_user)


def probe(transport: Transport, lab: Lab, host: LabHost, timeout: float = 30.0) -> Probe:
    """The host's GPUs, their processes, gpuhub's locks and queue (one command)."""
    result = transport.run(
        ["bash", "-c", remote.PROBE, "gpuhub-probe", nvidia_smi(lab, host), lock_dir(lab, host)], timeout=timeout
    )
    return parse_probe(result.stdout, host.name)


class Launch(Record):
    kind: str  # started | queued | refused | ended
    gpus: tuple[int, ...] = ()
    reason: str = ""
    probe: Probe | None = None  # what the host saw, when it refused


def wrapper_args(alloc: Allocation, lab: Lab, host: LabHost, token: str, wait: int) -> list[str]:
    """The detached job's arguments (see :data:`remote._WRAPPER`): all values, never code."""
    return [
        token,
        str(alloc.gpus),
        lock_dir(lab, host),
        nvidia_smi(lab, host),
        ",".join(str(i) for i in sorted(lab.reserved_gpus)),
        str(lab.busy_memory_mib),
        str(lab.busy_utilization),
        str(lab.max_gpus_per_user or 0),
        str(wait),
        str(alloc.time_limit or 0),  # none: the job runs until it ends
        str(lab.kill_grace),
        f"{lab.queue_poll:g}",
    ]


def launch(
    transport: Transport, job: RenderedJob, token: str, args: list[str], host: str, timeout: float = 120.0
) -> Launch:
    """Write the job script and start the job, in one command; the job reserves its GPUs itself."""
    directory = shell.job_dir(token)
    if list(job.files) != [shell.MAIN_FILE]:
        raise GpuhubError(f"a lab-server job is one file, {shell.MAIN_FILE!r}, not {', '.join(job.files)}")
    result = transport.run(
        ["bash", "-c", remote.LAUNCHER, "gpuhub-launch", directory, *args], stdin=job.files[shell.MAIN_FILE],
        timeout=timeout,
    )
    return parse_launch(result.stdout, host)


def parse_launch(stdout: str, host: str) -> Launch:
    head, _, rest = stdout.lstrip().partition("\n")
    if head == "#started":
        ids = rest.split(" ", 1)[0].strip()
        return Launch("started", tuple(int(i) for i in ids.split(",") if i.isdigit()))
    if head == "#queued":
        return Launch("queued", reason=rest.strip())
    if head == "#refused":
        reason, _, snapshot = rest.partition("\n")
        try:
            seen = parse_probe(snapshot, host) if snapshot.strip() else None
        except GpuhubError:
            seen = None  # the reason says enough
        return Launch("refused", reason=reason.strip(), probe=seen)
    if head == "#ended":
        return Launch("ended", reason=rest.strip())
    raise GpuhubError(f"starting the job on {host} answered {stdout.strip()[:200]!r}")


def status(transport: Transport, ids: list[str], host: str, timeout: float = 60.0) -> dict[str, JobStatus]:
    """Status of the jobs (tokens) of one host, in one command."""
    if not ids:
        return {}
    result = transport.run(
        ["bash", "-c", remote.STATUS, "gpuhub-status", shell.jobs_root()], stdin="\n".join(ids) + "\n", timeout=timeout
    )
    return parse_status(result.stdout, host)


def parse_status(stdout: str, host: str) -> dict[str, JobStatus]:
    base, _, extra = stdout.partition("#extra\n")
    found = shell.parse_poll(base)
    for line in extra.splitlines():
        parts = line.split("|")
        if len(parts) != 4 or parts[0] not in found:
            continue
        job_id, word, detail, taken = parts
        st = found[job_id]
        changes: dict[str, object] = {}
        if word in ("queued", "refused", "nogpus"):
            changes["start"] = None  # no GPU time before the GPUs are held
        if word == "gpus":
            changes["nodes"] = f"{host} GPU {detail}"
            if taken.isdigit():
                changes["start"] = float(taken)  # GPU time starts when the GPUs are taken
        elif word == "queued" and st.state == State.RUNNING:
            changes.update(state=State.PENDING, reason=f"waiting for GPUs on {host}: {detail}")
        elif word == "refused" and st.state.finished:
            changes.update(state=State.FAILED, reason=f"no GPUs on {host}: {detail}")
        elif word == "timedout" and st.state.finished:
            changes.update(state=State.TIMEOUT, reason="walltime reached: stopped with TERM, then KILL")
        found[job_id] = _replace(st, changes)
    return found


def _replace(st: JobStatus, changes: dict[str, object]) -> JobStatus:
    if not changes:
        return st
    values = {k: getattr(st, k) for k in ("state", "reason", "nodes", "exit_code", "start", "end")}
    values.update(changes)
    return JobStatus(**values)  # type: ignore[arg-type]


def cancel(transport: Transport, ids: list[str], timeout: float = 60.0) -> None:
    """Stop the jobs (every process of their sessions) and free their GPUs; one command."""
    if ids:
        transport.run(
            ["bash", "-c", remote.CANCEL, "gpuhub-cancel", shell.jobs_root()],
            stdin="\n".join(ids) + "\n",
            timeout=timeout,
        )


def refusal(host: str, launch: Launch, limits: Thresholds, wait_hint: bool = True) -> str:
    """The message for a job the host refused: why, and who holds what."""
    lines = [f"no GPUs for this job on {host}: {launch.reason}"]
    if launch.probe is not None:
        lines += [f"  {line}" for line in holder_lines(launch.probe, limits)]
    if wait_hint:
        lines.append("  wait in the host's queue with --wait-for-gpus [TIMEOUT]")
    return "\n".join(lines)


def holder_lines(probe: Probe, limits: Thresholds) -> list[str]:
    """One line per GPU that is not free, then the queue: who, which job, since when."""
    import time

    out = []
    now = probe.now or int(time.time())
    for s in probe.classify(limits):
        gpu = f"GPU {s.gpu.index} ({s.gpu.name})"
        if s.state == "held" and s.holder:
            out.append(f"{gpu}: held by {s.holder.user}, job {s.holder.token.partition('.')[0]}, "
                       f"for {format_walltime(max(0, now - s.holder.since))}")
        elif s.state == "foreign":
            users = sorted({f"{a.user or '?'} (pid {a.pid})" for a in s.apps})
            used = f"{s.gpu.memory_used} MiB used" if s.gpu.memory_used is not None else "in use"
            out.append(f"{gpu}: used outside gpuhub" + (f" by {', '.join(users)}" if users else f", {used}"))
        elif s.state in ("reserved", "unavailable"):
            out.append(f"{gpu}: {s.state}")
    for e in probe.waiting():
        waited = format_walltime(max(0, now - e.since))
        out.append(f"queued: job {e.token.partition('.')[0]} of {e.user}, {e.need} GPU(s), for {waited}")
    return out
