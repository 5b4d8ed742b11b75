"""End to end: the real ``gpuhub exporter`` polling the Slurm testbed over SSH, scraped every
second by a real Prometheus (Debian package, started by scripts/testbed/prometheus.sh).

Other test sessions use the testbed at the same time, so GPU counts are never compared with
fixed numbers: each PromQL answer is compared with ``sinfo`` read independently just before
and just after the exporter's poll behind it (and the reading is retried until the cluster
held still in between), and the effect of our own 2-GPU job is measured as a difference that
discounts other people's running v100 jobs.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from gpuhub import jobs as jobs_api
from gpuhub.exporter.app import Exporter
from gpuhub.ledger import Ledger
from gpuhub.registry import load_file
from gpuhub.request import JobRequest
from gpuhub.states import State
from gpuhub.transport import close_all
from test_exporter_poller import fake_nvidia_smi
from test_exporter_shipped import dashboard_exprs, rule_exprs

pytestmark = [pytest.mark.slurm, pytest.mark.ssh]

REPO = Path(__file__).resolve().parent.parent
SITES = REPO / "tests" / "data" / "sites"
PROMETHEUS_SH = REPO / "scripts" / "testbed" / "prometheus.sh"
ALERTS = REPO / "examples" / "monitoring" / "gpuhub-alerts.yml"
MODEL = "v100"  # the GPU model our 2-GPU job takes (the testbed site's "v100" partition)
TIMEOUT = 3.0  # the exporter's --timeout
SCRAPE_TIMEOUT = 1.0  # Prometheus' scrape_timeout
JOB_NAME = "gpuhub-exporter-test"
# Grafana variables, as a dashboard with every site selected over a short range would send them.
GRAFANA_VARS = {"$site": ".*", "$__range": "5m", "$__rate_interval": "1m", "$__interval": "15s"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SilentServer:
    """Accepts TCP connections and never sends a byte: an SSH login node that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


class Prometheus:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: str) -> dict:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            data = json.load(response)
        assert data["status"] == "success", data
        return data["data"]

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr)["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def wait(self, expr: str, timeout: float = 30.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result:
                return result
            assert time.monotonic() < deadline, f"no series for {expr!r} after {timeout} s"
            time.sleep(0.5)


@dataclass
class Stack:
    prometheus: Prometheus
    exporter_url: str
    ledger_path: Path
    silent: SilentServer
    log: Path


@pytest.fixture(scope="module")
def stack(testbed, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exporter-stack")
    silent = SilentServer()
    sites = tmp / "sites"
    sites.mkdir()
    # A Slurm site whose login node accepts the connection and then says nothing.
    (sites / "hung.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "hung",
                "scheduler": "slurm",
                "connection": {
                    "host": "127.0.0.1",
                    "port": silent.port,
                    "user": "hubuser",
                    "identity_file": testbed["TESTBED_SSH_KEY"],
                    "known_hosts": testbed["TESTBED_KNOWN_HOSTS"],
                    "connect_timeout": 600,
                },
                "partitions": {"gpu": {"partition": "gpu", "gpus_per_node": 8}},
            }
        )
    )
    # A lab server: this machine, with an nvidia-smi printing the documented output (4 A40, 1 broken).
    (sites / "lab.yaml").write_text(
        "name: lab\nscheduler: local\npartitions:\n  gpu: {gpu_model: a40, gpus_per_node: 4}\n"
    )
    bin_dir = fake_nvidia_smi(tmp / "bin")
    ledger_path = tmp / "ledger.sqlite"
    Ledger(ledger_path).close()  # the exporter reads a ledger, never creates one
    log = tmp / "exporter.log"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "GPUHUB_SITES": f"{sites}{os.pathsep}{SITES}",
        # nothing from the developer's own gpuhub set-up
        "GPUHUB_CONFIG_DIR": str(tmp / "config"),
        "GPUHUB_SYSTEM_CONFIG_DIR": str(tmp / "etc"),
        "GPUHUB_DATA_DIR": str(tmp / "data"),
    }
    argv = [
        sys.executable,
        "-m",
        "gpuhub",
        "exporter",
        "--sites",
        "testbed,hung,lab",
        "--port",
        "0",
        "--interval",
        "1",
        "--timeout",
        str(TIMEOUT),
        "--ledger",
        str(ledger_path),
    ]
    with open(log, "w") as log_file:
        proc = subprocess.Popen(argv, env=env, stderr=log_file, stdout=subprocess.DEVNULL)
    # A second exporter, in this process, whose ledger is missing: gives GpuhubLedgerUnreadable a series.
    no_ledger = Exporter([], port=0, ledger=tmp / "missing.sqlite", interval=1)
    no_ledger.start()
    prom_dir = tmp / "prometheus"
    try:
        url = _wait_for_url(log, proc)
        exporter_port = urllib.parse.urlsplit(url).port
        prom_port = free_port()
        config = tmp / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                               "scrape_timeout": f"{SCRAPE_TIMEOUT:g}s"},
                    "rule_files": [str(ALERTS)],
                    "scrape_configs": [
                        {"job_name": "gpuhub", "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]},
                        {
                            "job_name": "gpuhub-no-ledger",
                            "static_configs": [{"targets": [f"127.0.0.1:{no_ledger.server.port}"]}],
                        },
                    ],
                }
            )
        )
        subprocess.run(
            [
                "bash",
                str(PROMETHEUS_SH),
                "start",
                "--config",
                str(config),
                "--port",
                str(prom_port),
                "--dir",
                str(prom_dir),
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        )
        prometheus = Prometheus(prom_port)
        prometheus.wait('gpuhub_site_up{site="testbed"} == 1')
        yield Stack(prometheus, url, ledger_path, silent, log)
    finally:
        subprocess.run(["bash", str(PROMETHEUS_SH), "stop", "--dir", str(prom_dir)], check=False, timeout=60)
        proc.terminate()
        try:
            assert proc.wait(timeout=30) == 0, "the exporter did not stop cleanly on SIGTERM"
        finally:
            if proc.poll() is None:
                proc.kill()
        no_ledger.stop()
        silent.close()


def _wait_for_url(log: Path, proc: subprocess.Popen) -> str:
    deadline = time.monotonic() + 30
    while True:
        found = re.search(r"serving (http://\S+)", log.read_text())
        if found:
            return found[1]
        assert proc.poll() is None, f"the exporter stopped: {log.read_text()}"
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


@pytest.fixture
def site(monkeypatch):
    monkeypatch.setenv("GPUHUB_SITES", str(SITES))
    yield load_file(SITES / "testbed.yaml")
    close_all()


# --- reading the cluster independently of the exporter -------------------------------------------


def cluster(mine: set[str]) -> tuple[int, int, int]:
    """(allocated, idle) v100 GPUs from a plain ``sinfo``, and v100 GPUs of running jobs not in ``mine``."""
    out = subprocess.run(
        ["sinfo", "-N", "-h", "-O", "NodeList:|,StateLong:|,Gres:|,GresUsed:|"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    allocated = idle = 0
    seen = set()
    for line in out.splitlines():
        node, state, gres, used = line.split("|")[:4]
        if node in seen:
            continue
        seen.add(node)
        total = int(re.search(rf"gpu:{MODEL}:(\d+)", gres)[1])
        busy = int(re.search(rf"gpu:{MODEL}:(\d+)", used)[1])
        allocated += busy
        if state.rstrip("~-") in ("idle", "mixed", "allocated", "completing", "planned"):
            idle += total - busy
    queue = subprocess.run(
        ["squeue", "-h", "-t", "R", "-O", "JobID:|,tres-alloc:|"], capture_output=True, text=True, check=True
    ).stdout
    others = 0
    for line in queue.splitlines():
        job_id, tres = line.split("|")[:2]
        found = re.search(rf"gres/gpu:{MODEL}=(\d+)", tres)
        if found and job_id.strip() not in mine:
            others += int(found[1])
    return allocated, idle, others


@dataclass
class Reading:
    allocated: float
    idle: float
    others: int


def steady_reading(prometheus: Prometheus, mine: set[str]) -> Reading:
    """Prometheus' v100 figures, checked equal to sinfo read before and after the poll they come from."""
    metrics = "gpuhub_gpus_allocated|gpuhub_gpus_idle|gpuhub_site_last_success_timestamp_seconds"
    for _ in range(40):
        before, t_before = cluster(mine), time.time()
        while True:
            rows = prometheus.query(f'{{__name__=~"{metrics}", site="testbed"}}')
            got = {(r["metric"]["__name__"], r["metric"].get("gpu_model")): float(r["value"][1]) for r in rows}
            polled = got.get(("gpuhub_site_last_success_timestamp_seconds", None), 0)
            if polled > t_before + 0.3:  # a poll that ran wholly after `before` (a poll takes ~0.1 s)
                break
            time.sleep(0.2)
        after = cluster(mine)
        if before == after:
            allocated = got[("gpuhub_gpus_allocated", MODEL)]
            idle = got[("gpuhub_gpus_idle", MODEL)]
            assert (allocated, idle) == before[:2], "PromQL disagrees with sinfo on a still cluster"
            return Reading(allocated, idle, before[2])
        time.sleep(0.5)
    pytest.fail("the testbed never held still for a reading")


# --- tests ------------------------------------------------------------------------------------------


def test_hung_site_is_down_and_scrapes_stay_fast(stack):
    prometheus = stack.prometheus
    prometheus.wait('gpuhub_site_up{site="hung"} == 0', timeout=TIMEOUT + 15)
    assert stack.silent.accepted, "the exporter never reached the silent login node"
    assert prometheus.value('gpuhub_site_up{site="testbed"}') == 1
    assert prometheus.value('gpuhub_site_up{site="lab"}') == 1
    assert prometheus.value('gpuhub_site_poll_errors_total{site="hung"}') >= 1
    assert f"no answer within {TIMEOUT:g} s" in stack.log.read_text()
    assert prometheus.value('up{job="gpuhub"}') == 1
    # Prometheus' own measure of every scrape since it started, while the hung site stayed stuck:
    # a scrape that waited for the hung site would take its 3 s timeout and fail Prometheus' 1 s one.
    slowest = prometheus.value('max_over_time(scrape_duration_seconds{job="gpuhub"}[5m])')
    assert slowest < SCRAPE_TIMEOUT < TIMEOUT, slowest
    durations = []
    for _ in range(100):
        t0 = time.perf_counter()
        with urllib.request.urlopen(stack.exporter_url, timeout=5) as response:
            response.read()
        durations.append(time.perf_counter() - t0)
    assert max(durations) < SCRAPE_TIMEOUT, max(durations)


def test_exposition_passes_promtool(stack):
    with urllib.request.urlopen(stack.exporter_url, timeout=5) as response:
        body = response.read()
    assert b"gpuhub_gpus_idle{" in body
    check = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_two_gpu_job_moves_allocated_and_idle_of_its_model(stack, site):
    prometheus = stack.prometheus
    ledger = Ledger(stack.ledger_path)
    mine: set[str] = set()
    job = None
    try:
        before = steady_reading(prometheus, mine)
        job = jobs_api.submit(
            JobRequest(command=["sleep", "600"], gpus=2, gpu_type=MODEL, project="abc@v100", time="15m", name=JOB_NAME),
            site=site,
            ledger=ledger,
        )
        mine.add(job.scheduler_id)
        deadline = time.monotonic() + 120
        while job.state != State.RUNNING:
            assert time.monotonic() < deadline, "the 2-GPU job did not start"
            time.sleep(0.5)
        tres = subprocess.run(
            ["squeue", "-h", "-j", job.scheduler_id, "-O", "tres-alloc:|"], capture_output=True, text=True
        ).stdout
        assert f"gres/gpu:{MODEL}=2" in tres
        after = steady_reading(prometheus, mine)
        others = after.others - before.others  # other people's v100 jobs that started or ended meanwhile
        assert after.allocated - before.allocated == 2 + others
        assert after.idle - before.idle == -(2 + others)
        assert (
            prometheus.value(f'gpuhub_project_gpus_allocated{{site="testbed",project="abc",gpu_model="{MODEL}"}}') >= 2
        )
        prometheus.wait('gpuhub_submissions_total{site="testbed",outcome="accepted"} >= 1', timeout=15)

        jobs_api.cancel([job.record], ledger)
        deadline = time.monotonic() + 120
        while not (job.refresh().state.finished and job.record.ended_at and job.record.started_at):
            assert time.monotonic() < deadline, job.record
            time.sleep(1)
        mine.clear()
        expected = sum(
            r.plan["gpus"] * (r.ended_at - r.started_at)
            for r in ledger.jobs(site="testbed")
            if r.state.finished
            and r.started_at
            and r.ended_at
            and r.plan.get("gpu_model") == MODEL
            and r.request.get("project", "").split("@")[0] == "abc"
        )
        assert expected >= 2 * (job.record.ended_at - job.record.started_at) > 0
        expr = f'gpuhub_gpu_seconds_total{{site="testbed",project="abc",gpu_model="{MODEL}"}}'
        deadline = time.monotonic() + 15
        while prometheus.value(expr) != pytest.approx(expected, abs=1e-3):
            assert time.monotonic() < deadline, (prometheus.value(expr), expected)
            time.sleep(0.5)
    finally:
        if job is not None and not job.record.state.finished:
            subprocess.run(["scancel", job.scheduler_id], check=False)
        ledger.close()


@pytest.fixture
def queue_jobs(stack, site):
    """A running 1-GPU job, and two jobs pending until a begin time an hour away (queue pressure
    that blocks nobody): one asks for a v100, one for any GPU. Sent as hubuser over gpuhub's transport."""
    from gpuhub.transport import transport_for

    transport = transport_for(site)
    ids = []
    for extra in (
        [f"--gres=gpu:{MODEL}:1"],
        [f"--gres=gpu:{MODEL}:1", "--begin=now+1hour"],
        ["--gres=gpu:1", "--begin=now+1hour"],
    ):
        argv = [
            "sbatch",
            "--parsable",
            "-J",
            JOB_NAME,
            "-p",
            "gpu",
            "-t",
            "10",
            "-o",
            "/dev/null",
            *extra,
            "--wrap",
            "sleep 600",
        ]
        ids.append(transport.run(argv).stdout.strip().split(";")[0])
    deadline = time.monotonic() + 120
    while transport.run(["squeue", "-h", "-j", ids[0], "-o", "%T"]).stdout.strip() != "RUNNING":
        assert time.monotonic() < deadline, "the running job did not start"
        time.sleep(0.5)
    yield ids
    transport.run(["scancel", *ids], check=False)


def test_every_dashboard_and_rule_expression_returns_series(stack, site, queue_jobs):
    prometheus = stack.prometheus
    ledger = Ledger(stack.ledger_path)
    try:
        # A finished gpuhub job, so the ledger counters have something to count.
        job = jobs_api.submit(
            JobRequest(command=["true"], gpus=1, project="physics", time="5m", name=JOB_NAME), site=site, ledger=ledger
        )
        assert job.wait(timeout=180, interval=1) == State.COMPLETED
        prometheus.wait('gpuhub_gpu_seconds_total{site="testbed",project="physics"}', timeout=15)
    finally:
        ledger.close()
    prometheus.wait(f'gpuhub_jobs_gpus_requested{{site="testbed",state="pending",gpu_model="{MODEL}"}}', timeout=15)
    prometheus.wait('gpuhub_jobs_gpus_requested{site="testbed",state="pending",gpu_model="any"}', timeout=15)
    prometheus.wait('gpuhub_project_gpus_allocated{site="testbed",project="physics"}', timeout=15)
    time.sleep(3)  # a few more scrapes, so increase() and rate windows hold two samples

    exprs = dashboard_exprs() + rule_exprs()
    for name, value in GRAFANA_VARS.items():
        exprs = [e.replace(name, value) for e in exprs]
    empty = []
    for expr in exprs:
        assert "$" not in expr, expr
        if not prometheus.query(expr):
            empty.append(expr)
    assert not empty, f"expressions without a series: {empty}"
    # the alerts that fire here for real reasons
    site_down = prometheus.query("gpuhub_site_up == 0")
    assert {r["metric"]["site"] for r in site_down} == {"hung"}
    waiting = prometheus.query(rule_exprs()[1])
    assert any(r["metric"].get("site") == "testbed" for r in waiting)
    unavailable = prometheus.query(rule_exprs()[2])
    assert any(r["metric"]["site"] == "lab" and r["metric"]["gpu_model"] == "a40" for r in unavailable)


def test_alert_rules_load_and_evaluate(stack):
    deadline = time.monotonic() + 20
    while True:
        rules = [r for g in stack.prometheus.get("/api/v1/rules")["groups"] for r in g["rules"]]
        if rules and all(r["health"] == "ok" for r in rules):
            break
        assert time.monotonic() < deadline, rules
        time.sleep(0.5)
    assert {r["name"] for r in rules} == {
        "GpuhubSiteDown",
        "GpuhubGpusIdleWhileJobsWait",
        "GpuhubGpusUnavailable",
        "GpuhubLedgerUnreadable",
    }
