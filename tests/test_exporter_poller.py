"""Pollers, the store, the HTTP server and the command, with a fake transport at the seam.

The real scheduler is exercised in test_exporter_prometheus.py; here the point is timing and
isolation: scrapes never reach a transport, a hanging site is down after its timeout, data
survives a failed poll or two, the exposition is rendered once per change.
"""

from __future__ import annotations

import gzip
import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpuhub.cli import main
from gpuhub.exporter.app import Exporter
from gpuhub.exporter.poller import STALE_POLLS, SitePoller, Store
from gpuhub.registry import load_file
from gpuhub.transport.base import CommandError, Result, Transport

DATA = Path(__file__).parent / "data"
TESTBED = load_file(DATA / "sites" / "testbed.yaml")
SINFO = (DATA / "exporter" / "sinfo-busy.txt").read_text()
SQUEUE = (DATA / "exporter" / "squeue-busy.txt").read_text()


class FakeSlurm(Transport):
    """Answers sinfo/squeue with recorded output; can fail, or hang until released."""

    where = "fake"

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail = False
        self.release = threading.Event()
        self.release.set()

    def run(self, argv, stdin=None, timeout=60.0, check=True):
        self.calls.append(threading.current_thread().name)
        self.release.wait()
        if self.fail:
            raise CommandError(Result(list(argv), 1, "", "slurm_load_partitions: Unable to contact slurm controller"))
        out = SINFO if argv[0] == "sinfo" else SQUEUE
        return Result(list(argv), 0, out, "")

    def put_text(self, path, text, mode=0o644):
        raise NotImplementedError

    def get_text(self, path):
        raise NotImplementedError

    def stream(self, argv) -> Iterator[str]:
        raise NotImplementedError


def values(store: Store, family: str) -> dict:
    _, parts = store.snapshot()
    out: dict = {}
    for part in parts:
        out.update(part.get(family, {}))
    return out


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_poll_publishes_gpus_jobs_and_health():
    store, fake = Store(), FakeSlurm()
    SitePoller(TESTBED, store, transport_factory=lambda s: fake).poll_once()
    assert values(store, "gpuhub_site_up") == {("testbed", "slurm"): 1.0}
    assert values(store, "gpuhub_site_poll_errors_total") == {("testbed",): 0.0}
    assert abs(values(store, "gpuhub_site_last_success_timestamp_seconds")[("testbed",)] - time.time()) < 5
    assert values(store, "gpuhub_gpus_allocated")[("testbed", "v100")] == 4
    assert fake.calls == ["gpuhub-read-testbed", "gpuhub-read-testbed"]  # one sinfo, one squeue


def test_failed_polls_keep_data_twice_then_drop_it():
    store, fake = Store(), FakeSlurm()
    poller = SitePoller(TESTBED, store, transport_factory=lambda s: fake)
    poller.poll_once()
    fake.fail = True
    for failed in range(1, STALE_POLLS + 2):
        poller.poll_once()
        assert values(store, "gpuhub_site_up") == {("testbed", "slurm"): 0.0}
        assert values(store, "gpuhub_site_poll_errors_total") == {("testbed",): float(failed)}
        assert bool(values(store, "gpuhub_gpus")) == (failed <= STALE_POLLS)
    assert "Unable to contact slurm controller" in (poller.last_error or "")
    assert ("testbed",) in values(store, "gpuhub_site_last_success_timestamp_seconds")  # the last good one stays
    fake.fail = False
    poller.poll_once()
    assert values(store, "gpuhub_site_up") == {("testbed", "slurm"): 1.0}
    assert values(store, "gpuhub_gpus")


def test_hanging_site_is_down_after_its_timeout_and_scrapes_stay_fast():
    fake = FakeSlurm()
    fake.release.clear()
    app = Exporter([TESTBED], port=0, interval=0.5, timeout=0.3, ledger=None, transport_factory=lambda s: fake)
    app.start()
    try:
        started = time.monotonic()
        worst = 0.0
        while time.monotonic() - started < 1.5:
            t0 = time.monotonic()
            with urllib.request.urlopen(app.url, timeout=5) as response:
                body = response.read().decode()
            worst = max(worst, time.monotonic() - t0)
        assert 'gpuhub_site_up{scheduler="slurm",site="testbed"} 0.0' in body
        # A scrape that waited for the stuck poll would take at least the poll's 0.3 s timeout.
        assert worst < 0.3, f"a scrape took {worst:.3f} s while the site hung"
        assert fake.calls == ["gpuhub-read-testbed"]  # never a second poll while one is stuck
        errors = values(app.store, "gpuhub_site_poll_errors_total")[("testbed",)]
        assert errors >= 2  # each interval spent stuck counts as a failed poll
        fake.release.set()
        wait_for(lambda: values(app.store, "gpuhub_site_up") == {("testbed", "slurm"): 1.0})
    finally:
        fake.release.set()
        app.stop()


def test_scrapes_never_call_the_scheduler_nor_render():
    fake = FakeSlurm()
    app = Exporter([TESTBED], port=0, interval=3600, timeout=5, transport_factory=lambda s: fake)
    app.start()
    try:
        wait_for(lambda: values(app.store, "gpuhub_site_up"))
        with urllib.request.urlopen(app.url, timeout=5) as response:  # the first scrape in a format renders it
            response.read()
        time.sleep(0.5)  # let the background renderer settle
        calls, renders = len(fake.calls), app.exposition.renders
        conn = http.client.HTTPConnection("127.0.0.1", app.server.port, timeout=5)
        for _ in range(200):  # one keep-alive connection, as Prometheus uses
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            assert response.status == 200
            response.read()
        assert len(fake.calls) == calls == 2
        assert app.exposition.renders == renders
        # a poll changes the store: the renderer, not a scrape, brings the body up to date
        fake.fail = True
        app.pollers[0].poll_once()
        wait_for(lambda: app.exposition.renders > renders)

        def scraped() -> str:
            conn.request("GET", "/metrics")
            return conn.getresponse().read().decode()

        wait_for(lambda: 'gpuhub_site_up{scheduler="slurm",site="testbed"} 0.0' in scraped())
        conn.close()
    finally:
        app.stop()


def test_http_formats():
    fake = FakeSlurm()
    app = Exporter([TESTBED], port=0, interval=3600, transport_factory=lambda s: fake)
    app.start()
    try:
        wait_for(lambda: values(app.store, "gpuhub_site_up"))
        base = app.url.rsplit("/", 1)[0]
        request = urllib.request.Request(app.url, headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.headers["Content-Encoding"] == "gzip"
            plain = gzip.decompress(response.read()).decode()
        assert plain.startswith("# HELP gpuhub_build_info")
        assert "# TYPE gpuhub_site_poll_errors_total counter" in plain
        request = urllib.request.Request(app.url, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.headers["Content-Type"].startswith("application/openmetrics-text")
            assert response.read().decode().endswith("# EOF\n")
        with urllib.request.urlopen(
            app.url + "?name[]=gpuhub_site_up&name[]=gpuhub_site_poll_errors_total"
        ) as response:
            only = response.read().decode()
        assert "gpuhub_site_up{" in only and "gpuhub_site_poll_errors_total{" in only and "gpuhub_gpus{" not in only
        with urllib.request.urlopen(base + "/", timeout=5) as response:
            assert b"/metrics" in response.read()
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "/nope", timeout=5)
        assert err.value.code == 404
    finally:
        app.stop()


def test_gpuhub_help_does_not_import_prometheus_client():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from gpuhub.cli import main\n"
        "for args in (['--help'], ['exporter', '--help']):\n"
        "    result = CliRunner().invoke(main, args)\n"
        "    assert result.exit_code == 0, result.output\n"
        "print('prometheus_client' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_command_refuses_without_sites(monkeypatch, tmp_path):
    result = CliRunner().invoke(main, ["exporter", "--port", "0"])
    assert result.exit_code == 2
    assert "no site configured for the exporter" in result.output
    result = CliRunner().invoke(main, ["exporter", "--sites", "nope", "--port", "0"])
    assert result.exit_code == 2 and "unknown site 'nope'" in result.output


FAKE_NVIDIA_SMI = """#!/bin/sh
case "$1" in
  --query-gpu=*) cat "$(dirname "$0")/gpus.csv" ;;
  --query-compute-apps=*) cat "$(dirname "$0")/apps.csv" ;;
  *) exit 2 ;;
esac
"""


def fake_nvidia_smi(directory: Path) -> Path:
    """A stand-in ``nvidia-smi`` printing the documented csv output of tests/data/exporter/nvidia-smi.txt."""
    directory.mkdir(parents=True, exist_ok=True)
    gpus, _, apps = (DATA / "exporter" / "nvidia-smi.txt").read_text().partition("#gpuhub-compute-apps\n")
    (directory / "gpus.csv").write_text(gpus)
    (directory / "apps.csv").write_text(apps)
    script = directory / "nvidia-smi"
    script.write_text(FAKE_NVIDIA_SMI)
    script.chmod(0o755)
    return directory


def test_command_serves_a_lab_server_and_stops_on_sigterm(tmp_path):
    bin_dir = fake_nvidia_smi(tmp_path / "bin")
    sites = tmp_path / "sites"
    sites.mkdir()
    (sites / "lab.yaml").write_text(
        "name: lab\nscheduler: local\npartitions:\n  gpu: {gpu_model: a40, gpus_per_node: 4}\n"
    )
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "GPUHUB_SITES": str(sites),
        "GPUHUB_LEDGER": str(tmp_path / "no-ledger.sqlite"),
    }
    body = _scrape_exporter(env, [], 'gpuhub_gpus_unavailable{gpu_model="a40",site="lab"} 1.0')
    assert 'gpuhub_gpus_allocated{gpu_model="a40",site="lab"} 2.0' in body
    assert 'gpuhub_site_up{scheduler="local",site="lab"} 1.0' in body
    assert "gpuhub_ledger_up 0.0" in body  # a missing ledger is reported, never created
    assert not (tmp_path / "no-ledger.sqlite").exists()


def _scrape_exporter(env: dict[str, str], args: list[str], needle: str) -> str:
    """Start the real `gpuhub exporter`, scrape it until ``needle`` shows, stop it with SIGTERM."""
    proc = subprocess.Popen([sys.executable, "-m", "gpuhub", "exporter", *args, "--port", "0", "--interval", "0.2"],
                            env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        url = None
        while url is None:
            line = proc.stderr.readline()
            assert line, "the exporter ended before serving"
            url = re.search(r"serving (http://\S+)", line)
        deadline = time.monotonic() + 10
        body = ""
        while needle not in body:
            assert time.monotonic() < deadline, body
            time.sleep(0.1)
            with urllib.request.urlopen(url[1], timeout=5) as response:
                body = response.read().decode()
        return body
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def _path_without_nvidia_smi(directory: Path) -> str:
    directory.mkdir(parents=True)
    (directory / "sh").symlink_to(shutil.which("sh") or "/bin/sh")
    return str(directory)


def test_machine_without_nvidia_smi_and_without_gpus_is_up(tmp_path, monkeypatch):
    """The shipped `local` site declares 0 GPUs: no nvidia-smi there means no GPUs, not a down site."""
    from gpuhub.exporter.poller import reader_for
    from gpuhub.registry import load_site
    from gpuhub.transport.local import LocalTransport

    monkeypatch.setenv("PATH", _path_without_nvidia_smi(tmp_path / "bin"))
    reading = reader_for(load_site("local"))(LocalTransport(), time.monotonic() + 10)
    assert [(n.available, n.total) for n in reading.nodes] == [(True, {})]
    sites = tmp_path / "sites"
    sites.mkdir()
    (sites / "lab.yaml").write_text("scheduler: local\npartitions:\n  gpu: {gpu_model: a40, gpus_per_node: 4}\n")
    monkeypatch.setenv("GPUHUB_SITES", str(sites))
    with pytest.raises(CommandError):  # GPUs declared but nvidia-smi missing: that site is down
        reader_for(load_site("lab"))(LocalTransport(), time.monotonic() + 10)


def test_exporter_reports_the_local_site_up_without_nvidia_smi(tmp_path):
    env = {**os.environ, "PATH": _path_without_nvidia_smi(tmp_path / "bin"),
           "GPUHUB_LEDGER": str(tmp_path / "no-ledger.sqlite")}
    body = _scrape_exporter(env, ["--sites", "local"], "gpuhub_site_up{")
    assert 'gpuhub_site_up{scheduler="local",site="local"} 1.0' in body
