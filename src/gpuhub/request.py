"""What the user asks for, independent of any site."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from gpuhub.site import Directive, EnvVars, Memory, Token, Walltime

ARRAY_RE = re.compile(r"^\d+(?:-\d+)?(?::\d+)?(?:,\d+(?:-\d+)?(?::\d+)?)*(?:%\d+)?$")
DEPENDENCY_RE = re.compile(
    r"^(?:(?:after|afterany|afterok|afternotok|aftercorr):\d+(?:_\d+)?(?::\d+(?:_\d+)?)*|singleton)$"
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
    name: Text = "gpuhub"
    gpus: int | None = Field(None, ge=0, description="total GPUs")
    nodes: int | None = Field(None, ge=1)
    gpus_per_node: int | None = Field(None, ge=0)
    gpu_type: str | None = Field(None, description="GPU model or class (a100, v100, any...)")
    gpu_mem: Memory | None = Field(None, description="least memory of each GPU")
    cpus_per_gpu: int | None = Field(None, ge=1)
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
    partition: str | None = None
    qos: Token | None = None
    directives: list[Directive] = Field(default_factory=list, description="extra scheduler options")

    @field_validator("array")
    @classmethod
    def _array(cls, value: str | None) -> str | None:
        if value is not None and not ARRAY_RE.fullmatch(value):
            raise ValueError(f"array {value!r} is not understood; examples: 0-49, 0-999%20, 1,3,5-7")
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
                    f"dependency {value!r} is not understood; examples: afterok:123, afterany:12:13, singleton"
                )
        return value

    @model_validator(mode="after")
    def _shape(self) -> JobRequest:
        if bool(self.command) == (self.script is not None):
            raise ValueError("give either a command (after --) or a script, not both and not neither")
        shape = (self.gpus, self.nodes, self.gpus_per_node)
        if None not in shape and self.gpus != self.nodes * self.gpus_per_node:  # type: ignore[operator]
            raise ValueError(
                f"gpus={self.gpus} disagrees with nodes={self.nodes} x gpus_per_node={self.gpus_per_node}"
            )
        return self


def array_size(spec: str) -> int:
    """Number of tasks an array spec expands to (``0-49%5`` -> 50)."""
    body = spec.split("%", 1)[0]
    total = 0
    for chunk in body.split(","):
        rng, _, step = chunk.partition(":")
        lo, _, hi = rng.partition("-")
        start, stop = int(lo), int(hi or lo)
        total += len(range(start, stop + 1, int(step or 1)))
    return total
