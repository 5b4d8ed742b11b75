"""The broker's settings: preferred sites, GPU equivalence classes, weights, allocations left.

Layers, lowest first: the shipped ``defaults.yaml`` < the system config dir < the user config dir
(``broker.yaml`` in each). Mappings merge key by key; a list given by a higher layer replaces it.

The merged files are validated by :class:`gpuhub.broker.config_model.BrokerConfig` (pydantic),
and the result is kept in the user cache directory as a plain :class:`BrokerSettings`, with the
same trust and keys as the validated-site cache (:mod:`gpuhub.sitecache`): as long as no
``broker.yaml`` and no gpuhub module changed, commands read neither YAML nor pydantic.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuhub import __version__, sitecache
from gpuhub.errors import ConfigError
from gpuhub.paths import system_sites_dir, user_config_dir
from gpuhub.sitedata import Factory, Plain

if TYPE_CHECKING:
    from gpuhub.broker.config_model import BrokerConfig

SHIPPED = Path(__file__).with_name("defaults.yaml")
ANY = "any"
FORMAT = 1


class BrokerMethods:
    """What :class:`BrokerSettings` and the model compute from their fields."""

    __slots__ = ()
    if TYPE_CHECKING:  # not at run time: pydantic would take them for fields
        gpu_classes: dict[str, list[str]]
        prefer: list[str]

    def models_for(self, gpu_type: str) -> frozenset[str] | None:
        """The gpu_model names ``--gpu-type gpu_type`` accepts; None means any GPU."""
        name = gpu_type.strip().lower()
        if name == ANY:
            return None
        return frozenset(m.lower() for m in self.gpu_classes.get(name, [name]))

    def preference(self, site: str) -> int | None:
        """0 for the most preferred site, None for a site not listed."""
        return self.prefer.index(site) if site in self.prefer else None


class BrokerSettings(Plain, BrokerMethods):
    """The validated settings; mirrors ``BrokerConfig`` (``tests/test_broker_rank.py`` checks it)."""

    sites: list[str] = Factory(list)
    prefer: list[str] = Factory(list)
    gpu_classes: dict[str, list[str]] = Factory(dict)
    normalization: dict[str, float] = Factory(dict)
    allocations: dict[str, float] = Factory(dict)
    cache_ttl: float = 30.0
    probe_timeout: float = 10.0


def __getattr__(name: str) -> Any:
    if name == "BrokerConfig":  # the model, loaded only by those who ask for it
        from gpuhub.broker.config_model import BrokerConfig

        return BrokerConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def config_files() -> list[Path]:
    return [SHIPPED, system_sites_dir().parent / "broker.yaml", user_config_dir() / "broker.yaml"]


def _stamp(paths: list[Path]) -> tuple[Any, ...]:
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append((str(path),))
            continue
        out.append((str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    return (FORMAT, __version__, sys.version, sitecache.code_stamp(), tuple(out))


def load_config(extra_prefer: list[str] | None = None) -> BrokerSettings:
    """The merged settings; ``extra_prefer`` (from ``--prefer``) replaces the configured order."""
    files = config_files()
    key = _stamp(files)
    cache = sitecache.cache_dir() / f"broker-{sitecache.file_tag(repr([str(p) for p in files]))}.pickle"
    stored = sitecache.read_private(cache)
    if isinstance(stored, dict) and stored.get("key") == key and isinstance(stored.get("settings"), BrokerSettings):
        settings = stored["settings"]
    else:
        settings = _validated(files)
        sitecache.write_private(cache, {"key": key, "settings": settings})
    if extra_prefer:
        settings = settings.model_copy(update={"prefer": list(extra_prefer)})
    return settings


def _validated(files: list[Path]) -> BrokerSettings:
    from pydantic import ValidationError

    from gpuhub.broker.config_model import BrokerConfig
    from gpuhub.registry import deep_merge, read_yaml

    merged: dict = {}
    used: list[Path] = []
    for path in files:
        if path.is_file():
            data = read_yaml(path)
            merged = deep_merge(merged, data)
            used.append(path)
    try:
        model = BrokerConfig.model_validate(merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top)"
        names = ", ".join(str(p) for p in used[1:]) or str(SHIPPED)
        raise ConfigError(f"broker settings ({names}): {where}: {err['msg']}") from None
    return plain(model)


def plain(model: BrokerConfig) -> BrokerSettings:
    return BrokerSettings(**{name: getattr(model, name) for name in type(model).model_fields},
                          model_fields_set=frozenset(model.model_fields_set))
