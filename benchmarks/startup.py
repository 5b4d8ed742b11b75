"""Start-up time of the CLI, side by side with a bare interpreter.

Target: every command that contacts no site at most 0.15 s wall (median) on the reference
machine (2 cores), with the validated-site cache warm (any run after the site files last
changed). The first run after a change reads every site file again: shown as "cold".

Run: python benchmarks/startup.py [--runs 20]
It times this checkout (PYTHONPATH=src) through the installed `gpuhub` console script, with a
scratch home: an empty ledger, the shipped sites and a user override file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET = 0.150


def timed(argv: list[str], runs: int, env: dict[str, str], before: list[str] | None = None) -> list[float]:
    out = []
    for _ in range(runs):
        if before:
            subprocess.run(before, check=True)
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env)
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    script = Path(sys.executable).parent / "gpuhub"
    exe = [str(script)] if script.exists() else [shutil.which("gpuhub") or "gpuhub"]
    scratch = Path(tempfile.mkdtemp(prefix="gpuhub-startup-"))
    (scratch / "config" / "sites").mkdir(parents=True)
    override = scratch / "config" / "sites" / "jean-zay.yaml"
    override.write_text("connection: {user: abc123}\ndefaults: {project: abc}\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])),
           "GPUHUB_CONFIG_DIR": str(scratch / "config"), "GPUHUB_DATA_DIR": str(scratch / "data"),
           "GPUHUB_CACHE_DIR": str(scratch / "cache"), "GPUHUB_SYSTEM_CONFIG_DIR": str(scratch / "etc")}
    env.pop("GPUHUB_SITES", None)
    render_jz = [*exe, "render", "--site", "jean-zay", "--gpu-type", "a100", "--gpus", "16", "--time", "10h", "--",
                 "python", "train.py"]
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "gpuhub --help": [*exe, "--help"],
        "gpuhub sites list": [*exe, "sites", "list"],
        "gpuhub sites show jean-zay": [*exe, "sites", "show", "jean-zay"],
        "gpuhub render (local)": [*exe, "render", "--", "true"],
        "gpuhub render (jean-zay)": render_jz,
        "gpuhub submit --dry-run": [*exe, "submit", "--dry-run", "--", "true"],
        "gpuhub jobs": [*exe, "jobs"],
    }
    subprocess.run(cases["gpuhub sites list"], env=env, check=True, stdout=subprocess.DEVNULL)  # warm the cache
    print(f"{'command':<28} {'median s':>9} {'min s':>7} {'max s':>7}  target   ({args.runs} runs, {exe[0]})")
    for label, argv in cases.items():
        times = timed(argv, args.runs, env)
        verdict = "" if label.startswith("python") else ("ok" if statistics.median(times) <= TARGET else "OVER")
        print(f"{label:<28} {statistics.median(times):>9.3f} {min(times):>7.3f} {max(times):>7.3f}  {verdict}")
    # Cold: the first command after a site file changed reads and validates every site again.
    touch = ["touch", str(scratch / "config" / "sites" / "jean-zay.yaml")]
    times = timed(render_jz, max(3, args.runs // 4), env, before=touch)
    print(f"{'render (jean-zay), cold':<28} {statistics.median(times):>9.3f} {min(times):>7.3f} {max(times):>7.3f}  "
          "(after a site file changed; not a target)")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
