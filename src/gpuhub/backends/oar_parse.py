"""Pure parsers of OAR 2.5 command output (tested on output recorded from a real OAR 2.5.9).

Formats, as OAR prints them:

- ``oarsub``: admission rules may print lines first; then ``OAR_JOB_ID=N`` (one per job of an
  array, then ``OAR_ARRAY_ID=N``). A refused job prints ``OAR_JOB_ID=-5`` and exits non-zero.
  ``-J`` output differs between 2.5.9 and 2.5.10, so the id is always read from these lines.
- ``oarstat -fJ``: ``{"ID": {...}}`` or nothing at all when no job matches. Without ``-f``,
  2.5.9 leaves out ``stopTime``, ``exit_code`` and ``walltime``. ``exit_code`` is a raw wait
  status (``768`` = exit 3). A plain job is its own array (``array_id`` = its id).
- ``oarnodes -J``: ``{"RESOURCE_ID": {properties...}}``; each resource is typically one core,
  and its ``gpu`` property names the GPU it belongs to.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from gpuhub.errors import GpuhubError
from gpuhub.states import JobStatus, State

_JOB_ID_RE = re.compile(r"^OAR_JOB_ID=(\d+)$", re.MULTILINE)
_ARRAY_ID_RE = re.compile(r"^OAR_ARRAY_ID=(\d+)$", re.MULTILINE)
# In initial_request: the command line, then "; #OAR ..." for each line oarsub -S scanned.
_ARRAY_OPTION = re.compile(r"(?:^|[\s;])--array(?:-param-file)?[\s=]")

_OAR_STATES = {
    "Waiting": State.PENDING,
    "Hold": State.PENDING,
    "toLaunch": State.PENDING,
    "toAckReservation": State.PENDING,
    "Launching": State.RUNNING,
    "Running": State.RUNNING,
    "Suspended": State.RUNNING,
    "Resuming": State.RUNNING,
    "Finishing": State.RUNNING,
    # toError is on its way to Error; what kind of end it is shows only then.
    "toError": State.RUNNING,
}
# Events that say why a job ended in the Error state, first match wins: a job past its walltime
# also carries FRAG_JOB_REQUEST (OAR frags it), so WALLTIME is looked for first.
_ERROR_EVENTS = (
    ("WALLTIME", State.TIMEOUT),
    ("FRAG_JOB_REQUEST", State.CANCELLED),
)
EXIT_RESUBMIT = 99  # an idempotent job exiting 99 is resubmitted by OAR


@dataclass(frozen=True)
class Submitted:
    """What ``oarsub`` created: one job, or the jobs of an array."""

    job_ids: tuple[str, ...]
    array_id: str | None = None

    @property
    def id(self) -> str:
        """The id gpuhub tracks: the array's id (= its first job's) or the job's."""
        return self.array_id or self.job_ids[0]


def parse_submit(stdout: str) -> Submitted:
    ids = tuple(_JOB_ID_RE.findall(stdout))
    if not ids:
        text = " ".join(stdout.split()) or "nothing"
        raise GpuhubError(f"oarsub answered {text!r}, without an OAR_JOB_ID line")
    array = _ARRAY_ID_RE.search(stdout)
    return Submitted(ids, array.group(1) if array else None)


@dataclass(frozen=True)
class OarJob:
    """One job of ``oarstat -fJ``, with the fields gpuhub uses."""

    job_id: str
    array_id: str
    array_index: int
    state: str
    exit_code: int | None  # raw wait status
    start: int | None  # epoch seconds; None until it starts
    stop: int | None
    walltime: int | None  # seconds asked
    resources: tuple[int, ...]  # assigned resource ids
    hosts: tuple[str, ...]
    owner: str
    project: str
    name: str
    queue: str
    types: tuple[str, ...]
    events: tuple[str, ...]  # event types, oldest first
    stdout_file: str
    stderr_file: str
    workdir: str
    resubmit_of: str | None  # the job this one was resubmitted from (idempotent jobs)
    message: str
    command: str  # what OAR runs: the script path for `oarsub -S`
    submitted: int | None
    wanted: str  # the resources asked: -l "{type = 'default'}/network_address=1/gpu=2,walltime=..."
    in_array: bool  # submitted with --array (its first job's array_id is its own id, like a plain job)

    @property
    def status(self) -> JobStatus:
        return job_status(self)


def _epoch(value: Any) -> int | None:
    # OAR writes 0 (or leaves the key out) for a time that has not happened yet.
    return int(value) if isinstance(value, (int, float)) and value > 0 else None


def _job(key: str, raw: dict[str, Any]) -> OarJob:
    def text(name: str) -> str:
        value = raw.get(name)
        return "" if value is None else str(value)

    exit_code = raw.get("exit_code")
    resubmit = raw.get("resubmit_job_id")
    walltime = raw.get("walltime")
    return OarJob(
        job_id=str(raw.get("Job_Id", key)),
        array_id=str(raw.get("array_id") or raw.get("Job_Id", key)),
        array_index=int(raw.get("array_index") or 1),
        state=text("state"),
        exit_code=int(exit_code) if isinstance(exit_code, (int, float)) else None,
        start=_epoch(raw.get("startTime")),
        stop=_epoch(raw.get("stopTime")),
        walltime=int(walltime) if isinstance(walltime, (int, float)) else None,
        resources=tuple(int(r) for r in raw.get("assigned_resources") or ()),
        hosts=tuple(str(h) for h in raw.get("assigned_network_address") or ()),
        owner=text("owner"),
        project=text("project"),
        name=text("name"),
        queue=text("queue"),
        types=tuple(str(t) for t in raw.get("types") or ()),
        events=tuple(str(e.get("type", "")) for e in raw.get("events") or () if isinstance(e, dict)),
        stdout_file=text("stdout_file"),
        stderr_file=text("stderr_file"),
        workdir=text("launchingDirectory"),
        resubmit_of=str(resubmit) if resubmit else None,
        message=text("message"),
        command=text("command"),
        submitted=_epoch(raw.get("submissionTime")),
        wanted=text("wanted_resources"),
        in_array=bool(_ARRAY_OPTION.search(text("initial_request"))),
    )


def _json_object(stdout: str, command: str) -> dict[str, Any]:
    if not stdout.strip():
        return {}  # oarstat prints nothing at all when no job matches
    try:
        data = json.loads(stdout)
    except json.JSONDecodeError as exc:
        raise GpuhubError(f"{command} printed something that is not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise GpuhubError(f"{command} printed JSON that is not an object of objects")
    return data


def parse_oarstat(stdout: str) -> dict[str, OarJob]:
    """``oarstat -fJ ...`` -> {job id: job}."""
    return {key: _job(key, raw) for key, raw in _json_object(stdout, "oarstat -J").items()}


def exit_status(raw: int) -> tuple[int, int]:
    """A raw wait status -> (exit code, signal)."""
    return (raw >> 8) & 0xFF, raw & 0x7F


def job_status(job: OarJob) -> JobStatus:
    exit_text = None
    if job.exit_code is not None:
        code, signal = exit_status(job.exit_code)
        exit_text = f"{code}:{signal}"
    if job.state == "Terminated":
        ok = job.exit_code is not None and job.exit_code == 0
        state = State.COMPLETED if ok else State.FAILED
        reason = None if ok else (f"exit code {exit_text}" if exit_text else "no exit code recorded")
    elif job.state == "Error":
        state = next((s for event, s in _ERROR_EVENTS if event in job.events), State.FAILED)
        reason = job.events[-1] if job.events else "Error"
    else:
        state = _OAR_STATES.get(job.state, State.UNKNOWN)
        reason = job.state if state in (State.PENDING, State.UNKNOWN) and job.state != "Waiting" else None
    return JobStatus(
        state=state,
        reason=reason,
        nodes=",".join(job.hosts) or None,
        exit_code=exit_text,
        start=float(job.start) if job.start else None,
        end=float(job.stop) if job.stop and state.finished else None,
    )


@dataclass(frozen=True)
class Resource:
    """One OAR resource (usually a core) and the GPU it belongs to."""

    resource_id: int
    host: str
    state: str  # Alive, Absent, Suspected, Dead
    gpu: str | None  # value of the site's GPU property (a GPU id unique in the cluster)
    model: str | None
    busy: bool = False  # a job holds it
    drain: bool = False  # no new job may start on it


def parse_oarnodes(stdout: str, gpu_property: str = "gpu", model_property: str = "gpumodel") -> dict[int, Resource]:
    """``oarnodes -J`` -> {resource id: resource}."""
    out: dict[int, Resource] = {}
    for key, raw in _json_object(stdout, "oarnodes -J").items():
        rid = int(raw.get("resource_id", key))
        gpu = raw.get(gpu_property)
        model = raw.get(model_property)
        out[rid] = Resource(
            resource_id=rid,
            host=str(raw.get("network_address") or raw.get("host") or ""),
            state=str(raw.get("state") or ""),
            gpu=None if gpu in (None, "", 0) else str(gpu),
            model=None if model in (None, "") else str(model),
            busy=bool(str(raw.get("jobs") or "").strip()),
            drain=str(raw.get("drain") or "NO").upper() == "YES",
        )
    return out


def job_gpus(job: OarJob, resources: dict[int, Resource]) -> tuple[str, ...]:
    """The distinct GPUs (values of the GPU property) among a job's assigned resources."""
    gpus = {resources[r].gpu for r in job.resources if r in resources and resources[r].gpu}
    return tuple(sorted(gpus, key=lambda g: (len(g), g)))


def gpu_seconds(job: OarJob, resources: dict[int, Resource]) -> int:
    """GPUs held x seconds between start and stop (0 while it has not both started and stopped)."""
    if job.start is None or job.stop is None or job.stop < job.start:
        return 0
    return len(job_gpus(job, resources)) * (job.stop - job.start)
