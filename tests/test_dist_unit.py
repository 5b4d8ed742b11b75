"""gpuhub.dist's environment reading, and how launchers shape the plan and the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuhub import dist
from gpuhub.backends.common import torchrun_args
from gpuhub.errors import RequestError
from gpuhub.plan import plan
from gpuhub.registry import load_file, load_site
from gpuhub.render import render
from gpuhub.request import JobRequest

SITE = load_file(Path(__file__).parent / "data" / "sites" / "testbed.yaml")
CLEAN = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
         "SLURM_PROCID", "SLURM_STEP_ID", "SLURM_LOCALID", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_JOB_ID",
         "SLURM_JOB_NODELIST", "SLURM_STEP_NODELIST", "SLURM_NTASKS_PER_NODE"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in CLEAN:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("spec", "hosts"),
    [("n1", ["n1"]), ("n[1-3]", ["n1", "n2", "n3"]), ("gpu[08-10],login1", ["gpu08", "gpu09", "gpu10", "login1"]),
     ("r[1,3-4]i0", ["r1i0", "r3i0", "r4i0"]), ("a[1-2],b[5]", ["a1", "a2", "b5"])],
)
def test_expand_hostlist(spec, hosts):
    assert dist.expand_hostlist(spec) == hosts


def test_slurm_step_environment(monkeypatch):
    step = {"SLURM_PROCID": "5", "SLURM_STEP_ID": "0", "SLURM_LOCALID": "1", "SLURM_STEP_NUM_TASKS": "8",
            "SLURM_NTASKS_PER_NODE": "4", "SLURM_JOB_ID": "123456", "SLURM_STEP_NODELIST": "jz[10-11]"}
    for name, value in step.items():
        monkeypatch.setenv(name, value)
    found = dist.setup()
    assert (found.rank, found.local_rank, found.world_size, found.local_world_size) == (5, 1, 8, 4)
    assert (found.master_addr, found.master_port, found.launcher) == ("jz10", 10000 + 123456 % 20000, "slurm")
    import os

    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["MASTER_PORT"]) == ("5", "8", "13456")


def test_torchrun_environment_wins(monkeypatch):
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "29500",
                        "TORCHELASTIC_RUN_ID": "x", "SLURM_PROCID": "0", "SLURM_STEP_ID": "0"}.items():
        monkeypatch.setenv(name, value)
    found = dist.info()
    assert (found.rank, found.world_size, found.master_addr, found.master_port, found.launcher) == (
        1, 2, "n1", 29500, "torchrun")


def test_single_process_gets_free_port():
    found = dist.info()
    assert (found.rank, found.world_size, found.launcher) == (0, 1, "single")
    assert 1024 < found.master_port < 65536


def test_preemption_flag_file(tmp_path, monkeypatch):
    flag = tmp_path / "flag"
    monkeypatch.setenv("GPUHUB_CHECKPOINT_FLAG", str(flag))
    watcher = dist.Preemption()
    assert not watcher.requested
    flag.touch()
    assert watcher.requested


@pytest.mark.parametrize(
    ("command", "args"),
    [(["python", "train.py", "--x"], ["train.py", "--x"]), (["python3", "-m", "pkg.train"], ["-m", "pkg.train"]),
     (["/usr/bin/python3.11", "t.py"], ["t.py"]), (["train.py"], ["train.py"]),
     (["./run.sh", "a"], ["--no-python", "./run.sh", "a"])],
)
def test_torchrun_args(command, args):
    assert torchrun_args(command) == args


def test_srun_launcher_one_task_per_gpu():
    alloc = plan(SITE, JobRequest(command=["python", "t.py"], gpus=16, launcher="srun"))
    assert (alloc.nodes, alloc.ntasks_per_node, alloc.cpus_per_task) == (2, 8, 4)
    script = render(alloc).files["job.sbatch"]
    assert "#SBATCH --ntasks-per-node=8" in script and "#SBATCH --cpus-per-task=4" in script
    assert "srun --kill-on-bad-exit=1 bash -c" in script


def test_torchrun_launcher_one_per_node():
    alloc = plan(SITE, JobRequest(command=["python", "t.py", "it's"], gpus=16, launcher="torchrun"))
    assert (alloc.ntasks_per_node, alloc.cpus_per_task) == (1, 32)
    script = render(alloc).files["job.sbatch"]
    assert "--nproc-per-node=8 --rdzv-backend=c10d" in script
    assert script.rstrip().endswith("t.py 'it'\"'\"'s'")


def test_requeue_directives_and_signal_lead():
    script = render(plan(SITE, JobRequest(command=["x"], requeue=True, time="10m"))).files["job.sbatch"]
    for line in ("#SBATCH --requeue", "#SBATCH --open-mode=append", "#SBATCH --signal=B:USR2@120"):
        assert line in script
    short = render(plan(SITE, JobRequest(command=["x"], requeue=True, time="2m"))).files["job.sbatch"]
    assert "#SBATCH --signal=B:USR2@60" in short
    assert "trap gpuhub_requeue USR2" in short and "scontrol requeue" in short


def test_network_settings_reach_the_job():
    site = SITE.model_copy(update={"network": SITE.network.model_copy(
        update={"interface": "ib0", "env": {"NCCL_IB_DISABLE": "0"}})})
    script = render(plan(site, JobRequest(command=["x"]))).files["job.sbatch"]
    assert "export NCCL_SOCKET_IFNAME=ib0" in script and "export GLOO_SOCKET_IFNAME=ib0" in script
    assert "export NCCL_IB_DISABLE=0" in script


def test_single_node_sites_use_standalone_torchrun():
    local = load_site("local")
    script = render(plan(local, JobRequest(command=["python", "t.py"], gpus=0, launcher="torchrun"))).files["job.sh"]
    assert "torchrun --standalone --nproc-per-node=1 t.py" in script
    with pytest.raises(RequestError, match=r"launcher srun is not available on site 'local'.*none, torchrun"):
        plan(local, JobRequest(command=["x"], launcher="srun"))
    with pytest.raises(RequestError, match="--requeue is not available on site"):
        plan(local, JobRequest(command=["x"], requeue=True))
