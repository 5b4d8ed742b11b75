"""Where gpuhub finds its shipped data and keeps the user's files.

Shipped site configs and templates live at the top of a checkout (``site_configs/``,
``job_templates/``); an installed wheel carries them under ``gpuhub/_data/``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def shipped_dir(kind: str) -> Path:
    """``site_configs`` or ``job_templates``: the wheel's copy, else the checkout's."""
    packaged = _PACKAGE / "_data" / kind
    if packaged.is_dir():
        return packaged
    return _PACKAGE.parent.parent / kind


# XDG variable and default of each directory on Linux: what platformdirs gives there, without
# importing it at every start (its modules cost more than the rest of a `gpuhub --help`).
_XDG = {
    "user_config_dir": ("XDG_CONFIG_HOME", "~/.config"),
    "user_data_dir": ("XDG_DATA_HOME", "~/.local/share"),
    "user_cache_dir": ("XDG_CACHE_HOME", "~/.cache"),
}


def _platform_dir(name: str) -> Path:
    """``~/.config/gpuhub`` and the like: the XDG Base Directory rules on Linux, where a variable
    holding a relative path is ignored; elsewhere (macOS, Windows) platformdirs' answer."""
    if sys.platform != "linux":
        import platformdirs

        dirs = platformdirs.PlatformDirs("gpuhub", appauthor=False, multipath=False)
        return Path(getattr(dirs, name))
    if name == "site_config_dir":  # the first directory of $XDG_CONFIG_DIRS
        listed = [p for p in os.environ.get("XDG_CONFIG_DIRS", "").split(os.pathsep) if os.path.isabs(p)]
        return Path(listed[0] if listed else "/etc/xdg") / "gpuhub"
    variable, default = _XDG[name]
    value = os.environ.get(variable, "")
    return (Path(value) if os.path.isabs(value) else Path(_home(), default.removeprefix("~/"))) / "gpuhub"


def _home() -> str:
    """$HOME when it is an absolute path, else the user's home from the password database."""
    home = os.environ.get("HOME", "")
    if os.path.isabs(home):
        return home
    import pwd

    return pwd.getpwuid(os.getuid()).pw_dir


def system_sites_dir() -> Path:
    """Admins' site files for every user of the machine (``/etc/xdg/gpuhub/sites`` on Linux)."""
    override = os.environ.get("GPUHUB_SYSTEM_CONFIG_DIR")
    return (Path(override) if override else _platform_dir("site_config_dir")) / "sites"


def user_config_dir() -> Path:
    override = os.environ.get("GPUHUB_CONFIG_DIR")
    return Path(override) if override else _platform_dir("user_config_dir")


def user_sites_dir() -> Path:
    """The user's own site files and overrides (``~/.config/gpuhub/sites`` on Linux)."""
    return user_config_dir() / "sites"


def user_data_dir() -> Path:
    override = os.environ.get("GPUHUB_DATA_DIR")
    return Path(override) if override else _platform_dir("user_data_dir")


def user_cache_dir() -> Path:
    """Files gpuhub can always rebuild (``~/.cache/gpuhub`` on Linux): validated sites, live site readings."""
    override = os.environ.get("GPUHUB_CACHE_DIR")
    return Path(override) if override else _platform_dir("user_cache_dir")
