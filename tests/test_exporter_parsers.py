"""The exporter's parsers on recorded testbed output (Slurm) and documented formats (HTCondor, nvidia-smi)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuhub.exporter import htcondor, nvidia, slurm
from gpuhub.exporter.readings import model_from_device_name

DATA = Path(__file__).parent / "data" / "exporter"
TYPES = ["a100", "v100", "2g.20gb", "3g.40gb", "a100_1g.10gb", "a100_2g.20gb", "a100_3g.40gb"]


def text(name: str) -> str:
    return (DATA / name).read_text()


# --- Slurm ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gres", "expected"),
    [
        ("gpu:a100:8(S:0-1)", {"a100": 8}),
        ("gpu:a100:4(IDX:0,2-4),gpu:v100:1(IDX:8)", {"a100": 4, "v100": 1}),
        ("gpu:2(IDX:0-1)", {"": 2}),
        ("gpu:8(S:0-1),mps:400,shard:16", {"": 8}),
        ("gpu:(null):0(IDX:N/A)", {"": 0}),
        ("gpu:tesla:no_consume:4", {"tesla": 4}),
        ("(null)", {}),
        ("", {}),
    ],
)
def test_parse_gres(gres, expected):
    assert slurm.parse_gres(gres) == expected


def test_split_top_keeps_index_lists_whole():
    assert slurm.split_top("gpu:v100:4(IDX:8,10-12),gpu:a100:0(IDX:N/A)") == [
        "gpu:v100:4(IDX:8,10-12)",
        "gpu:a100:0(IDX:N/A)",
    ]


@pytest.mark.parametrize(
    ("state", "available"),
    [
        ("idle", True),
        ("mixed", True),
        ("allocated", True),
        ("completing", True),
        ("idle~", True),
        ("mixed-", True),
        ("planned", True),
        ("reserved", True),
        ("draining", False),
        ("drained", False),
        ("drained*", False),
        ("down*", False),
        ("down~", False),
        ("idle*", False),
        ("mixed$", False),
        ("maint", False),
        ("fail", False),
        ("inval", False),
        ("mixed+drain", False),
        ("", False),
    ],
)
def test_node_available(state, available):
    assert slurm.node_available(state) is available


def test_sinfo_recorded_busy():
    reading = slurm.parse_sinfo(text("sinfo-busy.txt"))
    assert reading.default_partition == "gpu"
    nodes = {n.name: n for n in reading.nodes}
    assert sorted(nodes) == ["n1", "n2"]
    n1, n2 = nodes["n1"], nodes["n2"]
    # 20 partitions, one line each: merged, every GPU counted once
    assert len(n1.partitions) == 20 and "gpu" in n1.partitions and "short" in n1.partitions
    assert n1.total == dict.fromkeys(TYPES, 8)
    assert n1.used == {**dict.fromkeys(TYPES, 0), "v100": 4, "a100_3g.40gb": 1}  # IDX:8,10-12 read whole
    assert n2.used == {**dict.fromkeys(TYPES, 0), "a100": 1, "a100_3g.40gb": 1}
    assert n1.available and n2.available
    assert {"a100", "v100-32g"} <= n1.features


def test_sinfo_recorded_completing_and_edited_drained():
    completing = slurm.parse_sinfo(text("sinfo-completing.txt"))
    assert all(n.available for n in completing.nodes)
    drained = slurm.parse_sinfo(text("sinfo-drained.txt"))
    assert not any(n.available for n in drained.nodes)


def test_squeue_recorded():
    jobs = slurm.parse_squeue(text("squeue-busy.txt"))
    assert [j.state for j in jobs] == [
        "pending",
        "held",
        "running",
        "running",
        "running",
        "running",
        "pending",
        "pending",
    ]
    held = jobs[1]
    assert (held.account, held.gpus, held.partition) == ("abc@a100", {"v100": 4}, "gpu")
    # the untyped --gres=gpu:1 job runs on a typed GRES: tres-alloc names the type
    assert jobs[4].gpus == {"a100": 1} and jobs[4].account == "lsst"
    # two nodes x 1 GPU: tres-alloc is the job's total
    assert jobs[5].gpus == {"a100_3g.40gb": 2}
    # pending untyped array tasks in "short,gpu": counted in the first partition, no type
    assert jobs[6].partition == "short" and jobs[6].gpus == {"": 2} and jobs[6] == jobs[7]
    assert jobs[0].user == "hubuser" and jobs[1].user == "root"
    completing = slurm.parse_squeue(text("squeue-completing.txt"))
    assert [j.state for j in completing] == ["completing", "completing", "pending"]


@pytest.mark.parametrize(
    ("tres", "expected"),
    [
        ("cpu=1,mem=1G,node=1,billing=1,gres/gpu=2", {"": 2}),
        ("cpu=1,node=1,gres/gpu=3,gres/gpu:a100=3", {"a100": 3}),
        ("cpu=2,gres/gpu=3,gres/gpu:a100=1,gres/gpu:v100=1", {"a100": 1, "v100": 1, "": 1}),
        ("cpu=4,mem=4G,node=1", {}),
        ("", {}),
    ],
)
def test_parse_tres_gpus(tres, expected):
    assert slurm.parse_tres_gpus(tres) == expected


@pytest.mark.parametrize(
    ("state", "reason", "expected"),
    [
        ("PENDING", "Priority", "pending"),
        ("PENDING", "JobHeldUser", "held"),
        ("PENDING", "JobHeldAdmin", "held"),
        ("REQUEUE_HOLD", "None", "held"),
        ("CONFIGURING", "None", "running"),
        ("COMPLETING", "None", "completing"),
        ("SUSPENDED", "None", "suspended"),
        ("PREEMPTED", "None", "other"),
    ],
)
def test_job_state(state, reason, expected):
    assert slurm.job_state(state, reason) == expected


# --- HTCondor (documented -af:t output) ----------------------------------------------------------


def test_condor_status():
    reading = htcondor.parse_status(text("condor_status.txt"))
    by = {(n.name, n.available): n for n in reading.nodes}
    assert by[("gpu01.example.org", True)].total == {"a100": 4}
    assert by[("gpu01.example.org", True)].used == {"a100": 3}
    drained = by[("gpu02.example.org", False)]  # a drained partitionable slot: its dynamic slots still run
    assert (drained.total, drained.used) == ({"v100": 4}, {"v100": 2})
    assert by[("gpu03.example.org", True)].total == {"rtx2080ti": 2}
    assert by[("gpu03.example.org", True)].used == {"rtx2080ti": 1}
    assert by[("gpu03.example.org", False)].total == {"rtx2080ti": 1}  # the Owner slot
    assert by[("gpu04.example.org", True)].total == {"unknown": 2}
    assert reading.jobs is None


def test_condor_status_leading_tab_and_garbage():
    reading = htcondor.parse_status("\tm1\tStatic\tClaimed\t1\t1\tNVIDIA A40\nnot a line\n")
    assert [(n.total, n.used) for n in reading.nodes] == [({"a40": 1}, {"a40": 1})]


def test_condor_q():
    jobs = htcondor.parse_queue(text("condor_q.txt"))
    assert [j.state for j in jobs] == ["running", "running", "pending", "pending", "held", "suspended", "completing"]
    assert jobs[1].account == "atlas@a100" and jobs[1].gpus == {"": 2} and jobs[1].user == "bob"
    assert jobs[3].gpus == {} and jobs[3].account == "" and jobs[3].user == "carol"


# --- nvidia-smi (documented csv output) ----------------------------------------------------------


def test_nvidia_smi():
    reading = nvidia.parse(text("nvidia-smi.txt"), node="gpu-server")
    up = [n for n in reading.nodes if n.available]
    down = [n for n in reading.nodes if not n.available]
    assert [(n.total, n.used) for n in up] == [({"a40": 3}, {"a40": 2})]
    assert [n.total for n in down] == [{"a40": 1}]
    assert nvidia.parse(f"{nvidia.MARK}\n").nodes == []


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("NVIDIA A100-SXM4-40GB", "a100"),
        ("NVIDIA A100 80GB PCIe", "a100"),
        ("Tesla V100-PCIE-32GB", "v100"),
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA GeForce RTX 2080 Ti", "rtx2080ti"),
        ("NVIDIA RTX A6000", "rtxa6000"),
        ("NVIDIA A40", "a40"),
        ("NVIDIA L40S", "l40s"),
        ("AMD Instinct MI210", "mi210"),
        ('"NVIDIA TITAN V"', "titanv"),
        ("", "unknown"),
    ],
)
def test_model_from_device_name(name, model):
    assert model_from_device_name(name) == model
