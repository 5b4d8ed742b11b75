"""Start-up time of the CLI, side by side with a bare interpreter.

Target: `gpuhub --help` under 0.15 s wall on the reference machine (2 cores).
Run: python benchmarks/startup.py [--runs 20]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def timed(argv: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    script = Path(sys.executable).parent / "gpuhub"
    exe = [str(script)] if script.exists() else [shutil.which("gpuhub") or "gpuhub"]
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "gpuhub --help": [*exe, "--help"],
        "gpuhub sites list": [*exe, "sites", "list"],
        "gpuhub render (local)": [*exe, "render", "--", "true"],
    }
    print(f"{'command':<24} {'median s':>9} {'min s':>7} {'max s':>7}   ({args.runs} runs, {exe[0]})")
    for label, argv in cases.items():
        times = timed(argv, args.runs)
        print(f"{label:<24} {statistics.median(times):>9.3f} {min(times):>7.3f} {max(times):>7.3f}")


if __name__ == "__main__":
    main()
