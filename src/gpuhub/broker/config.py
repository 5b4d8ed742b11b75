"""The broker's settings: preferred sites, GPU equivalence classes, weights, allocations left.

Layers, lowest first: the shipped ``defaults.yaml`` < the system config dir < the user config dir
(``broker.yaml`` in each). Mappings merge key by key; a list given by a higher layer replaces it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError, field_validator

from gpuhub.errors import ConfigError
from gpuhub.paths import system_sites_dir, user_config_dir
from gpuhub.registry import deep_merge, read_yaml
from gpuhub.site import GpuHourFactors, Strict

SHIPPED = Path(__file__).with_name("defaults.yaml")
ANY = "any"


class BrokerConfig(Strict):
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

    def models_for(self, gpu_type: str) -> frozenset[str] | None:
        """The gpu_model names ``--gpu-type gpu_type`` accepts; None means any GPU."""
        name = gpu_type.strip().lower()
        if name == ANY:
            return None
        return frozenset(m.lower() for m in self.gpu_classes.get(name, [name]))

    def preference(self, site: str) -> int | None:
        """0 for the most preferred site, None for a site not listed."""
        return self.prefer.index(site) if site in self.prefer else None


def config_files() -> list[Path]:
    return [SHIPPED, system_sites_dir().parent / "broker.yaml", user_config_dir() / "broker.yaml"]


def load_config(extra_prefer: list[str] | None = None) -> BrokerConfig:
    """The merged settings; ``extra_prefer`` (from ``--prefer``) replaces the configured order."""
    merged: dict = {}
    used: list[Path] = []
    for path in config_files():
        if path.is_file():
            data = read_yaml(path)
            merged = deep_merge(merged, data)
            used.append(path)
    if extra_prefer:
        merged["prefer"] = extra_prefer
    try:
        return BrokerConfig.model_validate(merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top)"
        files = ", ".join(str(p) for p in used[1:]) or str(SHIPPED)
        raise ConfigError(f"broker settings ({files}): {where}: {err['msg']}") from None
