"""The validated-site cache: fast when nothing changed, never trusted across a change."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from gpuhub import registry, sitecache


def _user_site(isolated: Path, text: str) -> Path:
    path = isolated / "config" / "sites" / "jean-zay.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _fresh() -> dict[str, sitecache.Entry]:
    registry._MEMO.clear()  # as a new process would
    return registry.validated()


def _cache_files(isolated: Path) -> list[Path]:
    return sorted((isolated / "cache").glob("sites-*.pickle"))


def test_second_command_reads_no_site_file_and_loads_no_model(isolated: Path) -> None:
    code = ("import sys\nfrom gpuhub.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "print('LOADED', sorted(m for m in ('yaml', 'pydantic', 'jinja2') if m in sys.modules), file=sys.stderr)")
    first = subprocess.run([sys.executable, "-c", code, "sites", "list"], capture_output=True, text=True, timeout=60)
    assert "LOADED ['pydantic', 'yaml']" in first.stderr  # the cache is built: every file read and validated
    assert len(_cache_files(isolated)) == 1
    for args in (["sites", "list"], ["sites", "show", "jean-zay"], ["sites", "show", "ruche", "--json"], ["jobs"]):
        again = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
        assert "LOADED []" in again.stderr, (args, again.stderr)
    shown = subprocess.run([sys.executable, "-m", "gpuhub", "sites", "show", "jean-zay"], capture_output=True,
                           text=True, timeout=60)
    assert "qos_gpu_a100-t3" in shown.stdout and "Your overrides go in" in shown.stdout


def test_a_changed_file_is_read_again_even_with_same_size_and_mtime(isolated: Path) -> None:
    path = _user_site(isolated, "defaults: {project: abc}\n")
    assert registry.load_site("jean-zay").defaults.project == "abc"
    stat = path.stat()
    path.write_text("defaults: {project: xyz}\n")  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old modification time
    registry._MEMO.clear()
    assert registry.load_site("jean-zay").defaults.project == "xyz"


def test_new_and_removed_files_are_seen(isolated: Path) -> None:
    assert "mine" not in _fresh()
    extra = isolated / "config" / "sites" / "mine.yaml"
    extra.parent.mkdir(parents=True)
    extra.write_text("scheduler: local\npartitions: {cpu: {gpus_per_node: 0}}\n")
    assert _fresh()["mine"].error is None
    extra.unlink()
    assert "mine" not in _fresh()


def test_broken_file_is_remembered_as_its_error(isolated: Path) -> None:
    _user_site(isolated, "defaults: {projet: abc}\n")
    for _ in range(2):  # built, then read back from the cache
        entry = _fresh()["jean-zay"]
        assert entry.error and "unknown key 'projet'" in entry.error
        with pytest.raises(registry.ConfigError, match="unknown key 'projet'"):
            registry.load_site("jean-zay")


def test_damaged_cache_is_rebuilt(isolated: Path) -> None:
    _fresh()
    (cache,) = _cache_files(isolated)
    cache.write_bytes(b"\x80\x05not a pickle at all")
    assert _fresh()["ruche"].error is None
    assert pickle.loads(cache.read_bytes())["sites"]["ruche"].summary["name"] == "ruche"


def test_cache_writable_by_others_is_not_trusted(isolated: Path) -> None:
    _fresh()
    (cache,) = _cache_files(isolated)
    stored = pickle.loads(cache.read_bytes())
    stored["sites"]["ruche"].summary["description"] = "planted"
    cache.write_bytes(pickle.dumps(stored))
    cache.chmod(0o600)
    assert _fresh()["ruche"].summary["description"] == "planted"  # the cache is what is read...
    cache.write_bytes(pickle.dumps(stored))
    cache.chmod(0o666)
    assert _fresh()["ruche"].summary["description"] != "planted"  # ...unless others could have written it


def test_cache_can_be_turned_off(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUHUB_SITE_CACHE", "off")
    assert _fresh()["local"].error is None
    assert not _cache_files(isolated)


def test_unwritable_cache_dir_is_not_an_error(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUHUB_CACHE_DIR", "/proc/gpuhub-no-such-dir")
    assert registry.load_site("local").name == "local"


def test_render_dry_run_and_plan_load_no_model_until_a_value_is_wrong(isolated: Path) -> None:
    code = ("import sys\nfrom gpuhub.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as exc:\n    print('EXIT', exc.code, file=sys.stderr)\n"
            "print('LOADED', sorted(m for m in ('yaml', 'pydantic', 'paramiko') if m in sys.modules), file=sys.stderr)")

    def run(*args: str) -> str:
        return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60,
                              cwd=isolated).stderr

    run("sites", "list")  # builds the cache
    for args in (["render", "--", "true"], ["submit", "--dry-run", "--", "true"],
                 ["render", "--site", "jean-zay", "-P", "abc", "--gpus", "8", "-t", "2h", "--mem", "64G",
                  "--array", "0-9%2", "-e", "SEED=1", "--", "python", "train.py"]):
        out = run(*args)
        assert "EXIT 0" in out and "LOADED []" in out, (args, out)
    plan = ["plan", "--sites", "local", "--gpus", "0", "--", "true"]
    assert "LOADED ['pydantic', 'yaml']" in run(*plan)  # the broker's settings: read, validated and kept
    again = run(*plan)
    assert "EXIT 0" in again and "LOADED []" in again, again
    wrong = run("render", "--time", "forever", "--", "true")  # the model says what is wrong, as before
    assert "EXIT 2" in wrong and "Error: --time: walltime 'forever'" in wrong and "'pydantic'" in wrong, wrong
