"""Parsed site files kept between commands, so that planning over many sites does not re-parse YAML.

One JSON file maps a site file's path to its parse result, valid while the file's size,
modification time (ns) and inode are unchanged; anything else is parsed again. A file whose
content cannot be stored as JSON (a YAML date, say) is simply not cached. Written atomically;
an unreadable cache is ignored.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpuhub.paths import user_cache_dir

MAX_BYTES = 16 * 1024 * 1024


class ParsedFiles:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or user_cache_dir() / "site-files.json"
        self.entries: dict[str, list[Any]] = {}
        self.dirty = False
        try:
            if self.path.stat().st_size <= MAX_BYTES:
                loaded = json.loads(self.path.read_text(encoding="utf-8"))
                if isinstance(loaded, dict):
                    self.entries = loaded
        except (OSError, ValueError):
            pass

    def get(self, path: Path, parse: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        try:
            st = path.stat()
        except OSError:
            return parse(path)  # let the parser report it
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        entry = self.entries.get(str(path))
        if isinstance(entry, list) and len(entry) == 2 and entry[0] == stamp and isinstance(entry[1], dict):
            return entry[1]
        data = parse(path)
        try:
            json.dumps(data)
        except (TypeError, ValueError):
            return data
        self.entries[str(path)] = [stamp, data]
        self.dirty = True
        return data

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tmp-", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(self.entries, out)
            os.replace(tmp, self.path)
            self.dirty = False
        except OSError:
            pass
