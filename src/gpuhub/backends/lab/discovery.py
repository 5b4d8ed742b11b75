"""What a lab server's GPUs are doing: the pure parser of one probe (:data:`remote.PROBE`).

The probe prints sections, each opened by a ``#name`` line:

``#gpus``    ``nvidia-smi --query-gpu=index,uuid,name,memory.used,memory.total,utilization.gpu
             --format=csv,noheader,nounits`` (fields joined by ``", "``, MiB and %; a field may
             read ``[N/A]`` or ``[Not Supported]``), then ``#rc N``
``#apps``    ``--query-compute-apps=gpu_uuid,pid,used_gpu_memory`` likewise, then ``#rc N``
``#owners``  ``ps -o pid= -o user=`` for those pids
``#locks``   ``KEY|TOKEN|OWNER|PID|START|EPOCH|NEED|ALIVE`` per lock file
``#queue``   the same per queued job
``#now``     the host's clock (epoch seconds)

A GPU is *held* when a live gpuhub lock names it, *foreign* when something else uses it
(a compute process, or memory/utilisation over the site's thresholds), *reserved* when the
site keeps it out of gpuhub's hands, *unavailable* when nvidia-smi cannot read it, else *free*.
The same rules decide on the host (:data:`remote.DECIDE`); tests hold the two to agreement.
"""

from __future__ import annotations

import re

from gpuhub.errors import GpuhubError
from gpuhub.record import Factory, Record

_UUID = r"(GPU|MIG)-[A-Za-z0-9-]+"  # compiled on first use (re keeps it)
_SOFT = ("[N/A]", "[Not Supported]")  # a value the GPU does not report: not an error


class NoNvidiaSmi(GpuhubError):
    """The host has no nvidia-smi where the site says it is."""


class Gpu(Record):
    index: int
    uuid: str
    name: str
    memory_used: int | None  # MiB; None when not reported
    memory_total: int | None
    utilization: int | None  # %
    broken: bool = False  # nvidia-smi reports an error for it ("[GPU requires reset]"...)

    @property
    def key(self) -> str:
        """The name of its lock files: the UUID, or ``idxN`` for a GPU without one."""
        return self.uuid if re.fullmatch(_UUID, self.uuid) else f"idx{self.index}"


class App(Record):
    gpu_uuid: str
    pid: int
    memory: int | None
    user: str | None


class Entry(Record):
    """A lock file (one GPU of a job) or a queue entry (a waiting job)."""

    key: str  # GPU key for a lock, sequence number for a queue entry
    token: str
    user: str
    pid: int
    since: int  # epoch seconds
    need: int
    alive: bool


class GpuState(Record):
    gpu: Gpu
    state: str  # free | held | foreign | reserved | unavailable
    holder: Entry | None = None  # the lock, when held
    apps: tuple[App, ...] = ()  # processes on it (foreign users when not held)


class Thresholds(Record):
    """When an unlocked GPU counts as used from outside gpuhub, and which GPUs the site keeps."""

    busy_memory_mib: int = 1024
    busy_utilization: int = 10
    reserved: frozenset[int] = frozenset()
    max_gpus_per_user: int | None = None


class Probe(Record, frozen=False):
    host: str
    gpus: list[Gpu] = Factory(list)
    apps: list[App] = Factory(list)
    locks: list[Entry] = Factory(list)
    queue: list[Entry] = Factory(list)
    now: int | None = None
    errors: list[str] = Factory(list)  # nvidia-smi complaints, shown to the user

    def classify(self, limits: Thresholds) -> list[GpuState]:
        held = {e.key: e for e in self.locks if e.alive}
        on: dict[str, list[App]] = {}
        for app in self.apps:
            on.setdefault(app.gpu_uuid, []).append(app)
        out = []
        for gpu in self.gpus:
            apps = tuple(on.get(gpu.uuid, ()))
            if gpu.broken:
                state = "unavailable"
            elif gpu.key in held:
                state = "held"
            elif gpu.index in limits.reserved:
                state = "reserved"
            elif apps or _over(gpu.memory_used, limits.busy_memory_mib) or _over(
                gpu.utilization, limits.busy_utilization
            ):
                state = "foreign"
            else:
                state = "free"
            out.append(GpuState(gpu, state, held.get(gpu.key) if state == "held" else None, apps))
        return out

    def waiting(self) -> list[Entry]:
        return [e for e in self.queue if e.alive]


def _over(value: int | None, limit: int) -> bool:
    return value is not None and value > limit


def _int(text: str) -> int | None:
    text = text.strip()
    try:
        return int(float(text))
    except ValueError:
        return None


def _broken(*values: str) -> bool:
    return any(v.startswith("[") and v not in _SOFT for v in values)


def parse_gpu_line(line: str) -> Gpu | None:
    """One ``--query-gpu`` CSV line (index, uuid, name, memory.used, memory.total, utilization.gpu)."""
    fields = [f.strip() for f in line.split(", ")]
    if len(fields) < 6 or not fields[0].isdigit():
        return None
    index, uuid, name, used, total, util = fields[:6]
    return Gpu(int(index), uuid, name, _int(used), _int(total), _int(util), _broken(uuid, used, total, util))


def parse_app_line(line: str, owners: dict[int, str]) -> App | None:
    """One ``--query-compute-apps`` CSV line (gpu_uuid, pid, used_gpu_memory)."""
    fields = [f.strip() for f in line.split(", ")]
    if len(fields) < 2 or not fields[1].isdigit():
        return None
    pid = int(fields[1])
    return App(fields[0], pid, _int(fields[2]) if len(fields) > 2 else None, owners.get(pid))


def parse_entry(line: str) -> Entry | None:
    parts = line.split("|")
    if len(parts) != 8 or not all(p.isdigit() for p in (parts[3], parts[5], parts[6])):
        return None
    key, token, user, pid, _start, since, need, alive = parts
    return Entry(key, token, user, int(pid), int(since), int(need), alive == "1")


def parse_probe(stdout: str, host: str) -> Probe:
    """The probe's sections -> :class:`Probe`. Raises :class:`NoNvidiaSmi` when it found none."""
    sections: dict[str, list[str]] = {}
    codes: dict[str, int] = {}
    current = None
    probe = Probe(host)
    for raw in stdout.splitlines():
        line = raw.rstrip("\r")
        if line.startswith("#error no-nvidia-smi"):
            raise NoNvidiaSmi(f"no nvidia-smi on {host}: install the NVIDIA driver, or set lab.nvidia_smi")
        if line.startswith("#rc ") and current:
            codes[current] = _int(line[4:]) or 0
        elif line.startswith("#now "):
            probe.now = _int(line[5:])
        elif line.startswith("#") and line[1:].isalpha():
            current = line[1:]
            sections.setdefault(current, [])
        elif current and line.strip():
            sections[current].append(line)
    owners = {}
    for line in sections.get("owners", []):
        pid, _, user = line.strip().partition(" ")
        if pid.isdigit():
            owners[int(pid)] = user.strip()
    for line in sections.get("gpus", []):
        gpu = parse_gpu_line(line)
        if gpu is None:
            probe.errors.append(f"nvidia-smi on {host}: {line.strip()}")
        else:
            probe.gpus.append(gpu)
    for line in sections.get("apps", []):
        app = parse_app_line(line, owners)
        if app is not None:
            probe.apps.append(app)
    probe.locks = [e for e in map(parse_entry, sections.get("locks", [])) if e]
    probe.queue = [e for e in map(parse_entry, sections.get("queue", [])) if e]
    if codes.get("gpus") and not probe.gpus:
        detail = "; ".join(probe.errors) or f"exit {codes['gpus']}"
        raise GpuhubError(f"nvidia-smi failed on {host}: {detail}")
    return probe
