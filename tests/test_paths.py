"""Where gpuhub keeps the user's files: on Linux, computed as platformdirs computes them, without it."""

from __future__ import annotations

import sys
from pathlib import Path

import platformdirs
import pytest

from gpuhub import paths

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the XDG rules gpuhub computes itself are Linux's")

VARIABLES = ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_DIRS", "GPUHUB_CONFIG_DIR",
             "GPUHUB_DATA_DIR", "GPUHUB_CACHE_DIR", "GPUHUB_SYSTEM_CONFIG_DIR")


def ours() -> list[Path]:
    return [paths.user_config_dir(), paths.user_data_dir(), paths.user_cache_dir(), paths.system_sites_dir()]


def theirs() -> list[Path]:
    dirs = platformdirs.PlatformDirs("gpuhub", appauthor=False, multipath=False)
    return [Path(dirs.user_config_dir), Path(dirs.user_data_dir), Path(dirs.user_cache_dir),
            Path(dirs.site_config_dir) / "sites"]


@pytest.mark.parametrize("env", [
    {},
    {"XDG_CONFIG_HOME": "/x/conf", "XDG_DATA_HOME": "/x/data", "XDG_CACHE_HOME": "/x/cache",
     "XDG_CONFIG_DIRS": "/x/etc1:/x/etc2"},
    {"XDG_CONFIG_HOME": "", "XDG_CONFIG_DIRS": ""},
])
def test_same_directories_as_platformdirs(env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert ours() == theirs()


def test_relative_xdg_paths_are_ignored_and_gpuhub_variables_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # the XDG spec: a relative path is invalid
    monkeypatch.setenv("XDG_CONFIG_DIRS", "relative:/x/etc")
    monkeypatch.delenv("GPUHUB_CACHE_DIR", raising=False)
    monkeypatch.delenv("GPUHUB_SYSTEM_CONFIG_DIR", raising=False)
    assert paths.user_cache_dir() == tmp_path / ".cache" / "gpuhub"
    assert paths.system_sites_dir() == Path("/x/etc/gpuhub/sites")
    monkeypatch.setenv("GPUHUB_CACHE_DIR", str(tmp_path / "mine"))
    assert paths.user_cache_dir() == tmp_path / "mine"


def test_platformdirs_is_not_imported_on_linux(tmp_path: Path):
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in VARIABLES} | {"HOME": str(tmp_path)}
    code = ("import sys\nfrom gpuhub import paths\n"
            "for f in (paths.user_config_dir, paths.user_data_dir, paths.user_cache_dir, paths.system_sites_dir):\n"
            "    f()\n"
            "print('platformdirs' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False", out.stderr
