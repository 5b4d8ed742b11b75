"""A small cache of live state shared between CLI invocations: one file for every entry.

A plan over 50 sites from the cache reads this one file once, not a file per site and partition.
Writes merge what a command learnt over what is on disk at that moment, into a temporary file
then renamed over the old one: a reader sees a whole old file or a whole new one, never half of
either, and two commands writing at once cannot corrupt it (the later one may drop an entry the
other added, which costs a probe, never a wrong answer). Entries older than the TTL are dropped
when the file is written. The file is a pickle of plain values with the trust of the
validated-site cache (:func:`gpuhub.sitecache.load_private`: read only when the user owns it and
nobody else can write it or its directory), which every command loads anyway: reading it costs
no JSON decoder. An unreadable, oversized or foreign file is a miss, never an error. It is
private to the user (queue contents are nobody else's business).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gpuhub.sitecache import dump_private, load_private

FILE = "state.pickle"
FORMAT = 1
MAX_FILE_BYTES = 8 * 1024 * 1024  # a damaged file is not read into memory whole
# The files gpuhub kept before (one JSON file per entry, then one for all): removed when the
# cache is next written.
_OLD_LAYOUT = ("reading-", "start-", "state.json")


class LiveCache:
    def __init__(self, directory: Path, ttl: float) -> None:
        self.directory = directory
        self.ttl = ttl
        self._lock = threading.Lock()  # probes put entries from their own threads
        self._entries: dict[str, list[Any]] | None = None  # what this process knows: key -> [time, value]
        self._pending: dict[str, list[Any]] = {}  # put but not yet written
        self._batches = 0

    @property
    def path(self) -> Path:
        return self.directory / FILE

    def get(self, kind: str, key: str) -> tuple[Any, float] | None:
        """(value, age in seconds) if an entry younger than the TTL exists."""
        if self.ttl <= 0:
            return None
        with self._lock:
            if self._entries is None:
                self._entries = self._read()
            entry = self._entries.get(f"{kind} {key}")
        if entry is None:
            return None
        age = time.time() - entry[0]
        return (entry[1], age) if 0 <= age <= self.ttl else None

    def put(self, kind: str, key: str, value: Any) -> None:
        """Keep an entry; written at once, or at the end of the enclosing :meth:`batch`."""
        if self.ttl <= 0:
            return
        with self._lock:
            entry = [time.time(), value]
            if self._entries is None:
                self._entries = self._read()
            self._entries[f"{kind} {key}"] = self._pending[f"{kind} {key}"] = entry
            if not self._batches:
                self._write()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Entries put inside are written together when it ends: a refresh of many sites writes
        the file once. A probe still running after it ended (left behind at its timeout) writes
        its own entry when it finishes."""
        with self._lock:
            self._batches += 1
        try:
            yield
        finally:
            with self._lock:
                self._batches -= 1
                if not self._batches:
                    self._write()

    def _read(self) -> dict[str, list[Any]]:
        """The entries on disk still within the TTL; nothing when the file is missing or damaged."""
        stored = load_private(self.path, MAX_FILE_BYTES)
        entries = stored.get("entries") if isinstance(stored, dict) and stored.get("format") == FORMAT else None
        if not isinstance(entries, dict):
            return {}
        now = time.time()
        return {key: entry for key, entry in entries.items()
                if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], float)
                and 0 <= now - entry[0] <= self.ttl}

    def _write(self) -> None:
        """Merge the pending entries over the file as it is now and replace it (under the lock)."""
        if not self._pending:
            return
        entries = {**self._read(), **self._pending}
        self._pending = {}
        dump_private(self.path, {"format": FORMAT, "entries": entries})
        _remove_old_layout(self.directory)


def _remove_old_layout(directory: Path) -> None:
    try:
        with os.scandir(directory) as found:
            for item in found:
                if item.name.startswith(_OLD_LAYOUT) and item.name.endswith(".json"):
                    Path(item.path).unlink(missing_ok=True)
    except OSError:
        pass  # no directory (the file could not be written): nothing to tidy
