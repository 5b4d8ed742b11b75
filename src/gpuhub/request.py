"""What the user asks for, independent of any site."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from gpuhub.errors import shown
from gpuhub.limits import MAX_ARRAY_INDEX, MAX_ARRAY_TASKS, MAX_CPUS, MAX_GPUS, MAX_GPUS_PER_NODE, MAX_NAME, MAX_NODES
from gpuhub.site import Directive, EnvVars, Memory, Token, Walltime

ARRAY_RE = re.compile(r"^\d+(?:-\d+)?(?::\d+)?(?:,\d+(?:-\d+)?(?::\d+)?)*(?:%\d+)?$", re.ASCII)
DEPENDENCY_RE = re.compile(
    r"^(?:(?:after|afterany|afterok|afternotok|aftercorr):\d+(?:_\d+)?(?::\d+(?:_\d+)?)*|singleton)$", re.ASCII
)


def _no_nul(value: str) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    if "\0" in value:
        raise ValueError("NUL bytes cannot be passed to a shell")
    return value


Text = Annotated[str, BeforeValidator(_no_nul)]
Launcher = Literal["none", "torchrun", "srun"]
LAUNCHER_HELP = "none (the command as given), torchrun (one torchrun per node), srun (one task per GPU)"


class JobRequest(BaseModel):
    """A job, described once; :func:`gpuhub.plan.plan` fits it to a site.

    GPUs are given either as a total (``gpus``) or as ``nodes`` x ``gpus_per_node``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: list[Text] = Field(default_factory=list, description="program and arguments, run as given")
    script: Text | None = Field(None, description="shell script text run with bash instead of a command")
    name: Text = Field("gpuhub", max_length=MAX_NAME)
    gpus: int | None = Field(None, ge=0, le=MAX_GPUS, description="total GPUs")
    nodes: int | None = Field(None, ge=1, le=MAX_NODES)
    gpus_per_node: int | None = Field(None, ge=0, le=MAX_GPUS_PER_NODE)
    gpu_type: str | None = Field(None, max_length=MAX_NAME, description="GPU model or class (a100, v100, any...)")
    gpu_mem: Memory | None = Field(None, description="least memory of each GPU")
    cpus_per_gpu: int | None = Field(None, ge=1, le=MAX_CPUS)
    mem: Memory | None = Field(None, description="memory per node")
    time: Walltime | None = None
    launcher: Launcher | None = Field(None, description=LAUNCHER_HELP + "; default: the site's, else none")
    requeue: bool = Field(
        False, description="on Slurm: signal the job (USR2) before its time limit, let it checkpoint, requeue it"
    )
    env: EnvVars = Field(default_factory=dict)
    workdir: Text | None = None
    array: str | None = Field(None, description="array indices, as sbatch --array: 0-49%10, 1,3,5")
    dependency: str | None = Field(None, description="afterok:123[:456], afterany:..., singleton")
    project: Token | None = None
    account: Token | None = None
    partition: str | None = Field(None, max_length=MAX_NAME)
    qos: Token | None = None
    directives: list[Directive] = Field(default_factory=list, description="extra scheduler options")
    wait_for_gpus: int | None = Field(
        None, ge=0, le=30 * 86400,
        description="lab servers: wait in the host's queue this many seconds (0 = as long as it takes) "
        "when no GPUs are free, instead of failing",
    )

    @field_validator("array")
    @classmethod
    def _array(cls, value: str | None) -> str | None:
        if value is not None:
            if not ARRAY_RE.fullmatch(value):
                raise ValueError(f"array {shown(value)} is not understood; examples: 0-49, 0-999%20, 1,3,5-7")
            array_size(value)  # bounds and order of every range
        return value

    @field_validator("dependency")
    @classmethod
    def _dependency(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = value.split(",")
        for part in parts:
            if not DEPENDENCY_RE.fullmatch(part):
                raise ValueError(
                    f"dependency {shown(value)} is not understood; examples: afterok:123, afterany:12:13, singleton"
                )
        return value

    @model_validator(mode="after")
    def _shape(self) -> JobRequest:
        if bool(self.command) == (self.script is not None):
            raise ValueError("give either a command (after --) or a script, not both and not neither")
        if self.gpu_type is not None and 0 in (self.gpus, self.gpus_per_node):
            raise ValueError(
                f"gpus=0 contradicts gpu_type={shown(self.gpu_type)}: a GPU type needs at least one GPU "
                "(drop the GPU type for a CPU-only job)"
            )
        shape = (self.gpus, self.nodes, self.gpus_per_node)
        if None not in shape and self.gpus != self.nodes * self.gpus_per_node:  # type: ignore[operator]
            raise ValueError(
                f"gpus={self.gpus} disagrees with nodes={self.nodes} x gpus_per_node={self.gpus_per_node}"
            )
        return self


def array_indices(spec: str) -> tuple[list[int], int | None]:
    """Indices of an array spec and its limit of tasks at once: ``0-4:2,9%3`` -> ([0, 2, 4, 9], 3)."""
    body, _, throttle = spec.partition("%")
    indices: list[int] = []
    for chunk in body.split(","):
        rng, _, step = chunk.partition(":")
        lo, _, hi = rng.partition("-")
        indices.extend(range(int(lo), int(hi or lo) + 1, int(step or 1)))
    return indices, int(throttle) if throttle else None


def array_size(spec: str) -> int:
    """Number of tasks an array spec expands to (``0-49%5`` -> 50); ValueError when out of bounds."""
    body, _, throttle = spec.partition("%")
    if throttle and not 1 <= _index(throttle, spec) <= MAX_ARRAY_TASKS:
        raise ValueError(f"array {shown(spec)}: the limit after '%' must be 1 to {MAX_ARRAY_TASKS}")
    total = 0
    for chunk in body.split(","):
        rng, _, step = chunk.partition(":")
        lo, _, hi = rng.partition("-")
        start, stop, stride = _index(lo, spec), _index(hi or lo, spec), _index(step or "1", spec)
        if stride < 1:
            raise ValueError(f"array {shown(spec)}: the step after ':' must be at least 1")
        if start > stop:
            raise ValueError(f"array {shown(spec)}: range {start}-{stop} runs backwards; write {stop}-{start}")
        total += len(range(start, stop + 1, stride))
    if total > MAX_ARRAY_TASKS:
        raise ValueError(f"array {shown(spec)} has {total} tasks; at most {MAX_ARRAY_TASKS}")
    return total


def _index(text: str, spec: str) -> int:
    if len(text) > 12 or int(text) > MAX_ARRAY_INDEX:
        raise ValueError(f"array {shown(spec)}: indices go from 0 to {MAX_ARRAY_INDEX}")
    return int(text)
