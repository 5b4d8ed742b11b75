"""Submission and status speed on the real Slurm testbed, side by side with the baselines.

Needs the testbed (scripts/testbed/up.sh). Run as root on the testbed machine:
    python benchmarks/submit_throughput.py [--jobs 100] [--status-jobs 1000]

Baselines, measured in the same run:
  * plain `ssh host sbatch ...`, a new SSH connection per job
  * local `sbatch`, one process per job
  * submitit's per-job `submit` (SlurmExecutor, local sbatch)
Targets: >= 50 gpuhub submissions/s over SSH through the Python API; a 1,000-task array
submitted in under 2 s; `gpuhub status` of 1,000 jobs in one scheduler call, under 1 s.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENV = Path("/var/lib/gpuhub-testbed/testbed.env")


def testbed() -> dict[str, str]:
    if not ENV.is_file():
        sys.exit("the Slurm testbed is not running: bash scripts/testbed/up.sh")
    pairs = (line.split("=", 1) for line in ENV.read_text().splitlines() if "=" in line)
    return {k: v.strip().strip('"').strip("'") for k, v in pairs}


def rate(label: str, count: int, seconds: float, note: str = "") -> None:
    print(f"{label:<52} {count:>6} in {seconds:7.2f} s  = {count / seconds:8.1f} jobs/s  {note}")


def scancel_all() -> None:
    subprocess.run(["scancel", "--user=hubuser"], check=False)
    subprocess.run(["scancel", "--user=root"], check=False)


def baseline_ssh(tb: dict[str, str], n: int) -> None:
    argv = ["ssh", "-p", tb["TESTBED_SSH_PORT"], "-i", tb["TESTBED_SSH_KEY"], "-o",
            f"UserKnownHostsFile={tb['TESTBED_KNOWN_HOSTS']}", "-o", "StrictHostKeyChecking=yes",
            f"{tb['TESTBED_SSH_USER']}@{tb['TESTBED_SSH_HOST']}",
            "sbatch --parsable -A physics -p gpu --hold -o /dev/null --wrap true"]
    start = time.perf_counter()
    for _ in range(n):
        subprocess.run(argv, check=True, capture_output=True)
    rate("baseline: ssh host sbatch (new connection per job)", n, time.perf_counter() - start)


def baseline_local_sbatch(n: int) -> None:
    argv = ["sbatch", "--parsable", "-A", "physics", "-p", "gpu", "--hold", "-o", "/dev/null", "--wrap", "true"]
    start = time.perf_counter()
    for _ in range(n):
        subprocess.run(argv, check=True, capture_output=True)
    rate("baseline: local sbatch, one process per job", n, time.perf_counter() - start)


def baseline_submitit(n: int) -> None:
    import submitit

    with tempfile.TemporaryDirectory() as folder:
        executor = submitit.SlurmExecutor(folder=folder)
        executor.update_parameters(partition="gpu", account="physics", time=10, additional_parameters={"hold": True})
        start = time.perf_counter()
        for _ in range(n):
            executor.submit(print, "x")
        rate("baseline: submitit SlurmExecutor.submit per job", n, time.perf_counter() - start)


def gpuhub_submissions(n: int) -> None:
    import gpuhub
    from gpuhub.ledger import Ledger
    from gpuhub.transport import transport_for

    site = gpuhub.load_site("testbed")
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(Path(tmp) / "ledger.sqlite")
        transport_for(site).run(["true"])  # connect once, outside the timing: a session connects once
        start = time.perf_counter()
        for i in range(n):
            gpuhub.submit(command=["true"], name=f"bench{i}", site=site, ledger=ledger, gpus=0, time="5m",
                          directives=["--hold"])
        rate("gpuhub.submit over SSH (one reused connection)", n, time.perf_counter() - start,
             "(ledger write + sbatch each)")


def gpuhub_array(size: int) -> None:
    """End to end: a new `gpuhub submit` process (start-up, SSH connect, ledger, sbatch)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "GPUHUB_DATA_DIR": tmp}
        argv = [sys.executable, "-m", "gpuhub", "submit", "--site", "testbed", "--gpus", "0", "-t", "5m",
                "--array", f"0-{size - 1}", "--directive=--hold", "--json", "--", "true"]
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, env=env)
        seconds = time.perf_counter() - start
        print(f"{'gpuhub submit CLI, ' + str(size) + '-task array, end to end':<52} {seconds:7.2f} s  (target < 2 s)")


def gpuhub_status(n: int) -> None:
    import gpuhub
    from gpuhub import jobs as jobs_api
    from gpuhub.ledger import Ledger
    from gpuhub.transport import transport_for

    site = gpuhub.load_site("testbed")
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(Path(tmp) / "ledger.sqlite")
        for i in range(n):
            gpuhub.submit(command=["true"], name=f"st{i}", site=site, ledger=ledger, gpus=0, time="5m",
                          directives=["--hold"])
        records = ledger.jobs(active_only=True)
        transport = transport_for(site)
        calls: list[str] = []
        original = transport.run

        def counted(argv, **kw):
            calls.append(argv[0])
            return original(argv, **kw)

        transport.run = counted  # type: ignore[method-assign]
        start = time.perf_counter()
        fresh, errors = jobs_api.refresh(records, ledger)
        seconds = time.perf_counter() - start
        transport.run = original  # type: ignore[method-assign]
        states = {r.state.value for r in fresh}
        print(f"{'gpuhub status of ' + str(len(records)) + ' jobs, in process':<52} {seconds:7.2f} s"
              f"  scheduler calls: {calls}; states {sorted(states)}; errors {errors}")
        env = {**os.environ, "GPUHUB_LEDGER": str(ledger.path)}
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "gpuhub", "status", "--json"], check=True, capture_output=True, env=env)
        seconds = time.perf_counter() - start
        print(f"{'gpuhub status CLI, ' + str(len(records)) + ' jobs, end to end':<52} {seconds:7.2f} s  (target < 1 s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--baseline-jobs", type=int, default=20)
    parser.add_argument("--array", type=int, default=1000)
    parser.add_argument("--status-jobs", type=int, default=1000)
    args = parser.parse_args()
    tb = testbed()
    os.environ["GPUHUB_SITES"] = str(REPO / "tests" / "data" / "sites")
    version = tb.get('TESTBED_SLURM_VERSION', '?')
    print(f"Slurm testbed {version}, {os.cpu_count()} cores; all jobs held, then cancelled")
    try:
        baseline_ssh(tb, args.baseline_jobs)
        baseline_local_sbatch(args.jobs)
        baseline_submitit(args.baseline_jobs)
        gpuhub_submissions(args.jobs)
        scancel_all()
        gpuhub_array(args.array)
        scancel_all()
        gpuhub_status(args.status_jobs)
    finally:
        scancel_all()


if __name__ == "__main__":
    main()
