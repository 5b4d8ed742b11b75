"""Fitting requests to sites: choices made, and impossible requests refused with the limit named."""

from pathlib import Path

import pytest

from gpuhub.errors import RequestError
from gpuhub.plan import plan
from gpuhub.registry import load_file
from gpuhub.request import JobRequest

SITE = load_file(Path(__file__).parent / "data" / "sites" / "testbed.yaml")


def fit(**kw):
    kw.setdefault("command", ["python", "train.py"])
    return plan(SITE, JobRequest(**kw))


def refused(**kw) -> str:
    with pytest.raises(RequestError) as info:
        fit(**kw)
    assert info.value.exit_code == 2
    return info.value.message


def test_defaults():
    a = fit()
    assert (a.partition_key, a.nodes, a.gpus_per_node, a.walltime) == ("a100", 1, 1, 3600)
    assert a.cpus_per_task == 4
    assert a.account == "physics"  # defaults.project through account.format
    assert a.qos == "dev"  # 1 h fits the 2 h QoS
    assert any("no --time" in r for r in a.reasons)


def test_total_gpus_spread_over_nodes():
    a = fit(gpus=16)
    assert (a.nodes, a.gpus_per_node, a.cpus_per_task) == (2, 8, 32)
    assert any("16 GPUs over 2 nodes" in r for r in a.reasons)


def test_uneven_spread_is_refused():
    assert "13 GPUs cannot be spread evenly over 2 nodes" in refused(gpus=13, nodes=2)
    assert "cannot be spread evenly" in refused(gpus=9)


def test_gpus_per_node_over_node_size():
    message = refused(gpus_per_node=12)
    assert "12 GPUs per node asked" in message and "have 8" in message and "--nodes 2 --gpus-per-node 8" in message


def test_walltime_over_partition_limit():
    message = refused(partition="short", time="1h")
    assert message == "walltime 01:00:00 is over the 00:30:00 limit of partition 'short' on site 'testbed'"


def test_qos_chosen_by_walltime():
    assert fit(time="1h").qos == "dev"
    long_job = fit(time="10h")
    assert long_job.qos == "normal"
    assert any("QoS normal" in r for r in long_job.reasons)


def test_explicit_qos_checked():
    assert "not offered on partition 'a100'; choose one of: dev, normal" in refused(qos="t4")
    assert "limit of QoS 'dev'" in refused(qos="dev", time="3h")


def test_unknown_gpu_type_lists_models():
    assert refused(gpu_type="h100") == "site 'testbed' has no GPU model 'h100'; available: a100, v100"


def test_gpu_type_selects_partition():
    assert fit(gpu_type="v100").partition_key == "v100"
    assert fit(gpu_type="V100").cpus_per_task == 2


def test_partition_by_key_or_scheduler_name():
    assert fit(partition="short", time="10m").partition_key == "short"
    assert fit(partition="gpu").partition_key == "a100"  # first profile using Slurm partition gpu
    assert "no partition 'nope'; choose one of: a100, v100, short" in refused(partition="nope")


def test_account_explicit_wins():
    assert fit(account="astro").account == "astro"
    assert fit(project="lsst").account == "lsst"


def test_memory_and_cpu_limits():
    site = SITE.model_copy(
        update={"partitions": {"a100": SITE.partitions["a100"].model_copy(
            update={"cpus_per_node": 16, "memory_per_node": 65536})}}
    )
    with pytest.raises(RequestError, match=r"32 CPUs per node .* exceed the 16 CPUs"):
        plan(site, JobRequest(command=["x"], gpus=8))
    with pytest.raises(RequestError, match="memory 128G per node exceeds the 64G"):
        plan(site, JobRequest(command=["x"], mem="128G"))


def test_request_shape_errors():
    with pytest.raises(ValueError, match="either a command"):
        JobRequest()
    with pytest.raises(ValueError, match="disagrees"):
        JobRequest(command=["x"], gpus=3, nodes=2, gpus_per_node=2)
    with pytest.raises(ValueError, match="array"):
        JobRequest(command=["x"], array="0-")
    with pytest.raises(ValueError, match="dependency"):
        JobRequest(command=["x"], dependency="after:abc")
    with pytest.raises(ValueError, match="NUL"):
        JobRequest(command=["a\0b"])


def test_single_node_schedulers_refuse_multi_node():
    from gpuhub.registry import load_site

    local = load_site("local")
    with pytest.raises(RequestError, match="single-node jobs only"):
        plan(local, JobRequest(command=["x"], nodes=2, gpus=0))
    with pytest.raises(RequestError, match="dependencies are not available on site"):
        plan(local, JobRequest(command=["x"], dependency="afterok:1"))


def test_gpu_memory_and_any_type():
    site2 = load_file(Path(__file__).parent / "data" / "broker" / "testbed2.yaml")
    a = plan(site2, JobRequest(command=["true"], gpu_mem="32G", gpu_type="any", time="30m"))
    assert a.partition_key == "v100"
    with pytest.raises(RequestError, match=r"no GPU with 40GB of memory \(its site file gives: 32 GB\)"):
        plan(site2, JobRequest(command=["true"], gpu_mem="40G"))
    # the testbed's site file gives no GPU memory at all
    assert "its site file gives: no GPU memory" in refused(gpu_mem="1G")


def test_plan_reads_each_backends_own_capabilities():
    from gpuhub.backends import BACKENDS, backend_for, capabilities_of

    for scheduler in BACKENDS:
        assert capabilities_of(scheduler) is backend_for(scheduler).capabilities, scheduler
    assert capabilities_of("slurm").launchers == ("none", "torchrun", "srun") and capabilities_of("ssh").gpu_locks
