"""Real PyTorch DDP (Gloo, CPU) on the Slurm testbed, submitted through gpuhub over SSH.

The jobs run as the testbed's login user with the venv made by scripts/testbed/job-python.sh
(PyTorch 2.13.0 CPU and this checkout's gpuhub for ``gpuhub.dist``).
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from conftest import missing_testbed
from gpuhub import jobs as jobs_api
from gpuhub.ledger import Ledger
from gpuhub.registry import load_site
from gpuhub.request import JobRequest
from gpuhub.states import State
from gpuhub.transport import close_all, transport_for

pytestmark = [pytest.mark.slurm, pytest.mark.ssh]
REPO = Path(__file__).resolve().parent.parent
JOB_PYTHON_ENV = Path("/var/lib/gpuhub-testbed/job-python.env")


@pytest.fixture
def site(testbed, tmp_path, monkeypatch):
    if not JOB_PYTHON_ENV.is_file():
        missing_testbed("no job Python on the testbed: run scripts/testbed/job-python.sh")
    python = JOB_PYTHON_ENV.read_text().strip().split("=", 1)[1]
    override = tmp_path / "sites"
    override.mkdir()
    # Only one field differs from the testbed site: the setup line that activates the job venv.
    (override / "testbed.yaml").write_text(f"setup: ['source {Path(python).parent}/activate']\n")
    monkeypatch.setenv("GPUHUB_SITES", f"{override}:{REPO / 'tests' / 'data' / 'sites'}")
    yield load_site("testbed")
    close_all()


@pytest.fixture
def workdir(site):
    """A fresh remote directory holding the example training script."""
    path = f"gpuhub-dist-test/{uuid.uuid4().hex[:8]}"
    transport = transport_for(site)
    transport.put_text(f"{path}/ddp_train.py", (REPO / "examples" / "ddp_train.py").read_text())
    yield path
    transport.run(["rm", "-rf", "--", path], check=False)


def run_training(site, workdir, tmp_path, **kw):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    steps = kw.pop("steps", 60)
    request = JobRequest(
        command=["python", "ddp_train.py", "--steps", str(steps), "--checkpoint", "ck.pt", *kw.pop("extra", [])],
        workdir=f"~/{workdir}",
        time="10m",
        name="ddp",
        **kw,
    )
    return jobs_api.submit(request, site=site, ledger=ledger)


def result_of(log: str) -> dict:
    lines = [line for line in log.splitlines() if line.startswith("GPUHUB-RESULT ")]
    assert len(lines) == 1, log
    return json.loads(lines[0].split(" ", 1)[1])


def ranks_by_node(log: str) -> dict[str, str]:
    """'rank 1/2 (local 0) via torchrun on n2, ...' -> {'1': 'n2'}"""
    out = {}
    for line in log.splitlines():
        if line.startswith("rank "):
            words = line.split()
            out[words[1].split("/")[0]] = words[words.index("on") + 1].rstrip(",")
    return out


def finished_log(job) -> str:
    state = job.wait(timeout=600, interval=1)
    log = job.logs()
    assert state == State.COMPLETED, log + job.logs(stderr=True)
    return log


def assert_same_world(log: str) -> None:
    """Both ranks joined one world (one per node), all-reduced right and ended with the same weights."""
    result = result_of(log)
    assert result["world_size"] == 2
    assert result["allreduce"] == result["allreduce_expected"] == 3.0
    assert result["weights_equal"] is True
    assert sorted(ranks_by_node(log).values()) == ["n1", "n2"]


def test_torchrun_two_nodes(site, workdir, tmp_path):
    log = finished_log(run_training(site, workdir, tmp_path, launcher="torchrun", nodes=2, gpus_per_node=1))
    assert_same_world(log)
    assert "via torchrun" in log


def test_srun_one_task_per_gpu(site, workdir, tmp_path):
    log = finished_log(run_training(site, workdir, tmp_path, launcher="srun", nodes=2, gpus_per_node=1))
    assert_same_world(log)
    assert "via slurm" in log


def test_requeued_job_resumes_from_checkpoint(site, workdir, tmp_path):
    job = run_training(site, workdir, tmp_path, launcher="srun", nodes=1, gpus_per_node=1, requeue=True,
                       steps=300, extra=["--step-sleep", "0.05", "--checkpoint-every", "1000"])
    deadline = time.time() + 300
    while "rank 0/1" not in _safe_log(job) and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(2)  # let it train a few steps
    # What Slurm does --signal=B:USR2@N seconds before the time limit, done now.
    subprocess.run(["scancel", "--batch", "--signal=USR2", job.scheduler_id], check=True)
    log = finished_log(job)
    stopped = [line for line in log.splitlines() if line.startswith("checkpoint at step")]
    assert len(stopped) == 1, log
    step = int(stopped[0].split()[3].rstrip(":"))
    assert 0 < step < 300
    assert f"resumed from step {step} (restart 1)" in log
    result = result_of(log)
    assert (result["resumed_from"], result["restarts"], result["steps"]) == (step, 1, 300)


def _safe_log(job) -> str:
    try:
        return job.logs()
    except Exception:
        return ""
