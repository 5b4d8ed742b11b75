"""Lab-server speed on the testbed: submitting to a 4-host pool, and `gpuhub gpus` over 4 hosts.

Needs the testbed (scripts/testbed/up.sh, then scripts/testbed/labserver.sh). The 4 hosts are
4 names of a pool site, all reached at the loopback sshd (127.0.0.1:2222), each with its own
fake nvidia-smi (8 GPUs) and its own lock directory. Run as root:
    python benchmarks/labserver.py [--jobs 24]

Targets (the issue's): < 100 ms per submission to a 4-host pool with cached connections
(probe of the 4 hosts, placement, job files, GPU reservation on the host, ledger), and
`gpuhub gpus` over 4 hosts < 300 ms. Measured side by side, as a baseline: a plain
`ssh host nvidia-smi` with a new connection per host, which is what a student does today.
The whole `gpuhub gpus` command is timed with new connections and with the connections kept
between commands (docs/connections.md); `--python PATH` runs it with another interpreter, e.g.
a venv where gpuhub is installed:
    python3 -m venv /tmp/vb && /tmp/vb/bin/pip install . && python benchmarks/labserver.py --python /tmp/vb/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STATE = Path("/var/lib/gpuhub-testbed")
HOSTS = 4
GPUS = 8


def env_file(path: Path) -> dict[str, str]:
    if not path.is_file():
        sys.exit(f"{path} is missing: run scripts/testbed/up.sh and scripts/testbed/labserver.sh")
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#"))
    return {k.strip(): v.strip().strip('"').strip("'") for k, v in pairs}


def fake_hosts(env: dict[str, str], root: Path) -> str:
    """4 fake hosts (8 GPUs each) and the site file of a pool made of them."""
    entries = []
    for i in range(1, HOSTS + 1):
        host = root / f"gpu{i}"
        host.mkdir()
        host.chmod(0o1777)
        (host / "nvidia-smi").symlink_to(env["TESTBED_FAKE_NVIDIA_SMI"])
        lines = [f"gpu|{g}|GPU-bench{i}-{g:02d}-{root.name[-8:]}|NVIDIA A40|3|46068|0" for g in range(GPUS)]
        (host / "gpus.state").write_text("\n".join(lines) + "\n")
        (host / "gpus.state").chmod(0o644)
        entries.append(f"    - {{name: gpu{i}, host: {env['TESTBED_SSH_HOST']}, lock_dir: {host}/locks, "
                       f"nvidia_smi: {host}/nvidia-smi}}")
    return (
        "name: bench-pool\nscheduler: ssh\nconnection:\n  host: gpu1\n"
        f"  port: {env['TESTBED_SSH_PORT']}\n  user: {env['TESTBED_SSH_USER']}\n"
        f"  identity_file: {env['TESTBED_SSH_KEY']}\n  known_hosts: {env['TESTBED_KNOWN_HOSTS']}\n"
        "lab:\n  hosts:\n" + "\n".join(entries) + "\n"
        f"partitions:\n  gpu: {{gpu_model: a40, gpus_per_node: {GPUS}}}\n"
    )


def summary(label: str, seconds: list[float], target_ms: float) -> None:
    ms = sorted(s * 1000 for s in seconds)
    p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
    verdict = "OK" if statistics.median(ms) < target_ms else "OVER"
    print(f"{label:<58} n={len(ms):<3} median {statistics.median(ms):7.1f} ms  mean {statistics.mean(ms):7.1f}"
          f"  p90 {p90:7.1f}  max {ms[-1]:7.1f}   target < {target_ms:g} ms: {verdict}")


def bench_submit(jobs: int) -> list:
    import gpuhub
    from gpuhub.ledger import Ledger

    ledger = Ledger()
    request = gpuhub.JobRequest(command=["sleep", "600"], gpus=1, name="bench")
    first = gpuhub.submit(request, site="bench-pool", ledger=ledger)  # opens the 4 connections
    times, ids = [], [first]
    for _ in range(jobs):
        start = time.perf_counter()
        ids.append(gpuhub.submit(request, site="bench-pool", ledger=ledger))
        times.append(time.perf_counter() - start)
    hosts = {j.scheduler_id.split("@")[1] for j in ids}
    summary(f"gpuhub submit, 4-host pool, cached connections ({len(hosts)} hosts used)", times, 100)
    return ids


def bench_gpus(env: dict[str, str], runs: int, python: str) -> None:
    from gpuhub.backends import backend_for
    from gpuhub.registry import load_site
    from gpuhub.transport import close_all

    site = load_site("bench-pool")
    backend = backend_for("ssh")
    cold, warm = [], []
    for _ in range(runs):
        close_all()
        start = time.perf_counter()
        probes, errors = backend.probe_pool(site)
        cold.append(time.perf_counter() - start)
        assert len(probes) == HOSTS and not errors, errors
        start = time.perf_counter()
        backend.probe_pool(site)
        warm.append(time.perf_counter() - start)
    summary("probe of the 4 hosts (what `gpuhub gpus` does), new connections", cold, 300)
    summary("probe of the 4 hosts, cached connections", warm, 300)
    ssh = ["ssh", "-p", env["TESTBED_SSH_PORT"], "-i", env["TESTBED_SSH_KEY"], "-o",
           f"UserKnownHostsFile={env['TESTBED_KNOWN_HOSTS']}", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
           f"{env['TESTBED_SSH_USER']}@{env['TESTBED_SSH_HOST']}"]
    hosts = [h.nvidia_smi for h in site.lab.hosts]
    base = []
    for _ in range(runs):
        start = time.perf_counter()
        for smi in hosts:
            subprocess.run([*ssh, f"{smi} --query-gpu=index,memory.used --format=csv"], check=True,
                           capture_output=True)
        base.append(time.perf_counter() - start)
    summary("baseline: ssh HOST nvidia-smi, one host after another", base, 300)
    bench_cli(python, runs)


def timed(argv: list[str], runs: int, env: dict[str, str]) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - start)
    return times


def bench_cli(python: str, runs: int) -> None:
    """The whole `gpuhub gpus` command, with a new SSH connection per host, then with the
    connections kept between commands by a keeper (docs/connections.md)."""
    env = dict(os.environ)
    if python != sys.executable:  # measure the gpuhub installed there, not this checkout
        env.pop("PYTHONPATH", None)
    gpus = [python, "-m", "gpuhub", "gpus", "--site", "bench-pool", "--json"]
    ms = statistics.median(timed([python, "-c", "pass"], runs, env)) * 1000
    print(f"CLI cases run with {python} (`python -c pass`: median {ms:.1f} ms)")
    summary("`gpuhub gpus` command, new connections", timed(gpus, runs, {**env, "GPUHUB_SSH_PERSIST": "0"}), 300)
    with tempfile.TemporaryDirectory(prefix="gk-", dir="/tmp") as runtime:
        kept = {**env, "GPUHUB_SSH_PERSIST": "600", "XDG_RUNTIME_DIR": runtime}
        listing = [python, "-m", "gpuhub", "connections", "--json"]
        try:
            subprocess.run(gpus, check=True, capture_output=True, env=kept)  # connects, starts the keeper
            deadline = time.monotonic() + 30
            while not json.loads(subprocess.run(listing, check=True, capture_output=True, env=kept).stdout)[
                    "connections"]:
                if time.monotonic() > deadline:
                    sys.exit("no connection keeper answered within 30 s")
                time.sleep(0.1)
            summary("`gpuhub gpus` command, connections kept between commands", timed(gpus, runs, kept), 300)
        finally:
            subprocess.run([python, "-m", "gpuhub", "connections", "--close"], capture_output=True, env=kept)


def cleanup(jobs: list) -> None:
    """Cancel the benchmark's jobs and remove their directories (the 4 hosts share one home)."""
    if not jobs:
        return
    import gpuhub
    from gpuhub.backends.lab.backend import dir_id
    from gpuhub.registry import load_site
    from gpuhub.transport import transport_for

    site = load_site("bench-pool")
    gpuhub.jobs.cancel([j.record for j in jobs], jobs[0].ledger)
    dirs = [dir_id(j.scheduler_id) for j in jobs]
    script = 'cd "$HOME/.gpuhub/jobs" && rm -rf -- "$@"'
    transport_for(site, site.lab.hosts[0]).run(["bash", "-c", script, "cleanup", *dirs], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=24, help="submissions timed (at most 31: 4 x 8 GPUs)")
    parser.add_argument("--runs", type=int, default=5, help="repetitions of the `gpuhub gpus` measures")
    parser.add_argument("--python", default=sys.executable, metavar="PATH",
                        help="interpreter the `gpuhub gpus` commands run with (e.g. a venv's, gpuhub installed "
                             "there); default: this one, with this checkout")
    args = parser.parse_args()
    if not 1 <= args.jobs < HOSTS * GPUS:
        sys.exit(f"--jobs must be 1..{HOSTS * GPUS - 1}")
    env = {**env_file(STATE / "testbed.env"), **env_file(STATE / "labserver.env")}
    root = Path("/var/tmp") / f"gpuhub-bench-{uuid.uuid4().hex[:12]}"
    root.mkdir()
    root.chmod(0o755)
    with tempfile.TemporaryDirectory() as tmp:
        sites = Path(tmp) / "sites"
        sites.mkdir()
        (sites / "bench-pool.yaml").write_text(fake_hosts(env, root))
        # No connection keeper for the in-process cases: they measure new and cached connections.
        os.environ.update(GPUHUB_SITES=str(sites), GPUHUB_DATA_DIR=str(Path(tmp) / "data"),
                          GPUHUB_CONFIG_DIR=str(Path(tmp) / "config"), GPUHUB_SSH_PERSIST="0")
        sys.path.insert(0, str(REPO / "src"))
        os.environ["PYTHONPATH"] = str(REPO / "src")
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed gpuhub has its modules compiled
        print(f"lab server benchmark: {HOSTS} hosts x {GPUS} fake GPUs on the loopback sshd "
              f"({env['TESTBED_SSH_USER']}@{env['TESTBED_SSH_HOST']}:{env['TESTBED_SSH_PORT']}); "
              f"load average {os.getloadavg()[0]:.2f}")
        jobs = []
        try:
            jobs = bench_submit(args.jobs)
            bench_gpus(env, args.runs, args.python)
        finally:
            cleanup(jobs)
            subprocess.run(["rm", "-rf", "--", str(root)], check=False)


if __name__ == "__main__":
    main()
