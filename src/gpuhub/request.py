"""What the user asks for, independent of any site."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from gpuhub.limits import MAX_CPUS, MAX_GPUS, MAX_GPUS_PER_NODE, MAX_NAME, MAX_NODES
from gpuhub.requestdata import (
    MAX_WAIT_FOR_GPUS,
    array_indices,
    array_size,
    check_array,
    check_dependency,
    check_shape,
    check_text,
)
from gpuhub.site import Directive, EnvVars, Memory, Token, Walltime

# Re-exported: where they were defined before they moved to the pydantic-free module.
__all__ = ["JobRequest", "array_indices", "array_size"]

Text = Annotated[str, BeforeValidator(check_text)]
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
        None, ge=0, le=MAX_WAIT_FOR_GPUS,
        description="lab servers: wait in the host's queue this many seconds (0 = as long as it takes) "
        "when no GPUs are free, instead of failing",
    )

    @field_validator("array")
    @classmethod
    def _array(cls, value: str | None) -> str | None:
        return value if value is None else check_array(value)

    @field_validator("dependency")
    @classmethod
    def _dependency(cls, value: str | None) -> str | None:
        return value if value is None else check_dependency(value)

    @model_validator(mode="after")
    def _shape(self) -> JobRequest:
        check_shape(self)
        return self
