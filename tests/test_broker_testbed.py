"""The broker against the testbed's two real Slurm clusters, through the real console command.

Only the second cluster (gpuhub-test2, ours alone) is ever filled: the first is shared with other
tests and is never assumed empty or full.
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
import uuid
from pathlib import Path

import pytest

from gpuhub.exporter import slurm
from gpuhub.registry import load_file
from gpuhub.transport import transport_for

DATA = Path(__file__).parent / "data"
pytestmark = [pytest.mark.slurm, pytest.mark.ssh]


@pytest.fixture
def gpuhub(isolated, testbed, testbed2, monkeypatch, tmp_path):
    sites = tmp_path / "sites"
    sites.mkdir()
    for path in (DATA / "sites" / "testbed.yaml", DATA / "broker" / "testbed2.yaml"):
        (sites / path.name).write_text(path.read_text())
    monkeypatch.setenv("GPUHUB_SITES", str(sites))
    monkeypatch.chdir(tmp_path)

    def run(*args: str, code: int = 0) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "gpuhub", *args], capture_output=True, text=True, timeout=180)
        assert proc.returncode == code, (proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
        return proc

    run.sites = sites  # type: ignore[attr-defined]
    return run


def slurm2(testbed2, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "SLURM_CONF": testbed2["TESTBED2_SLURM_CONF"]}
    return subprocess.run(list(argv), capture_output=True, text=True, env=env, timeout=60, check=check)


@pytest.fixture
def cluster2_full(testbed2):
    """Every GPU of the second cluster held by a running job, for the test's duration."""
    name = f"holder-{uuid.uuid4().hex[:8]}"
    job = slurm2(testbed2, "sbatch", "--parsable", "-A", "physics", "-p", "v100", "--gres=gpu:v100:4", "-t", "10",
                 "-o", "/dev/null", "-J", name, "--wrap", "sleep 600").stdout.strip()
    try:
        deadline = time.monotonic() + 60
        while slurm2(testbed2, "squeue", "-h", "-j", job, "-o", "%T").stdout.strip() != "RUNNING":
            assert time.monotonic() < deadline, "holder job never started"
            time.sleep(0.5)
        yield job
    finally:
        slurm2(testbed2, "scancel", job, check=False)


def plan_json(gpuhub, *args: str, code: int = 0) -> dict:
    return json.loads(gpuhub("plan", "--json", "--refresh", *args, "--", "python", "train.py", code=code).stdout)


def test_second_cluster_is_its_own_cluster_behind_its_own_login_node(testbed2):
    site = load_file(DATA / "broker" / "testbed2.yaml")
    transport = transport_for(site)
    config = transport.run(["scontrol", "show", "config"], timeout=30).stdout
    assert f"ClusterName             = {testbed2['TESTBED2_CLUSTER']}" in config
    reading = slurm.read(transport, time.monotonic() + 30)
    assert [n.name for n in reading.nodes] == ["m1"]
    assert reading.nodes[0].total == {"v100": 4} and reading.default_partition == "v100"


def test_picks_the_site_with_free_gpus_of_the_kind_asked(gpuhub):
    out = plan_json(gpuhub, "--prefer", "testbed2", "--gpu-type", "v100", "--gpus", "2", "-t", "30m")
    assert (out["chosen"]["site"], out["chosen"]["partition_key"]) == ("testbed2", "v100")
    assert out["chosen"]["free_now"] == 4 and out["chosen"]["fits_now"] is True
    assert out["chosen"]["reasons"][0] == "chosen: it comes before testbed/v100 in the preference order"
    out = plan_json(gpuhub, "--prefer", "testbed2", "--gpu-type", "a100", "--gpus", "2", "-t", "30m")
    assert out["chosen"]["site"] == "testbed" and out["chosen"]["gpu_model"] == "a100"
    assert {"site": "testbed2", "reason": "no a100 GPU (has v100)"} in out["excluded"]


def test_fill_one_cluster_and_the_other_is_chosen(gpuhub, cluster2_full):
    out = plan_json(gpuhub, "--prefer", "testbed2", "--gpu-type", "v100", "--gpus", "2", "-t", "30m")
    assert out["chosen"]["site"] == "testbed"
    # testbed2's two partitions share its one node: either may be the runner-up named.
    assert re.fullmatch(r"chosen: it can start now, testbed2/(v100|debug) cannot", out["chosen"]["reasons"][0])
    full = next(r for r in out["candidates"] if r["site"] == "testbed2" and r["partition_key"] == "v100")
    assert (full["free_now"], full["fits_now"]) == (0, False)
    table = gpuhub("plan", "--prefer", "testbed2", "--gpu-type", "v100", "--gpus", "2", "-t", "30m", "--", "x").stdout
    assert table.splitlines()[1].startswith("*  testbed ")
    gpus = json.loads(gpuhub("gpus", "--sites", "testbed2", "--json").stdout)
    assert gpus["gpus"] == [{"site": "testbed2", "model": "v100", "total": 4, "allocated": 4, "free": 0,
                             "unavailable": 0, "queued": 0}]


def test_a_request_no_site_can_meet_names_every_site(gpuhub):
    proc = gpuhub("plan", "--sites", "testbed,testbed2", "--gpus", "9", "--nodes", "1", "--gpu-type", "v100", "--",
                  "x", code=2)
    lines = proc.stderr.splitlines()
    assert lines[0] == "Error: no site can run this:" and len(lines) == 3
    assert lines[1].startswith("  testbed: a100, short: no v100 GPU (has a100); v100: 9 GPUs per node asked, but "
                               "nodes of partition 'v100' on site 'testbed' have 8")
    assert lines[2].startswith("  testbed2: v100: 9 GPUs per node asked") and "have 4" in lines[2]
    proc = gpuhub("submit", "--site", "auto", "--gpus", "2", "-P", "astro", "--gpu-type", "v100", "-t", "30m",
                  "--sites", "testbed2", "--", "true", code=2)
    assert "testbed2: refused by sbatch --test-only: " in proc.stderr and "Invalid account" in proc.stderr


def _silent_server() -> tuple[socket.socket, int]:
    """A TCP server that accepts and never says a word (a login node that hangs)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held = []

    def hold() -> None:
        for _ in range(8):
            try:
                held.append(server.accept())
            except OSError:  # the test closed the server: nothing left to hold
                return

    threading.Thread(target=hold, daemon=True).start()
    return server, server.getsockname()[1]


def test_an_unreachable_site_is_skipped_within_its_timeout(gpuhub):
    server, port = _silent_server()
    text = (DATA / "broker" / "testbed2.yaml").read_text().replace("port: 2223", f"port: {port}")
    (gpuhub.sites / "hung.yaml").write_text(text.replace("name: testbed2", "name: hung"))
    (gpuhub.sites / "gone.yaml").write_text(text.replace("name: testbed2", "name: gone").replace(
        f"port: {port}", "port: 1"))
    start = time.monotonic()
    out = plan_json(gpuhub, "--sites", "hung,gone,testbed2", "--probe-timeout", "2", "--gpus", "1", "-t", "30m")
    elapsed = time.monotonic() - start
    server.close()
    assert out["chosen"]["site"] == "testbed2"
    reasons = {e["site"]: e["reason"] for e in out["excluded"]}
    assert reasons["hung"] == "skipped: no answer within 2 s"
    assert reasons["gone"].startswith("skipped: ") and "refused" in reasons["gone"]
    assert elapsed < 8, elapsed  # 2 s for the hung site, the rest in parallel; interpreter start included
    # The failure is cached: the next plan does not wait for the hung site again.
    start = time.monotonic()
    out = json.loads(gpuhub("plan", "--json", "--sites", "hung,testbed2", "--probe-timeout", "2", "--gpus", "1",
                            "-t", "30m", "--", "x").stdout)
    assert time.monotonic() - start < 2 + 3
    assert next(e for e in out["excluded"] if e["site"] == "hung")["reason"].startswith(
        "skipped: no answer within 2 s (cached")


def _squeue_mine(name: str, conf: str | None) -> list[tuple[str, str]]:
    env = {**os.environ, **({"SLURM_CONF": conf} if conf else {})}
    out = subprocess.run(["squeue", "-h", "-a", "-n", name, "-o", "%i|%T"], capture_output=True, text=True, env=env,
                         timeout=30, check=True).stdout
    return [tuple(line.split("|")) for line in out.split()]  # type: ignore[misc]


def test_failover_moves_a_stalled_job_and_one_runs(gpuhub, testbed2, cluster2_full):
    name = f"fo-{uuid.uuid4().hex[:8]}"
    # Offline: the plan follows the preference, so the job lands on the full cluster and stalls there.
    out = gpuhub("submit", "--sites", "testbed2,testbed", "--prefer", "testbed2", "--offline", "--gpu-type", "v100",
                 "--gpus", "1", "-t", "10m", "--name", name, "--failover-after", "3s", "--", "sleep", "120")
    assert "gpuhub: chose testbed2, partition v100" in out.stderr and "moves to the next of: testbed" in out.stderr
    conf2 = testbed2["TESTBED2_SLURM_CONF"]
    try:
        deadline = time.monotonic() + 90
        while True:
            status = gpuhub("status").stdout
            if "job 1 attempts: #1 testbed2:" in status and "-> #2 testbed:" in status:
                break
            assert time.monotonic() < deadline, status
            time.sleep(1)
        assert "#1 testbed2:" in status and " cancelled -> #2 testbed:" in status
        jobs = json.loads(gpuhub("jobs", "--json").stdout)
        assert sorted((j["site"], j["attempt"], j["attempt_of"]) for j in jobs) == [
            ("testbed", 2, 1), ("testbed2", 1, None)]
        first = next(j for j in jobs if j["attempt"] == 1)
        assert first["state"] == "cancelled"
        # The scheduler agrees: nothing of this job left on the full cluster, one job on the other.
        assert all(state != "RUNNING" and state != "PENDING" for _, state in _squeue_mine(name, conf2))
        deadline = time.monotonic() + 60
        while [s for _, s in _squeue_mine(name, None)] != ["RUNNING"]:
            assert time.monotonic() < deadline, _squeue_mine(name, None)
            time.sleep(1)
    finally:
        subprocess.run([sys.executable, "-m", "gpuhub", "cancel", "1", "2"], capture_output=True, timeout=120)


def test_sites_check_reports_each_wrong_value_with_its_line(gpuhub):
    text = (DATA / "broker" / "testbed2.yaml").read_text()
    wrong = (text.replace("name: testbed2", "name: wrong")
             .replace("    gpus_per_node: 4\n    cpus_per_gpu: 4\n    max_nodes: 1\n    max_walltime: 1-00:00:00",
                      "    gpus_per_node: 8\n    cpus_per_gpu: 4\n    max_nodes: 1\n    max_walltime: 2-00:00:00")
             .replace("  debug:\n    partition: debug\n    gpu_model: v100\n    gres_type: v100",
                      "  debug:\n    partition: debug\n    gpu_model: v100\n    gres_type: a100")
             .replace("project: physics", "project: astro"))
    assert wrong.count("\n") == text.count("\n") and wrong != text
    (gpuhub.sites / "wrong.yaml").write_text(wrong)
    proc = gpuhub("sites", "check", "wrong", code=1)
    path = gpuhub.sites / "wrong.yaml"
    lines = wrong.splitlines()

    def at(needle: str) -> int:
        return next(i + 1 for i, text in enumerate(lines) if needle in text)

    assert proc.stdout.splitlines() == [
        f"{path}:{at('max_walltime: 2-00:00:00')}: partitions.v100.max_walltime: 2-00:00:00, but Slurm partition "
        "v100 allows 1-00:00:00; fix: `max_walltime: 1-00:00:00`",
        f"{path}:{at('gpus_per_node: 8')}: partitions.v100.gpus_per_node: 8 in the site file, 4 per node on the "
        "cluster; fix: `gpus_per_node: 4`",
        f"{path}:{at('gres_type: a100')}: partitions.debug.gres_type: no GPU of type 'a100' on the partition's nodes "
        "(types: v100); fix: `gres_type: v100`",
        f"{path}:{at('project: astro')}: defaults.project: account 'astro' is not one of yours on gpuhub-test2 "
        "(chem, physics)",
        "wrong: 10 value(s) checked, 4 differ",
    ]
    # The true file checks out, and a value listed as unverified that checks out is reported as such.
    (gpuhub.sites / "testbed2.yaml").write_text(text + "unverified: [partitions.v100.gpus_per_node]\n")
    out = gpuhub("sites", "check", "testbed2").stdout.splitlines()
    assert out[0].endswith("partitions.v100.gpus_per_node: checks out (4 in the site file, 4 per node on the "
                           "cluster); listed under `unverified:`, it can be removed from there")
    assert out[-1] == "testbed2: 11 value(s) checked, 0 differ"
