"""Walltime and memory quantities, parsed the way schedulers and people write them."""

from __future__ import annotations

import math
import re

from gpuhub.errors import shown
from gpuhub.limits import MAX_MEMORY_MIB, MAX_WALLTIME

# Patterns are compiled on first use (re keeps them compiled): a command parses one or two values.
_SUFFIX = r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m(?:in)?)?(?:(\d+)s)?"

WALLTIME_HELP = "HH:MM:SS, D-HH:MM:SS, MM (minutes, as Slurm), or 90m / 2h / 1d12h / 45s"


def parse_walltime(value: str | int) -> int:
    """Seconds of a walltime (see :func:`_walltime`), at most :data:`MAX_WALLTIME`."""
    seconds = _walltime(value)
    if seconds > MAX_WALLTIME:
        raise ValueError(f"walltime {shown(value)} is over the limit of {MAX_WALLTIME // 86400} days")
    return seconds


def _walltime(value: str | int) -> int:
    """Return seconds for a walltime.

    Accepts every form ``sbatch --time`` accepts (``M``, ``M:S``, ``H:M:S``, ``D-H``,
    ``D-H:M``, ``D-H:M:S``) and unit suffixes (``90m``, ``2h``, ``1d12h``, ``45s``).
    A bare integer is minutes, as in Slurm.
    """
    if isinstance(value, bool):
        raise ValueError(f"walltime {shown(value)}: expected {WALLTIME_HELP}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"walltime {shown(value)} must be positive")
        return value * 60
    text = str(value).strip()
    if re.search(r"\d{13,}", text):  # more digits than any walltime has; int() of 5000 digits fails
        raise ValueError(f"walltime {shown(value)} is over the limit of {MAX_WALLTIME // 86400} days")
    seconds = _parse_text(text)
    if seconds is None:
        raise ValueError(f"walltime {shown(value)} is not understood; expected {WALLTIME_HELP}")
    if seconds <= 0:
        raise ValueError(f"walltime {shown(value)} must be positive")
    return seconds


def _parse_text(text: str) -> int | None:
    if not text:
        return None
    if text.isdigit():
        return int(text) * 60
    if re.fullmatch(r"[\d:-]+", text):
        days = 0
        rest = text
        if "-" in text:
            day_part, _, rest = text.partition("-")
            if not day_part.isdigit() or "-" in rest:
                return None
            days = int(day_part)
            parts = rest.split(":")
            if not all(p.isdigit() for p in parts) or len(parts) > 3:
                return None
            h, m, s = ([int(p) for p in parts] + [0, 0])[:3]
            if m >= 60 or s >= 60:
                return None
            return ((days * 24 + h) * 60 + m) * 60 + s
        parts = rest.split(":")
        if not all(p.isdigit() for p in parts) or len(parts) > 3:
            return None
        nums = [int(p) for p in parts]
        if len(nums) == 2:  # minutes:seconds, as sbatch reads it
            m, s = nums
            if s >= 60:
                return None
            return m * 60 + s
        h, m, s = nums
        if m >= 60 or s >= 60:
            return None
        return (h * 60 + m) * 60 + s
    match = re.fullmatch(_SUFFIX, text, re.IGNORECASE)
    if match and any(match.groups()):
        d, h, m, s = (int(g) if g else 0 for g in match.groups())
        return ((d * 24 + h) * 60 + m) * 60 + s
    return None


def format_walltime(seconds: int) -> str:
    """Slurm's canonical form: ``HH:MM:SS`` under a day, ``D-HH:MM:SS`` from a day up."""
    days, rem = divmod(int(seconds), 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    if days:
        return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


_MEMORY = r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?"
_MEM_FACTOR = {"k": 1 / 1024, "": 1, "m": 1, "g": 1024, "t": 1024 * 1024}
MEMORY_HELP = "a size such as 500M, 32G, 1.5T (binary units; a bare number is MiB, as in Slurm)"


def parse_memory(value: str | int) -> int:
    """Return MiB. ``32G`` = ``32GB`` = ``32GiB`` = 32768; a bare number is MiB (Slurm's default).

    At most :data:`MAX_MEMORY_MIB` (64 TiB)."""
    mib = _memory(value)
    if mib > MAX_MEMORY_MIB:
        raise ValueError(f"memory {shown(value)} is over the limit of {format_memory(MAX_MEMORY_MIB)}")
    return mib


def _memory(value: str | int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"memory {shown(value)}: expected {MEMORY_HELP}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"memory {shown(value)} must be positive")
        return value
    match = re.fullmatch(_MEMORY, str(value).strip(), re.IGNORECASE)
    if not match:
        raise ValueError(f"memory {shown(value)} is not understood; expected {MEMORY_HELP}")
    if len(match.group(1)) > 20:
        raise ValueError(f"memory {shown(value)} is over the limit of {format_memory(MAX_MEMORY_MIB)}")
    mib = float(match.group(1)) * _MEM_FACTOR[match.group(2).lower()]
    if not math.isfinite(mib) or mib > MAX_MEMORY_MIB:
        raise ValueError(f"memory {shown(value)} is over the limit of {format_memory(MAX_MEMORY_MIB)}")
    if mib < 1:
        raise ValueError(f"memory {shown(value)} is below 1 MiB")
    return round(mib)


def format_memory(mib: int) -> str:
    """Slurm size syntax: ``32G`` when whole GiB, else ``500M``."""
    if mib % (1024 * 1024) == 0:
        return f"{mib // (1024 * 1024)}T"
    if mib % 1024 == 0:
        return f"{mib // 1024}G"
    return f"{mib}M"
