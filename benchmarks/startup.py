"""Start-up time of the CLI, side by side with a bare interpreter.

Target: every command that contacts no site at most 0.15 s wall (median) on the reference
machine (2 cores), with the validated-site cache warm (any run after the site files last
changed). The first run after a change reads every site file again: shown as "cold".

Run: python benchmarks/startup.py [--runs 20] [--baseline OTHER_CHECKOUT] [--python INTERPRETER]
It times this checkout (PYTHONPATH=src) through the installed `gpuhub` console script, with a
scratch home: an empty ledger, the shipped sites and a user override file. With --baseline, the
same commands of another checkout (an older gpuhub) are timed in turns with this one, so both
columns see the same machine load. With --python, every command (`python -c pass` included)
runs with that interpreter instead, through its own `gpuhub` script if it has one (a venv where
gpuhub is installed, as users install it), else `INTERPRETER -m gpuhub`.
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


def environment(repo: Path, scratch: Path) -> dict[str, str]:
    """A new user's environment running ``repo``'s code."""
    (scratch / "config" / "sites").mkdir(parents=True)
    override = scratch / "config" / "sites" / "jean-zay.yaml"
    override.write_text("connection: {user: abc123}\ndefaults: {project: abc}\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo / "src"), os.environ.get("PYTHONPATH")])),
           "GPUHUB_CONFIG_DIR": str(scratch / "config"), "GPUHUB_DATA_DIR": str(scratch / "data"),
           "GPUHUB_CACHE_DIR": str(scratch / "cache"), "GPUHUB_SYSTEM_CONFIG_DIR": str(scratch / "etc")}
    env.pop("GPUHUB_SITES", None)
    # An installed gpuhub has its modules compiled to bytecode; let the warm-up run write it.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def once(argv: list[str], env: dict[str, str], before: list[str] | None = None) -> float:
    if before:
        subprocess.run(before, check=True)
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--baseline", type=Path, help="another gpuhub checkout to time in turns with this one")
    parser.add_argument("--python", help="the interpreter to run every command with (default: this one)")
    args = parser.parse_args()
    python = args.python or sys.executable
    script = Path(python).parent / "gpuhub"
    if script.exists():
        exe = [str(script)]
    elif args.python:
        exe = [python, "-m", "gpuhub"]
    else:
        exe = [shutil.which("gpuhub") or "gpuhub"]
    scratch = Path(tempfile.mkdtemp(prefix="gpuhub-startup-"))
    repos = {"this": REPO, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    envs = {name: environment(repo, scratch / name) for name, repo in repos.items()}
    render_jz = [*exe, "render", "--site", "jean-zay", "--gpu-type", "a100", "--gpus", "16", "--time", "10h", "--",
                 "python", "train.py"]
    cases = {
        "python -c pass": [python, "-c", "pass"],
        "gpuhub --help": [*exe, "--help"],
        "gpuhub sites list": [*exe, "sites", "list"],
        "gpuhub sites show jean-zay": [*exe, "sites", "show", "jean-zay"],
        "gpuhub render (local)": [*exe, "render", "--", "true"],
        "gpuhub render (jean-zay)": render_jz,
        "gpuhub submit --dry-run": [*exe, "submit", "--dry-run", "--", "true"],
        "gpuhub jobs": [*exe, "jobs"],
    }
    for env in envs.values():  # warm the cache (a checkout without one simply reads its files)
        subprocess.run(cases["gpuhub sites list"], env=env, check=True, stdout=subprocess.DEVNULL)
    columns = "".join(f" {name + ' median':>16} {'min':>6}" for name in repos)
    print(f"{'command (seconds)':<28}{columns}  target  ({args.runs} runs each, {' '.join(exe)})")
    for label, argv in cases.items():
        times: dict[str, list[float]] = {name: [] for name in repos}
        for _ in range(args.runs):
            for name in repos:  # in turns, so a burst of load hits both columns alike
                times[name].append(once(argv, envs[name]))
        cells = "".join(f" {statistics.median(t):>16.3f} {min(t):>6.3f}" for t in times.values())
        verdict = "" if label.startswith("python") else ("ok" if statistics.median(times["this"]) <= TARGET else "OVER")
        print(f"{label:<28}{cells}  {verdict}")
    # Cold: the first command after a site file changed reads and validates every site again.
    times = {name: [] for name in repos}
    for _ in range(max(3, args.runs // 4)):
        for name in repos:
            touch = ["touch", str(scratch / name / "config" / "sites" / "jean-zay.yaml")]
            times[name].append(once(render_jz, envs[name], before=touch))
    cells = "".join(f" {statistics.median(t):>16.3f} {min(t):>6.3f}" for t in times.values())
    print(f"{'render (jean-zay), cold':<28}{cells}  (after a site file changed; not a target)")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
