"""Lab-server jobs through the gpuhub command, for real: a pool of fake hosts on the loopback
sshd (all 127.0.0.1, each with its own GPUs and lock directory), the ledger, status, cancel,
usage and `gpuhub gpus`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labbed import lab_env, make_host, remove_host, site_yaml

pytestmark = pytest.mark.ssh


@pytest.fixture
def env(testbed):
    return lab_env(testbed)


@pytest.fixture
def pool(env, tmp_path, monkeypatch):
    hosts = [make_host(env, f"gpu{i}", gpus=4) for i in range(1, 4)]
    sites = tmp_path / "sites"
    sites.mkdir()
    (sites / "labpool.yaml").write_text(site_yaml(env, "labpool", hosts))
    monkeypatch.setenv("GPUHUB_SITES", str(sites))
    yield hosts
    subprocess.run([sys.executable, "-m", "gpuhub", "cancel", *all_ids()], capture_output=True, timeout=120)
    remove_job_dirs()
    for host in hosts:
        remove_host(host)


def remove_job_dirs() -> None:
    from gpuhub.backends.lab.backend import dir_id
    from gpuhub.registry import load_site
    from gpuhub.transport import transport_for

    rows = json.loads(gpuhub("jobs", "--json", "-n", "0").stdout)
    dirs = [dir_id(r["scheduler_id"]) for r in rows if r["scheduler_id"]]
    if dirs:
        site = load_site("labpool")
        script = 'cd "$HOME/.gpuhub/jobs" && rm -rf -- "$@"'
        transport_for(site, site.lab.hosts[0]).run(["bash", "-c", script, "cleanup", *dirs], check=False)


def gpuhub(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "gpuhub", *args], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"gpuhub {' '.join(args)} -> {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def all_ids() -> list[str]:
    rows = json.loads(gpuhub("jobs", "--json", "-n", "0").stdout)
    return [str(r["id"]) for r in rows if r["state"] not in ("completed", "failed", "cancelled", "timeout")]


def submit(*args: str) -> tuple[dict, str]:
    result = gpuhub("submit", "--site", "labpool", "--json", *args)
    return json.loads(result.stdout), result.stderr


def status(job_id: int) -> dict:
    return json.loads(gpuhub("status", str(job_id), "--json").stdout)[0]


def wait_state(job_id: int, states: set[str], timeout: float = 40) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        row = status(job_id)
        if row["state"] in states:
            return row
        assert time.monotonic() < deadline, row
        time.sleep(0.3)


def gpu_table() -> list[dict]:
    return json.loads(gpuhub("gpus", "--site", "labpool", "--json").stdout)["lab_gpus"]


def test_pool_placement_least_loaded_first(pool):
    gpu1, gpu2, gpu3 = pool
    gpu1.set_gpus(4, busy={0: 9000, 1: 9000, 2: 9000})  # 1 free
    gpu2.set_gpus(4, busy={0: 9000})  # 3 free
    gpu3.set_gpus(4, busy={0: 9000, 1: 9000})  # 2 free
    job, note = submit("--gpus", "2", "--", "sleep", "30")
    assert job["scheduler_id"].endswith("@gpu2")
    assert "host gpu2: 3 of 4 GPU(s) free, least loaded of 3 hosts" in note
    second, note = submit("--gpus", "2", "--", "sleep", "30")  # gpu2 now 1 free, gpu3 2 free
    assert second["scheduler_id"].endswith("@gpu3"), note
    third = gpuhub("submit", "--site", "labpool", "--gpus", "3", "--", "true", check=False)
    assert third.returncode == 1 and "no host of labpool can run 3 GPU(s) now" in third.stderr
    assert "--wait-for-gpus" in third.stderr and "Traceback" not in third.stderr
    rows = {(r["host"], r["gpu"]): r for r in gpu_table()}
    held = {k for k, r in rows.items() if r["state"] == "held"}
    assert held == {("gpu2", 1), ("gpu2", 2), ("gpu3", 2), ("gpu3", 3)}
    assert rows[("gpu2", 1)]["job"] == str(job["id"]) and rows[("gpu2", 1)]["user"] == "hubuser"
    assert rows[("gpu1", 0)]["state"] == "foreign"
    text = gpuhub("gpus", "--site", "labpool").stdout
    assert "gpu2" in text and "held" in text and "hubuser" in text
    summary = json.loads(gpuhub("gpus", "--sites", "labpool", "--json").stdout)["gpus"]
    assert summary == [{"site": "labpool", "model": "a40", "total": 12, "allocated": 10, "free": 2,
                        "unavailable": 0, "queued": 0}]


def test_cuda_visible_devices_and_torchrun(pool):
    job, _ = submit("--gpus", "2", "--", "bash", "-c", 'echo "$CUDA_VISIBLE_DEVICES $CUDA_DEVICE_ORDER"')
    wait_state(job["id"], {"completed"})
    assert gpuhub("logs", str(job["id"])).stdout.strip() == "0,1 PCI_BUS_ID"
    assert {r["state"] for r in gpu_table()} == {"free"}  # released at the end
    rendered = gpuhub("render", "--site", "labpool", "--gpus", "2", "--launcher", "torchrun", "--", "train.py").stdout
    assert "torchrun --standalone --nproc-per-node=2 train.py" in rendered


def test_queued_job_is_pending_with_reason_then_runs(pool):
    for host in pool[1:]:
        host.set_gpus(4, busy={0: 9000, 1: 9000, 2: 9000, 3: 9000})
    first, _ = submit("--gpus", "4", "--", "sleep", "12")
    queued, note = submit("--gpus", "1", "--wait-for-gpus", "--", "true")
    assert "queued on gpu1" in note
    row = status(queued["id"])
    assert row["state"] == "pending" and "waiting for GPUs on gpu1" in row["reason"]
    done = wait_state(queued["id"], {"completed", "failed"})
    assert done["state"] == "completed"
    assert wait_state(first["id"], {"completed"})["ended_at"] <= done["started_at"] + 1


def test_cancel_frees_the_gpus(pool):
    job, _ = submit("--gpus", "3", "--", "sleep", "300")
    assert sum(r["state"] == "held" for r in gpu_table()) == 3
    assert "cancelled" in gpuhub("cancel", str(job["id"])).stdout
    assert sum(r["state"] == "held" for r in gpu_table()) == 0


def test_usage_records_gpu_seconds(pool):
    job, _ = submit("--gpus", "2", "--", "sleep", "3")
    row = wait_state(job["id"], {"completed"})
    seconds = row["ended_at"] - row["started_at"]
    assert 2 <= seconds <= 5  # from the moment the GPUs were taken (whole seconds on the host) to the end
    gpuhub("usage", "collect", "--site", "labpool")
    report = json.loads(gpuhub("usage", "report", "--by", "site", "--site", "labpool", "--format", "json").stdout)
    assert report["total"]["jobs"] == 1
    # 2 GPUs x the whole seconds the host stamped (start when the GPUs were taken, end at exit)
    assert report["total"]["gpu_hours"] * 3600 == pytest.approx(2 * seconds, abs=2.1)
    assert 4 <= report["total"]["gpu_hours"] * 3600 <= 10


def test_exporter_counts_gpus_per_host(pool):
    from gpuhub.backends import backend_for
    from gpuhub.exporter.samples import GpuModels, site_samples
    from gpuhub.registry import load_site
    from gpuhub.transport import transport_for

    pool[0].set_gpus(4, busy={3: 9000})
    job, _ = submit("--gpus", "2", "--", "sleep", "30")
    assert job["scheduler_id"].endswith("@gpu2")  # gpu2 and gpu3 tie: the first listed
    site = load_site("labpool")
    reading = backend_for("ssh").read_gpus(site, transport_for(site), time.monotonic() + 30)
    samples = site_samples("labpool", reading, GpuModels(site))
    allocated, idle = samples["gpuhub_host_gpus_allocated"], samples["gpuhub_host_gpus_idle"]
    assert {k[1]: v for k, v in allocated.items()} == {"gpu1": 1, "gpu2": 2, "gpu3": 0}
    assert {k[1]: v for k, v in idle.items()} == {"gpu1": 3, "gpu2": 2, "gpu3": 4}
    assert samples["gpuhub_gpus_allocated"] == {("labpool", "a40"): 3}


def test_torchrun_gets_the_reserved_gpus(env, pool, tmp_path, monkeypatch):
    python = _job_python()
    sites = tmp_path / "sites"
    (sites / "labpool.yaml").write_text(
        site_yaml(env, "labpool", pool) + f"setup:\n  - export PATH={Path(python).parent}:$PATH\n"
    )
    script = 'echo "$LOCAL_RANK $WORLD_SIZE $CUDA_VISIBLE_DEVICES"'
    job, _ = submit("--gpus", "2", "--launcher", "torchrun", "--", "bash", "-c", script)
    assert wait_state(job["id"], {"completed", "failed"}, timeout=120)["state"] == "completed"
    lines = sorted(gpuhub("logs", str(job["id"])).stdout.split("\n"))
    assert [line for line in lines if line] == ["0 2 0,1", "1 2 0,1"]


def _job_python() -> str:
    env_file = Path("/var/lib/gpuhub-testbed/job-python.env")
    python = env_file.read_text().partition("=")[2].strip() if env_file.is_file() else ""
    if not python or not (Path(python).parent / "torchrun").exists():
        pytest.skip("no PyTorch for testbed jobs: run scripts/testbed/job-python.sh")
    return python


def test_a_stale_view_of_the_pool_costs_a_retry_not_a_refusal(pool):
    import gpuhub

    request = gpuhub.JobRequest(command=["sleep", "30"], gpus=2, name="view")
    first = gpuhub.submit(request, site="labpool")  # probes the pool, then keeps that view
    assert first.scheduler_id.endswith("@gpu1") and "least loaded of 3 hosts" in first.notes[0]
    other, _ = submit("--gpus", "4", "--", "sleep", "30")  # another process fills gpu2
    assert other["scheduler_id"].endswith("@gpu2")
    second = gpuhub.submit(request, site="labpool")  # the kept view still thinks gpu2 is empty
    assert second.scheduler_id.endswith("@gpu3"), second.notes
    assert status(second.id)["state"] == "running"


def test_ten_concurrent_submit_commands_from_two_users_get_disjoint_gpus(env, tmp_path):
    """Ten `gpuhub submit` processes at once, five per login user, each user with their own site
    file, key and ledger, on one host with 8 GPUs: 8 start on distinct GPUs, 2 are refused."""
    host = make_host(env, "gpu1", gpus=8)
    users = {env["TESTBED_SSH_USER"]: env["TESTBED_SSH_KEY"], env["TESTBED_LAB_USER2"]: env["TESTBED_LAB_KEY2"]}
    envs = {}
    for user, key in users.items():
        sites = tmp_path / user / "sites"
        sites.mkdir(parents=True)
        text = site_yaml(env, "labpool", [host], gpus_per_node=8)
        text = text.replace(f"  user: {env['TESTBED_SSH_USER']}\n", f"  user: {user}\n")
        (sites / "labpool.yaml").write_text(text.replace(env["TESTBED_SSH_KEY"], key))
        envs[user] = {**os.environ, "GPUHUB_SITES": str(sites), "GPUHUB_DATA_DIR": str(tmp_path / user / "data"),
                      "GPUHUB_CONFIG_DIR": str(tmp_path / user / "config")}
    job = 'echo "$(id -un) $CUDA_VISIBLE_DEVICES"; sleep 60'
    argv = [sys.executable, "-m", "gpuhub", "submit", "--site", "labpool", "--gpus", "1", "--json", "--",
            "bash", "-c", job]

    def cli(user: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gpuhub", *args], capture_output=True, text=True,
                              timeout=120, env=envs[user])

    order = [list(users)[i % 2] for i in range(10)]
    procs = [(user, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=envs[user])) for user in order]
    try:
        outcomes = [(user, p.wait(120), *p.communicate()) for user, p in procs]
        assert all("Traceback" not in err for _, _, _, err in outcomes)
        started = [(user, json.loads(out)) for user, code, out, _ in outcomes if code == 0]
        refused = [err for _, code, _, err in outcomes if code != 0]
        assert len(started) == 8 and len(refused) == 2, outcomes
        assert all("1 GPU(s) asked, 0 of 8 free" in err and "held by" in err for err in refused), refused
        assert {user for user, _ in started} == set(users)
        seen: dict[str, str] = {}
        for user, row in started:  # what each job itself sees
            deadline = time.monotonic() + 20
            while not (line := cli(user, "logs", str(row["id"])).stdout.strip()):
                assert time.monotonic() < deadline, row
                time.sleep(0.2)
            login, gpu = line.split()
            assert login == user and gpu not in seen, (line, seen)
            seen[gpu] = user
        assert sorted(seen) == [str(i) for i in range(8)]  # every GPU once: disjoint
        table = json.loads(cli(order[0], "gpus", "--site", "labpool", "--json").stdout)["lab_gpus"]
        assert {str(r["gpu"]): r["user"] for r in table if r["state"] == "held"} == seen
    finally:
        for user in users:
            ids = [str(r["id"]) for r in json.loads(cli(user, "jobs", "--json", "-n", "0").stdout)]
            if ids:
                cli(user, "cancel", *ids)
        remove_host(host)
