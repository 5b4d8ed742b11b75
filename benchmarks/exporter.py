"""Scrape speed of `gpuhub exporter` with 100 sites and 10,000 queued jobs in its cache.

The exporter runs in a process of its own, as in production; the load comes from this one.
Its sites are simulated at the transport seam: each has a fake transport that answers
`sinfo`/`squeue` with generated output after a random delay (network + slurmctld), and
records the name of the thread that called it. Everything above the seam is the real
exporter: poller threads, store, collector, background renderer, HTTP server.

Targets: scrape p99 under 10 ms; at least 500 scrapes/s from a loopback load generator; no
scheduler call caused by a scrape; resident memory flat over 10,000 scrapes.
Run: python benchmarks/exporter.py [--sites 100] [--jobs 10000] [--interval 10] [--seconds 10]
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from gpuhub.site import Site
from gpuhub.transport.base import Result, Transport

MODELS = ("a100", "v100")
PARTITIONS = ("gpu", "gpu_long")
STATES = ("RUNNING",) * 6 + ("PENDING",) * 3 + ("COMPLETING",)
NODES_PER_SITE = 16
PROJECTS = 20


# --- the exporter side (child process) -------------------------------------------------------------


class SimulatedSlurm(Transport):
    """A Slurm site behind a slow link: fixed output, a random delay per command."""

    where = "simulated"

    def __init__(self, sinfo: str, squeue: str, latency: tuple[float, float]) -> None:
        self.out = {"sinfo": sinfo, "squeue": squeue}
        self.latency = latency
        self.callers: list[str] = []

    def run(self, argv, stdin=None, timeout=60.0, check=True):
        self.callers.append(threading.current_thread().name)
        time.sleep(random.uniform(*self.latency))
        return Result(list(argv), 0, self.out[argv[0]], "")

    def put_text(self, path, text, mode=0o644):
        raise NotImplementedError

    def get_text(self, path):
        raise NotImplementedError

    def stream(self, argv) -> Iterator[str]:
        raise NotImplementedError


def site(index: int) -> Site:
    partitions = {m: {"partition": "gpu", "gpu_model": m, "gres_type": m, "gpus_per_node": 8} for m in MODELS}
    return Site(
        name=f"site{index:03d}",
        scheduler="slurm",
        connection={"host": f"login{index}.example.org"},
        partitions=partitions,
    )


def sinfo_output(rng: random.Random) -> str:
    lines = []
    for n in range(NODES_PER_SITE):
        used = [rng.randint(0, 8) for _ in MODELS]
        gres = ",".join(f"gpu:{m}:8(S:0-1)" for m in MODELS)
        gres_used = ",".join(f"gpu:{m}:{u}(IDX:0-{max(u - 1, 0)})" for m, u in zip(MODELS, used, strict=True))
        state = rng.choice(["mixed", "mixed", "allocated", "idle", "drained"])
        for p in PARTITIONS:
            lines.append(f"node{n:03d}|{p}{'*' if p == 'gpu' else ''}|{state}|{','.join(MODELS)}|{gres}|{gres_used}|")
    return "\n".join(lines) + "\n"


def squeue_output(rng: random.Random, jobs: int) -> str:
    lines = []
    for _ in range(jobs):
        model, gpus = rng.choice(MODELS), rng.choice((1, 2, 4, 8))
        state = rng.choice(STATES)
        reason = "Priority" if state == "PENDING" else "None"
        account, user = f"proj{rng.randrange(PROJECTS)}@{model}", f"user{rng.randrange(200)}"
        tres = f"cpu={4 * gpus},mem=64G,node=1,billing={4 * gpus},gres/gpu={gpus},gres/gpu:{model}={gpus}"
        lines.append(f"{rng.choice(PARTITIONS)}|{state}|{account}|{user}|{tres}|{reason}|")
    return "\n".join(lines) + "\n"


def serve(args: argparse.Namespace) -> None:
    """Child: run the exporter over simulated sites; answer `stats` and `quit` on stdin."""
    from prometheus_client.exposition import generate_latest

    from gpuhub.exporter.app import Exporter

    rng = random.Random(42)
    sites = [site(i) for i in range(args.sites)]
    per_site = args.jobs // args.sites
    fakes = {
        s.name: SimulatedSlurm(sinfo_output(rng), squeue_output(rng, per_site), tuple(args.latency)) for s in sites
    }
    app = Exporter(
        sites, port=0, interval=args.interval, timeout=5, ledger=None, transport_factory=lambda s: fakes[s.name]
    )
    app.start()
    deadline = time.monotonic() + 60
    while sum(1 for p in app.pollers if p.up) < len(sites):
        assert time.monotonic() < deadline, "sites did not come up"
        time.sleep(0.1)
    start = time.perf_counter()
    for _ in range(5):
        gzip.compress(generate_latest(app.registry), 6)
    render = (time.perf_counter() - start) / 5
    jobs = sum(v for part in app.store.snapshot()[1] for v in part.get("gpuhub_jobs", {}).values())

    def stats() -> dict:
        callers = [c for f in fakes.values() for c in f.callers]
        return {
            "port": app.server.port,
            "jobs": jobs,
            "render_s": render,
            "calls": len(callers),
            "calls_not_from_pollers": sum(1 for c in callers if not c.startswith("gpuhub-read-")),
            "polls": sum(p.polls for p in app.pollers),
            "renders": app.exposition.renders,
        }

    print(json.dumps(stats()), flush=True)
    for line in sys.stdin:
        if line.strip() == "stats":
            print(json.dumps(stats()), flush=True)
        else:
            break
    app.stop()


# --- the load side (this process) --------------------------------------------------------------------


def scrapes(port: int, count: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    out = []
    for _ in range(count):
        start = time.perf_counter()
        conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})  # as Prometheus asks
        response = conn.getresponse()
        response.read()
        out.append(time.perf_counter() - start)
        assert response.status == 200
    conn.close()
    return out


def paced(port: int, seconds: float, rate: float, threads: int) -> tuple[float, list[float]]:
    """Scrapes at a fixed total rate from keep-alive clients: latency under a steady load."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    start = time.monotonic()

    def worker(slot: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        n = 0
        while True:
            due = start + (n * threads + slot) / rate
            if due - start > seconds:
                break
            time.sleep(max(0.0, due - time.monotonic()))
            t0 = time.perf_counter()
            conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
            conn.getresponse().read()
            latencies[slot].append(time.perf_counter() - t0)
            n += 1
        conn.close()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, range(threads)))
    flat = [x for per in latencies for x in per]
    return len(flat) / (time.monotonic() - start), flat


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def rss_mib(pid: int) -> float:
    return int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())[1]) / 1024


def wrk(url: str, seconds: int, threads: int, connections: int) -> str:
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-H", "Accept-Encoding: gzip", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)[1]
    p50, p99 = (re.search(rf"^\s+{q}%\s+(\S+)", out, re.MULTILINE)[1] for q in (50, 99))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return (
        f"{float(rps):.0f} scrapes/s, p50 {p50}, p99 {p99}, non-2xx {bad[1] if bad else 0}"
        f"{', socket errors ' + errors[1] if errors else ''}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=10_000, help="queued jobs over all sites")
    parser.add_argument("--interval", type=float, default=10.0, help="poll interval of each site (s)")
    parser.add_argument("--latency", type=float, nargs=2, default=(0.05, 0.5), help="per-command delay range (s)")
    parser.add_argument("--seconds", type=int, default=10, help="duration of each load run")
    parser.add_argument("--scrapes", type=int, default=10_000, help="scrapes of the memory run")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return

    argv = [
        sys.executable,
        __file__,
        "--serve",
        "--sites",
        str(args.sites),
        "--jobs",
        str(args.jobs),
        "--interval",
        str(args.interval),
        "--latency",
        *map(str, args.latency),
    ]
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None

    def stats() -> dict:
        child.stdin.write("stats\n")
        child.stdin.flush()
        return json.loads(child.stdout.readline())

    try:
        first = json.loads(child.stdout.readline())
        port = first["port"]
        url = f"http://127.0.0.1:{port}/metrics"
        body = http.client.HTTPConnection("127.0.0.1", port)
        body.request("GET", "/metrics")
        text = body.getresponse().read()
        body.close()
        series = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
        print(
            f"sites: {args.sites} (simulated, {args.latency[0]:g}-{args.latency[1]:g} s per command, polled every "
            f"{args.interval:g} s), jobs in cache: {first['jobs']:.0f}, series: {series}, "
            f"exposition: {len(text) / 1024:.0f} KiB"
        )
        print(f"exposition render (background thread, not on the scrape path): {ms(first['render_s'])}")
        before = stats()

        lat = scrapes(port, 2000)
        print(
            f"sequential keep-alive client, 2000 scrapes: p50 {ms(pct(lat, 0.5))}, p99 {ms(pct(lat, 0.99))}, "
            f"max {ms(max(lat))}"
        )

        rate, flat = paced(port, args.seconds, 500, threads=8)
        print(
            f"steady 500 scrapes/s (8 keep-alive Python clients, {args.seconds} s): {rate:.0f} scrapes/s, "
            f"p50 {ms(pct(flat, 0.5))}, p99 {ms(pct(flat, 0.99))}, max {ms(max(flat))}"
        )

        if shutil.which("wrk"):
            print(f"load generator wrk -t2 -c16 -d{args.seconds}s: {wrk(url, args.seconds, 2, 16)}")
        else:
            rate, flat = paced(port, args.seconds, 100_000, threads=16)
            print(
                f"load generator (wrk not installed: 16 Python keep-alive clients, unpaced): {rate:.0f} scrapes/s, "
                f"p99 {ms(pct(flat, 0.99))}"
            )

        scrapes(port, 500)
        rss_before = rss_mib(child.pid)
        mem_lat = scrapes(port, args.scrapes)
        rss_after = rss_mib(child.pid)
        print(
            f"memory of the exporter process: RSS {rss_before:.1f} MiB before, {rss_after:.1f} MiB after "
            f"{args.scrapes} scrapes ({rss_after - rss_before:+.1f} MiB); p99 of that run {ms(pct(mem_lat, 0.99))}"
        )

        after = stats()
        calls = after["calls"] - before["calls"]
        polls = after["polls"] - before["polls"]
        print(
            f"scheduler calls while scraping: {calls} (= 2 x {polls} polls: sinfo + squeue), "
            f"{after['calls_not_from_pollers']} made from any thread but a poller's"
        )
        print(
            f"exposition renders: {after['renders'] - before['renders']} while scraping (background, after store "
            f"changes; {args.sites / args.interval:.0f} polls/s)"
        )
    finally:
        if child.poll() is None:
            child.stdin.write("quit\n")
            child.stdin.flush()
            child.wait(timeout=30)


if __name__ == "__main__":
    main()
