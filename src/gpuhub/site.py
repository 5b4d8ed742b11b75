"""The site model: everything that differs between sites is data, validated here.

A site file (``site_configs/NAME.yaml``) maps one-to-one onto :class:`Site`. Unknown keys are
rejected so a typo never silently does nothing.
"""

from __future__ import annotations

import re
import string
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from gpuhub.errors import shown
from gpuhub.limits import (
    MAX_CPUS,
    MAX_GPU_MEMORY_GB,
    MAX_GPUS_PER_NODE,
    MAX_NODES,
    MAX_NORMALIZATION,
    MAX_SITE_NAME,
    MAX_SSH_PERSIST,
    MAX_TIMEOUT,
)
from gpuhub.sitedata import LabHostMethods, SiteMethods
from gpuhub.units import (
    MEMORY_HELP,
    WALLTIME_HELP,
    format_memory,
    format_walltime,
    parse_memory,
    parse_walltime,
)
from gpuhub.values import TOKEN_HELP, TOKEN_RE
from gpuhub.values import check_directive as _check_directive
from gpuhub.values import check_env as _check_env
from gpuhub.values import check_shell_line as _check_shell_line
from gpuhub.values import check_token as _check_token

Walltime = Annotated[
    int,
    BeforeValidator(parse_walltime),
    PlainSerializer(format_walltime, return_type=str),
    WithJsonSchema({"type": "string", "description": f"walltime: {WALLTIME_HELP}", "examples": ["20:00:00"]}),
]
Memory = Annotated[
    int,
    BeforeValidator(parse_memory),
    PlainSerializer(format_memory, return_type=str),
    WithJsonSchema({"type": "string", "description": f"memory: {MEMORY_HELP}", "examples": ["64G"]}),
]
Token = Annotated[str, BeforeValidator(_check_token)]
Directive = Annotated[str, BeforeValidator(_check_directive)]
ShellLine = Annotated[str, BeforeValidator(_check_shell_line)]
EnvVars = Annotated[dict[str, str], AfterValidator(_check_env)]


class Strict(BaseModel):
    # No NaN or infinity anywhere: a `.nan` weight or timeout is always a mistake.
    # defer_build: a site from the validated-site cache never needs its validators built.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False,
                              defer_build=True)


class QoS(Strict):
    """A QoS the site picks by walltime: the smallest one whose ``max_walltime`` covers the job."""

    name: Token
    max_walltime: Walltime | None = None
    description: str | None = None


class Partition(Strict):
    """One kind of GPU node a job can ask for (a Slurm partition/constraint pair, an HTCondor pool...)."""

    description: str | None = None
    partition: Token | None = Field(None, description="scheduler partition name; null = the site's default")
    gpu_model: Annotated[str, BeforeValidator(_check_token)] | None = Field(
        None, description="short lower-case GPU model name used by --gpu-type, accounts and reports (a100)"
    )
    gres_type: Token | None = Field(None, description="typed GRES name when the site wants gpu:TYPE:N")
    constraint: str | None = Field(
        None, description="Slurm --constraint expression, or HTCondor requirements expression"
    )
    gpu_memory_gb: float | None = Field(
        None, gt=0, le=MAX_GPU_MEMORY_GB,
        description="memory of one GPU; on HTCondor also the least GPU memory a job is matched to",
    )
    gpu_capability: float | None = Field(
        None, gt=0, le=100, description="HTCondor: the least CUDA compute capability a job is matched to (8.0)"
    )
    gpus_per_node: int = Field(
        ..., ge=0, le=MAX_GPUS_PER_NODE, description="GPUs in one node (0 for a CPU-only partition)"
    )
    cpus_per_gpu: int | None = Field(None, ge=1, le=MAX_CPUS, description="CPU cores that go with each GPU")
    cpus_per_node: int | None = Field(None, ge=1, le=MAX_CPUS)
    memory_per_node: Memory | None = None
    max_walltime: Walltime | None = None
    default_walltime: Walltime | None = None
    max_nodes: int | None = Field(None, ge=1, le=MAX_NODES)
    exclusive: bool = Field(False, description="the partition hands out whole nodes")
    qos: list[QoS] = Field(default_factory=list, description="QoS chosen by walltime, smallest first")
    directives: list[Directive] = Field(default_factory=list)
    setup: list[ShellLine] = Field(default_factory=list)
    env: EnvVars = Field(default_factory=dict)

    @field_validator("constraint")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or any(c in value for c in "\n\r\0")):
            raise ValueError("constraint must be a non-empty single line")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Partition:
        if self.default_walltime and self.max_walltime and self.default_walltime > self.max_walltime:
            raise ValueError("default_walltime is longer than max_walltime")
        names = [q.name for q in self.qos]
        if len(set(names)) != len(names):
            raise ValueError(f"qos names repeat: {names}")
        return self


class Connection(Strict):
    """How to reach the site's login node. Values left empty come from ``~/.ssh/config``."""

    host: str = Field(..., min_length=1, description="login host name (or an alias of ~/.ssh/config)")
    port: int | None = Field(None, ge=1, le=65535)
    user: str | None = None
    identity_file: str | None = None
    known_hosts: str | None = Field(None, description="known_hosts file to verify the host key against")
    proxy_jump: str | None = Field(None, description="jump host, as ssh -J: [user@]host[:port][,...]")
    keepalive_interval: int = Field(30, ge=0, le=int(MAX_TIMEOUT), description="seconds between keepalives (0 = off)")
    connect_timeout: float = Field(20.0, gt=0, le=MAX_TIMEOUT)
    host_key_fingerprints: dict[str, str] = Field(
        default_factory=dict, description="published SHA256 fingerprints, by key type (for `sites trust`)"
    )
    ip_restricted: bool = Field(False, description="the site only admits registered client addresses")
    persist: int = Field(
        600, ge=0, le=MAX_SSH_PERSIST,
        description="seconds the SSH connection stays open after a command, for the next gpuhub commands (0 = close)",
    )

    @field_validator("host", "user", "proxy_jump")
    @classmethod
    def _no_blanks(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c.isspace() for c in value)):
            raise ValueError(f"{shown(value)} must be a non-empty word without blanks")
        return value


ACCOUNT_FIELDS = ("project", "user", "gpu_model", "partition")


class Account(Strict):
    """How the scheduler account is written from the user's project."""

    format: str | None = Field(
        None, description="Python format string over {project}, {user}, {gpu_model}, {partition}"
    )
    required: bool = Field(False, description="jobs without an account are refused by the site")

    @field_validator("format")
    @classmethod
    def _known_fields(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
        except ValueError as exc:
            raise ValueError(f"account format {shown(value)}: {exc}") from None
        unknown = [f for f in fields if f not in ACCOUNT_FIELDS]
        if unknown:
            raise ValueError(f"account format uses {unknown}; allowed fields: {', '.join(ACCOUNT_FIELDS)}")
        return value


class Network(Strict):
    """How ranks talk to each other: interface names and NCCL/Gloo variables, exported into jobs."""

    interface: Annotated[str, BeforeValidator(_check_token)] | None = Field(
        None, description="network interface for NCCL and Gloo (NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME)"
    )
    env: EnvVars = Field(default_factory=dict, description="NCCL_* and similar variables")


class Defaults(Strict):
    """Default job options; the natural place for a user's own project or account."""

    project: Token | None = None
    account: Token | None = None
    partition: str | None = None
    qos: Token | None = None
    time: Walltime | None = None
    gpu_type: str | None = None
    cpus_per_gpu: int | None = Field(None, ge=1, le=MAX_CPUS)
    mem: Memory | None = None
    launcher: Literal["none", "torchrun", "srun"] | None = None


def _check_factors(value: dict[str, float]) -> dict[str, float]:
    for model, factor in value.items():
        if not 0 < factor <= MAX_NORMALIZATION:  # also false for NaN
            raise ValueError(
                f"normalization factor for {shown(model)} must be a number above 0 and at most "
                f"{MAX_NORMALIZATION:g}, got {shown(factor)}"
            )
    return value


GpuHourFactors = Annotated[dict[str, float], AfterValidator(_check_factors)]


class Accounting(Strict):
    normalization: GpuHourFactors = Field(
        default_factory=dict, description="GPU-hour weight per gpu_model (a100: 2.0 = one A100 hour counts 2)"
    )
    source: Literal["sacct", "condor_history", "oarstat", "ledger"] | None = None
    site_tools: list[str] = Field(default_factory=list, description="the site's own accounting commands")


class OarSettings(Strict):
    """Names of an OAR cluster's resource properties (GRICAD's; Grid'5000 spells the model gpu_model)."""

    gpu_property: Token = Field("gpu", description="property whose distinct values count a job's GPUs (-l .../gpu=N)")
    model_property: Token = Field("gpumodel", description="property naming each GPU's model")


HOST_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def _check_host_path(value: str) -> str:
    if not isinstance(value, str) or not value.startswith("/") or any(c in value for c in "\n\r\0"):
        raise ValueError(f"{value!r} must be an absolute path on the host (shared by every user, so no '~')")
    return value


HostPath = Annotated[str, BeforeValidator(_check_host_path)]


class LabHost(Strict, LabHostMethods):
    """One GPU server of a pool. A bare string in ``lab.hosts`` is a host of that name."""

    name: str = Field(..., description="short name shown in job ids and `gpuhub gpus` (gpu1)")
    host: str | None = Field(None, description="address to connect to; default: the name")
    port: int | None = Field(None, ge=1, le=65535)
    lock_dir: HostPath | None = Field(None, description="overrides lab.lock_dir on this host")
    nvidia_smi: str | None = Field(None, description="overrides lab.nvidia_smi on this host")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not HOST_NAME_RE.fullmatch(value):
            raise ValueError(f"host name {value!r}: use letters, digits, '.', '_' and '-' (at most 63)")
        return value

    @field_validator("host", "nvidia_smi")
    @classmethod
    def _word(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c.isspace() or c == "\0" for c in value)):
            raise ValueError(f"{value!r} must be a non-empty word without blanks")
        return value


class Lab(Strict):
    """GPU sharing on servers without a scheduler (``ssh`` sites): locks, queue, policy, pool."""

    hosts: list[LabHost] = Field(
        default_factory=list, max_length=256,
        description="the pool (names or {name, host, port, lock_dir, nvidia_smi}); empty: connection.host alone")
    lock_dir: HostPath = Field(
        "/var/tmp/gpuhub-locks", description="shared lock directory on each host (created 1777, sticky)")
    nvidia_smi: str = Field("nvidia-smi", description="nvidia-smi command or absolute path on the hosts")
    busy_memory_mib: int = Field(
        1024, ge=0, le=10_000_000, description="an unlocked GPU using more memory (MiB) counts as used outside gpuhub")
    busy_utilization: int = Field(
        10, ge=0, le=100, description="an unlocked GPU busier than this (%) counts as used outside gpuhub")
    max_gpus_per_user: int | None = Field(None, ge=1, le=1024, description="GPUs one user may hold on a host")
    max_walltime: Walltime | None = Field(None, description="longest job; jobs are stopped at their walltime")
    reserved_gpus: list[Annotated[int, Field(ge=0, le=1023)]] = Field(
        default_factory=list, description="GPU indices gpuhub never hands out (kept for interactive use)")
    kill_grace: int = Field(30, ge=1, le=3600, description="seconds between TERM and KILL at the walltime")
    queue_poll: float = Field(2.0, ge=0.1, le=60, description="seconds between two looks of a queued job")

    @field_validator("nvidia_smi")
    @classmethod
    def _command(cls, value: str) -> str:
        if not value or any(c.isspace() or c == "\0" for c in value):
            raise ValueError(f"nvidia_smi {value!r} must be a command name or path without blanks")
        return value

    @model_validator(mode="after")
    def _unique(self) -> Lab:
        names = [h.name for h in self.hosts]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"hosts repeat: {', '.join(repeated)}")
        if len(set(self.reserved_gpus)) != len(self.reserved_gpus):
            raise ValueError(f"reserved_gpus repeat: {self.reserved_gpus}")
        return self


# One name per backend of gpuhub.backends.BACKENDS (a new scheduler adds its name here too).
class HTCondorSettings(Strict):
    """What differs between HTCondor pools."""

    gpu_requirements: Literal["gpus_minimum", "require_gpus"] = Field(
        "gpus_minimum",
        description="how GPU memory/capability are asked: gpus_minimum_* submit commands (HTCondor 23.5 and "
        "later) or one require_gpus expression (older pools)",
    )


Scheduler = Literal["slurm", "htcondor", "oar", "ssh", "local"]


class Site(Strict, SiteMethods):
    """A place jobs run: a Slurm or HTCondor cluster, a lab GPU server, or this machine."""

    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=MAX_SITE_NAME)
    description: str = ""
    scheduler: Scheduler
    connection: Connection | None = None
    account: Account = Field(default_factory=Account)
    defaults: Defaults = Field(default_factory=Defaults)
    gpu_request: Literal["gres", "gpus-per-node"] = Field(
        "gres", description="how GPUs are asked on Slurm: --gres=gpu[:type]:N or --gpus-per-node"
    )
    directives: list[Directive] = Field(default_factory=list, description="added to every job")
    setup: list[ShellLine] = Field(default_factory=list, description="shell lines run before the command")
    env: EnvVars = Field(default_factory=dict)
    network: Network = Field(default_factory=Network)
    partitions: dict[str, Partition] = Field(..., min_length=1)
    default_partition: str | None = None
    log_dir: str = Field(
        "gpuhub-logs", description="where job output goes; relative paths are relative to the submit directory"
    )
    template: str | None = Field(None, description="template file replacing the scheduler's default")
    accounting: Accounting = Field(default_factory=Accounting)
    htcondor: HTCondorSettings = Field(default_factory=HTCondorSettings, description="HTCondor sites only")
    oar: OarSettings = Field(default_factory=OarSettings, description="OAR sites only: resource property names")
    lab: Lab = Field(default_factory=Lab, description="lab GPU servers (ssh sites): GPU locks, policy, pool")
    unverified: list[str] = Field(
        default_factory=list, description="dotted paths of values not yet confirmed on the live site"
    )
    sources: list[str] = Field(default_factory=list, description="where the values come from")

    @field_validator("log_dir")
    @classmethod
    def _log_dir(cls, value: str) -> str:
        if not value or any(c in value for c in "\n\r\0 %") or value.startswith("~"):
            raise ValueError("log_dir must be a path without blanks, '%' or '~' (use a relative path)")
        if ".." in value.split("/"):
            raise ValueError("log_dir must not climb out with '..'; give a path below the submit directory")
        return value

    @field_validator("template")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is not None and (
            not value or value.startswith("/") or ".." in value.split("/") or any(c in value for c in "\n\r\0\\")
        ):
            raise ValueError("template must be a file name next to the site file (no '/' at the start, no '..')")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Site:
        # Whether a connection is needed, and other scheduler-specific rules, are the backend's
        # `check_site`, run by the registry after this model is built.
        if self.default_partition is not None and self.default_partition not in self.partitions:
            raise ValueError(
                f"default_partition {shown(self.default_partition)} is not one of: {', '.join(self.partitions)}"
            )
        for key in self.partitions:
            if not TOKEN_RE.fullmatch(key):
                raise ValueError(f"partition key {shown(key)}: use {TOKEN_HELP}")
        for path in self.unverified:
            if _lookup(self, path) is _MISSING:
                raise ValueError(f"unverified entry {shown(path)} names no field of this site")
        return self


_MISSING = object()


def _lookup(obj: Any, dotted: str) -> Any:
    current = obj
    for part in dotted.split("."):
        if isinstance(current, BaseModel):
            if part not in type(current).model_fields:
                return _MISSING
            current = getattr(current, part)
        elif isinstance(current, dict):
            if part not in current:
                return _MISSING
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return _MISSING
    return current
