"""Broker speed: `gpuhub plan` over 50 configured sites from cached state, and with live probes
of 3 real sites, side by side with the start-up every gpuhub command pays.

Needs the testbed with its second cluster (scripts/testbed/up.sh, scripts/testbed/slurm2.sh).
Run: python benchmarks/broker.py [--runs 20] [--python OTHER_INTERPRETER] [--baseline OTHER_CHECKOUT]

The 50 sites are copies of the two testbed clusters' site files (25 each, so their probes are
real); the 3 live sites are testbed, testbed2 and a copy of testbed2. Printed per case: median,
min and max wall time over the runs.
  * in-process: `broker_plan()` end to end (load the 50 site files, feasibility, cached readings
    and start estimates, rank) in one process, as a script or a server would call it;
  * CLI: `python -m gpuhub plan ...` as a user types it, including interpreter start and imports,
    with `gpuhub --help` and `gpuhub render` (local) as the start-up baseline. With --python, the
    CLI cases also run (in turns) with that interpreter, e.g. the one of a venv where gpuhub is
    installed as users install it: its `python -c pass` can be far below that of an interpreter
    whose site-packages load .pth files at every start. Both run this checkout's code (PYTHONPATH).
    With --baseline, the CLI cases of another checkout (an older gpuhub, with its own cache) are
    timed in turns with this one's, so that both see the same machine load. (A gpuhub that kept
    one validated-site cache for every interpreter rebuilds it at each turn of two interpreters:
    time such a baseline without --python, running this script with the interpreter wanted.)
Targets: 50 sites with cached state < 100 ms; 3 live sites < 1.5 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SITES = [REPO / "tests" / "data" / "sites" / "testbed.yaml", REPO / "tests" / "data" / "broker" / "testbed2.yaml"]
JOB = ["--gpu-type", "v100", "--gpus", "2", "-t", "30m", "--", "python", "train.py"]


def stats(label: str, *columns: list[float]) -> list[float]:
    """One row: median, min and max of each column of times (seconds); the medians in ms."""
    medians, cells = [], ""
    for times in columns:
        ms = [t * 1000 for t in times]
        medians.append(statistics.median(ms))
        cells += f" {medians[-1]:8.1f} {min(ms):8.1f} {max(ms):8.1f}"
    print(f"{label:<58}{cells}")
    return medians


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return elapsed


# A column of the CLI cases: the interpreter, and the environment that picks the checkout and its cache.
Column = tuple[str, dict[str, str]]


def cli(columns: list[Column], argv: list[str], runs: int, gpuhub: bool = True) -> list[list[float]]:
    """Times of ``python -m gpuhub argv`` (``python argv`` if not ``gpuhub``) per column, run in
    turns so that a burst of load on the machine hits every column alike."""
    times: list[list[float]] = [[] for _ in columns]
    for _ in range(runs):
        for column, (python, env) in zip(times, columns, strict=True):
            column.append(timed([python, *(["-m", "gpuhub"] if gpuhub else []), *argv], env))
    return times


def write_sites(directory: Path, count: int) -> list[str]:
    names = []
    for i in range(count):
        source = SITES[i % 2]
        name = f"bench{i:02d}"
        text = source.read_text().replace(f"name: {source.stem}", f"name: {name}")
        (directory / f"{name}.yaml").write_text(text)
        names.append(name)
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--python", help="another interpreter to run the CLI cases with, beside this one")
    parser.add_argument("--baseline", type=Path, help="another gpuhub checkout to time in turns with this one")
    args = parser.parse_args()
    pythons = [sys.executable, *([args.python] if args.python else [])]
    checkouts = [REPO, *([args.baseline.resolve()] if args.baseline else [])]
    if not Path("/var/lib/gpuhub-testbed/slurm2.env").is_file():
        sys.exit("the second testbed cluster is not running: bash scripts/testbed/slurm2.sh")
    tmp = Path(tempfile.mkdtemp(prefix="gpuhub-bench-broker-"))
    sites_dir, config = tmp / "sites", tmp / "config"
    sites_dir.mkdir()
    config.mkdir()
    names = write_sites(sites_dir, 50)
    live3 = ["testbed", "testbed2", "bench01"]
    for path in SITES:
        (sites_dir / path.name).write_text(path.read_text())
    # The broker considers these 50 sites (broker.yaml `sites`), not the shipped ones.
    (config / "broker.yaml").write_text("sites: [" + ", ".join(names) + "]\ncache_ttl: 3600\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "GPUHUB_SITES": str(sites_dir),
           "GPUHUB_CONFIG_DIR": str(config), "GPUHUB_CACHE_DIR": str(tmp / "cache"),
           "GPUHUB_DATA_DIR": str(tmp / "data"),
           # Every live case pays its SSH connections, as a first command does; and no connection
           # keepers are left behind for the 50 sites.
           "GPUHUB_SSH_PERSIST": "0"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed gpuhub has its modules compiled to bytecode
    os.environ.update(env)
    sys.path.insert(0, str(REPO / "src"))
    # Each checkout its own cache: their formats may differ.
    envs = [env, *({**env, "PYTHONPATH": str(path / "src"), "GPUHUB_CACHE_DIR": str(tmp / f"cache-{i}")}
                   for i, path in enumerate(checkouts[1:], 1))]
    columns = [(python, checkout_env) for checkout_env in envs for python in pythons]

    from gpuhub.broker.api import broker_plan
    from gpuhub.cli.job_opts import build_request

    request = build_request({"gpu_type": "v100", "gpus": 2, "time": "30m", "command": ("python", "train.py")})
    start = time.perf_counter()
    warm = broker_plan(request, refresh=True)
    print(f"filling the cache: live probes of 50 sites in {time.perf_counter() - start:.2f} s; "
          f"{len(warm.rows)} candidate rows, chosen {warm.chosen.site}/{warm.chosen.allocation.partition_key}")
    for other in envs[1:]:
        timed([sys.executable, "-m", "gpuhub", "plan", "--refresh", *JOB], other)  # the baseline's own cache
    # Each interpreter validates and keeps the site files once (as after an install): not timed.
    cli(columns, ["plan", *JOB], 1)
    for i, (python, column_env) in enumerate(columns):
        print(f"column {i + 1}: {python}, code of {Path(column_env['PYTHONPATH']).parent}")
    heads = "".join(f" {'median':>8} {'min':>8} {'max':>8}" for _ in columns)
    print(f"{'case (ms)':<58}{heads}   ({args.runs} runs)")
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        result = broker_plan(request)
        times.append(time.perf_counter() - start)
        assert len(result.rows) == len(warm.rows) and result.live
    stats("in-process broker_plan(), 50 sites, cached state (column 1)", times)
    planned = stats("CLI `gpuhub plan`, 50 sites, cached state", *cli(columns, ["plan", *JOB], args.runs))
    stats("CLI `gpuhub plan --offline`, 50 sites (no state at all)",
          *cli(columns, ["plan", "--offline", *JOB], args.runs))
    stats("baseline: CLI `gpuhub --help`", *cli(columns, ["--help"], args.runs))
    stats("baseline: CLI `gpuhub render` (local site)", *cli(columns, ["render", "--", "true"], args.runs))
    bare = stats("baseline: python -c pass", *cli(columns, ["-c", "pass"], args.runs, gpuhub=False))
    # The 100 ms target was set where `python -c pass` took 23 ms: what gpuhub adds is comparable.
    added = "".join(f" {p - b:8.1f}{'':18}" for p, b in zip(planned, bare, strict=True))
    print(f"{'CLI `gpuhub plan` minus python -c pass (medians)':<58}{added}   (target: under {100 - 23} ms)")

    times = []
    for _ in range(max(3, args.runs // 4)):
        from gpuhub.transport import close_all

        close_all()  # every live run pays its SSH connections, as a fresh CLI would
        start = time.perf_counter()
        result = broker_plan(request, sites=live3, refresh=True)
        times.append(time.perf_counter() - start)
        assert {r.site for r in result.rows} == set(live3), result.excluded
    stats("in-process broker_plan(), 3 real sites, live probes", times)
    stats("CLI `gpuhub plan --refresh`, 3 real sites, live probes",
          *cli(columns, ["plan", "--refresh", "--sites", ",".join(live3), *JOB], max(3, args.runs // 4)))


if __name__ == "__main__":
    main()
