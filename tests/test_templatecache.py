"""Compiled templates are reused only from private files, for the same source and compiling code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gpuhub import render as render_module
from gpuhub import templatecache
from gpuhub.plan import plan
from gpuhub.registry import load_site
from gpuhub.render import render
from gpuhub.requestdata import build
from gpuhub.sandbox import SafeEnvironment

SOURCE = "echo {{ word }}\n"


@pytest.fixture
def cache(isolated: Path) -> templatecache.PrivateBytecodeCache:
    made = templatecache.bytecode_cache("shell")
    assert made is not None
    return made


def _bucket(cache: templatecache.PrivateBytecodeCache, source: str = SOURCE):  # type: ignore[no-untyped-def]
    return cache.get_bucket(SafeEnvironment(), "t.sh.j2", "/x/t.sh.j2", source)


def _stored(cache: templatecache.PrivateBytecodeCache) -> Path:
    bucket = _bucket(cache)
    bucket.code = compile("x = 1", "<t>", "exec")
    cache.dump_bytecode(bucket)
    return Path(cache.directory) / (cache.pattern % bucket.key)


def test_stored_code_is_private_and_read_back(cache: templatecache.PrivateBytecodeCache) -> None:
    path = _stored(cache)
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert _bucket(cache).code is not None


def test_code_others_could_write_is_not_run(cache: templatecache.PrivateBytecodeCache) -> None:
    path = _stored(cache)
    path.chmod(0o620)
    assert _bucket(cache).code is None
    path.chmod(0o600)
    path.parent.chmod(0o777)
    try:
        assert _bucket(cache).code is None
    finally:
        path.parent.chmod(0o700)
    assert _bucket(cache).code is not None


def test_changed_source_damaged_file_or_other_compiler_is_compiled_again(
        cache: templatecache.PrivateBytecodeCache) -> None:
    path = _stored(cache)
    assert _bucket(cache, SOURCE + "# changed\n").code is None  # Jinja2's checksum of the source
    other = templatecache.PrivateBytecodeCache(Path(cache.directory), "plain")
    assert other.get_cache_key("t.sh.j2", "/x/t.sh.j2") != cache.get_cache_key("t.sh.j2", "/x/t.sh.j2")
    path.write_bytes(path.read_bytes()[:20])  # truncated
    assert _bucket(cache).code is None


def test_cache_off_means_no_bytecode_cache(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUHUB_SITE_CACHE", "off")
    assert templatecache.bytecode_cache("shell") is None


def test_render_uses_the_cache_and_sees_an_edited_template(isolated: Path) -> None:
    site_dir = isolated / "config" / "sites"
    site_dir.mkdir(parents=True)
    (site_dir / "mine.yaml").write_text(
        "scheduler: local\ntemplate: mine.sh.j2\npartitions: {cpu: {gpus_per_node: 0}}\n")
    template = site_dir / "mine.sh.j2"
    request = build({"command": ["true"]})

    def rendered() -> str:
        render_module._ENVS.clear()  # as a new process would
        return render(plan(load_site("mine"), request)).files["job.sh"]

    template.write_text("#!/bin/bash\necho first\n")
    assert "echo first" in rendered()
    kept = sorted((isolated / "cache" / "templates").iterdir())
    assert kept and all(p.stat().st_uid == os.getuid() for p in kept)
    assert "echo first" in rendered()  # from the kept code
    template.write_text("#!/bin/bash\necho second\n")
    assert "echo second" in rendered()
