"""A small cache of live state shared between CLI invocations: one JSON file per entry.

Entries are written to a temporary file then renamed over the old one, so a reader sees a whole
old entry or a whole new one, never half of either, and two commands writing at once cannot
corrupt it. An unreadable or foreign file is a miss, never an error. Files are private to the
user (queue contents are nobody else's business).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

MAX_ENTRY_BYTES = 8 * 1024 * 1024  # a corrupt or hostile file is not read into memory whole


class LiveCache:
    def __init__(self, directory: Path, ttl: float) -> None:
        self.directory = directory
        self.ttl = ttl

    def _path(self, kind: str, key: str) -> Path:
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        return self.directory / f"{kind}-{digest}.json"

    def get(self, kind: str, key: str) -> tuple[Any, float] | None:
        """(value, age in seconds) if an entry younger than the TTL exists."""
        if self.ttl <= 0:
            return None
        path = self._path(kind, key)
        try:
            if path.stat().st_size > MAX_ENTRY_BYTES:
                return None
            entry = json.loads(path.read_text(encoding="utf-8"))
            age = time.time() - float(entry["time"])
            if entry.get("key") != key or not 0 <= age <= self.ttl:
                return None
            return entry["value"], age
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, kind: str, key: str, value: Any) -> None:
        if self.ttl <= 0:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".json")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump({"key": key, "time": time.time(), "value": value}, out)
                os.replace(tmp, self._path(kind, key))
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError:
            pass  # a cache that cannot be written only costs a probe next time
