"""Where gpuhub finds its shipped data and keeps the user's files.

Shipped site configs and templates live at the top of a checkout (``site_configs/``,
``job_templates/``); an installed wheel carries them under ``gpuhub/_data/``.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def shipped_dir(kind: str) -> Path:
    """``site_configs`` or ``job_templates``: the wheel's copy, else the checkout's."""
    packaged = _PACKAGE / "_data" / kind
    if packaged.is_dir():
        return packaged
    return _PACKAGE.parent.parent / kind


def _platform() -> object:
    import platformdirs

    return platformdirs.PlatformDirs("gpuhub", appauthor=False, multipath=False)


def system_sites_dir() -> Path:
    """Admins' site files for every user of the machine (``/etc/xdg/gpuhub/sites`` on Linux)."""
    override = os.environ.get("GPUHUB_SYSTEM_CONFIG_DIR")
    base = Path(override) if override else Path(_platform().site_config_dir)  # type: ignore[attr-defined]
    return base / "sites"


def user_config_dir() -> Path:
    override = os.environ.get("GPUHUB_CONFIG_DIR")
    return Path(override) if override else Path(_platform().user_config_dir)  # type: ignore[attr-defined]


def user_sites_dir() -> Path:
    """The user's own site files and overrides (``~/.config/gpuhub/sites`` on Linux)."""
    return user_config_dir() / "sites"


def user_data_dir() -> Path:
    override = os.environ.get("GPUHUB_DATA_DIR")
    return Path(override) if override else Path(_platform().user_data_dir)  # type: ignore[attr-defined]


def user_cache_dir() -> Path:
    """Files gpuhub can always rebuild (``~/.cache/gpuhub`` on Linux): validated sites, live site readings."""
    override = os.environ.get("GPUHUB_CACHE_DIR")
    return Path(override) if override else Path(_platform().user_cache_dir)  # type: ignore[attr-defined]
