"""A small cache of live state shared between CLI invocations: one JSON file for every entry.

A plan over 50 sites from the cache reads this one file once, not a file per site and partition.
Writes merge what a command learnt over what is on disk at that moment, into a temporary file
then renamed over the old one: a reader sees a whole old file or a whole new one, never half of
either, and two commands writing at once cannot corrupt it (the later one may drop an entry the
other added, which costs a probe, never a wrong answer). Entries older than the TTL are dropped
when the file is written. An unreadable, oversized or foreign file is a miss, never an error.
The file is private to the user (queue contents are nobody else's business).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

FILE = "state.json"
FORMAT = 1
MAX_FILE_BYTES = 8 * 1024 * 1024  # a corrupt or hostile file is not read into memory whole
# One file per entry, as gpuhub kept them before: removed when the cache is next written.
_OLD_LAYOUT = ("reading-", "start-")


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
        try:
            with open(self.path, "rb") as handle:
                data = handle.read(MAX_FILE_BYTES + 1)
            if len(data) > MAX_FILE_BYTES:
                return {}
            stored = json.loads(data)
            entries = stored["entries"] if stored.get("format") == FORMAT else {}
            now = time.time()
            return {key: [float(entry[0]), entry[1]] for key, entry in entries.items()
                    if isinstance(key, str) and isinstance(entry, list) and len(entry) == 2
                    and isinstance(entry[0], int | float) and 0 <= now - entry[0] <= self.ttl}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}

    def _write(self) -> None:
        """Merge the pending entries over the file as it is now and replace it (under the lock)."""
        if not self._pending:
            return
        import tempfile  # only commands that probe a site write: a plan from the cache does not

        entries = {**self._read(), **self._pending}
        self._pending = {}
        tmp = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump({"format": FORMAT, "entries": entries}, out)
            os.replace(tmp, self.path)
            tmp = None
            _remove_old_layout(self.directory)
        except OSError:
            pass  # a cache that cannot be written only costs a probe next time
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)


def _remove_old_layout(directory: Path) -> None:
    with os.scandir(directory) as found:
        for item in found:
            if item.name.startswith(_OLD_LAYOUT) and item.name.endswith(".json"):
                Path(item.path).unlink(missing_ok=True)
