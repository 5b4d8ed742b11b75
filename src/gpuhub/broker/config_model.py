"""The broker settings' pydantic model: what ``broker.yaml`` may hold, and its error messages.

Commands read the validated settings as :class:`gpuhub.broker.config.BrokerSettings`, kept
between runs, so that they need not import pydantic.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from gpuhub.broker.config import BrokerMethods
from gpuhub.site import GpuHourFactors, Strict


class BrokerConfig(Strict, BrokerMethods):
    sites: list[str] = Field(default_factory=list, description="sites considered by default (empty: all)")
    prefer: list[str] = Field(default_factory=list, description="site names, most preferred first")
    gpu_classes: dict[str, list[str]] = Field(
        default_factory=dict, description="--gpu-type NAME -> the gpu_model names that satisfy it"
    )
    normalization: GpuHourFactors = Field(default_factory=dict, description="GPU-hour weight per gpu_model")
    allocations: dict[str, float] = Field(default_factory=dict, description="normalised GPU hours left per site")
    cache_ttl: float = Field(30.0, ge=0, le=3600)
    probe_timeout: float = Field(10.0, gt=0, le=600)

    @field_validator("allocations")
    @classmethod
    def _not_negative(cls, value: dict[str, float]) -> dict[str, float]:
        for site, hours in value.items():
            if not 0 <= hours <= 1e9:  # also false for NaN
                raise ValueError(f"allocations.{site}: GPU hours left must be from 0 to 1e9, got {hours}")
        return value
