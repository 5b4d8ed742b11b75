"""Compiled templates kept between runs, so ``gpuhub render`` does not compile them every time.

Jinja2 turns a template into Python code; the code is kept (Jinja2's bytecode cache) in
``<cache dir>/templates/``. Loading it runs it, so it gets the trust of the validated-site cache
(:mod:`gpuhub.sitecache`): read only from a file this user owns that nobody else can write, in a
directory nobody else can write. A kept template is used only for the same source text (Jinja2
checks a checksum of it) compiled by the same code: the key of each file includes the gpuhub
modules' stamp, the Jinja2 and Python versions and the kind of environment (shell or plain),
since the sandbox rewrites templates while compiling them. Anything else is compiled again.
``GPUHUB_SITE_CACHE=off`` turns this cache off too.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import jinja2
from jinja2.bccache import Bucket, FileSystemBytecodeCache

from gpuhub import __version__, sitecache


class PrivateBytecodeCache(FileSystemBytecodeCache):
    """Jinja2's file cache, trusting only private files and keyed by the compiling code too."""

    def __init__(self, directory: Path, kind: str) -> None:
        super().__init__(str(directory), "%s.j2c")
        self.salt = repr((__version__, jinja2.__version__, sys.version, kind, sitecache.code_stamp()))

    def get_cache_key(self, name: str, filename: str | None = None) -> str:
        return hashlib.sha256(f"{self.salt}|{name}|{filename}".encode()).hexdigest()

    def load_bytecode(self, bucket: Bucket) -> None:
        path = self._get_cache_filename(bucket)
        try:
            with open(path, "rb") as handle:
                if sitecache.private(os.fstat(handle.fileno())) and sitecache.private(os.stat(self.directory)):
                    bucket.load_bytecode(handle)  # a damaged or foreign file is ignored (bucket reset)
        except Exception:  # missing, unreadable, truncated: compiled again
            bucket.reset()

    def dump_bytecode(self, bucket: Bucket) -> None:
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            super().dump_bytecode(bucket)  # a private temporary file, then renamed
        except OSError:
            pass  # only a cache


def bytecode_cache(kind: str) -> PrivateBytecodeCache | None:
    """The cache for one kind of environment (``shell``, ``plain``), or None when caches are off."""
    if not sitecache.enabled():
        return None
    return PrivateBytecodeCache(sitecache.cache_dir() / "templates", kind)
