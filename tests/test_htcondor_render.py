"""HTCondor submit descriptions, read back by HTCondor's own parser (the htcondor wheel)."""

from __future__ import annotations

import pytest

from gpuhub.errors import RequestError
from gpuhub.plan import plan
from gpuhub.registry import load_file, load_site
from gpuhub.render import render
from gpuhub.request import JobRequest

htcondor2 = pytest.importorskip("htcondor2", reason="htcondor wheel (test extra) not installed")
classad2 = pytest.importorskip("classad2")

SITE = load_site("htcondor-example")


def parsed(**kw):
    kw.setdefault("command", ["python", "train.py"])
    job = render(plan(SITE, JobRequest(**kw)), token="tok123")
    return job, htcondor2.Submit(job.files["job.sub"])


def test_gpu_cpu_memory_walltime_reach_the_job_ad():
    cap = SITE.partitions[SITE.partition_key()].gpus_per_node
    job, sub = parsed(gpus=cap, cpus_per_gpu=2, mem="16G", time="3h", account="cms")
    assert sub["request_gpus"] == str(cap)
    assert sub["request_cpus"] == str(2 * cap)
    assert sub["request_memory"] == "16384"
    assert sub["allowed_job_duration"] == "10800"
    assert sub["accounting_group"] == "cms"
    assert sub["MY.GpuhubToken"] == '"tok123"'
    assert sub["executable"] == "job.sh"
    assert job.submit_argv == ["condor_submit", "-terse", "job.sub"]


def test_array_becomes_queue_in_list_with_throttle():
    _, sub = parsed(array="0-9:3%2")
    assert [row["GPUHUB_ARRAY_INDEX"] for row in sub.itemdata()] == ["0", "3", "6", "9"]
    assert sub["max_materialize"] == "2"
    assert sub["environment"] == '"GPUHUB_ARRAY_INDEX=$(GPUHUB_ARRAY_INDEX)"'


def test_requirements_expression_is_valid_classad():
    with_constraint = SITE.model_copy(
        update={
            "partitions": {
                k: p.model_copy(update={"constraint": "Capability >= 8.0 && GPUs_GlobalMemoryMb >= 40000"})
                for k, p in SITE.partitions.items()
            }
        }
    )
    job = render(plan(with_constraint, JobRequest(command=["x"], gpus=1)))
    sub = htcondor2.Submit(job.files["job.sub"])
    expr = classad2.ExprTree(sub["requirements"])
    assert "Capability" in str(expr)


def test_plain_job_queues_once():
    _, sub = parsed()
    assert sub.getQArgs() == ""
    assert "GPUHUB_ARRAY_INDEX" not in sub.get("environment", "")


def test_multi_node_and_dependencies_refused():
    with pytest.raises(RequestError, match="single-node jobs only"):
        parsed(nodes=2, gpus_per_node=1)
    with pytest.raises(RequestError, match="dependencies are not available on site"):
        parsed(dependency="afterok:5")


def test_slurm_style_directive_refused():
    with pytest.raises(RequestError, match="HTCondor submit line looks like 'key = value'"):
        parsed(directives=["--mail-type=END"])


def test_gpu_memory_and_capability_become_submit_commands():
    _, sub = parsed(partition="gpu-large", gpus=2)
    assert sub["gpus_minimum_memory"] == "40960" and sub["gpus_minimum_capability"] == "8"
    assert "require_gpus" not in sub


def test_older_pools_get_one_require_gpus_expression():
    older = SITE.model_copy(update={"htcondor": SITE.htcondor.model_copy(update={"gpu_requirements": "require_gpus"})})
    job = render(plan(older, JobRequest(command=["x"], partition="gpu-large", gpus=1)), token="t")
    sub = htcondor2.Submit(job.files["job.sub"])
    assert classad2.ExprTree(sub["require_gpus"]).eval(classad2.ClassAd({"GlobalMemoryMb": 40960, "Capability": 8.0}))
    assert not classad2.ExprTree(sub["require_gpus"]).eval(classad2.ClassAd({"GlobalMemoryMb": 32510,
                                                                              "Capability": 7.0}))
    assert "gpus_minimum_memory" not in sub


def test_logs_go_under_the_home_directory_like_slurm():
    _, sub = parsed()
    assert sub["output"] == "$ENV(HOME)/gpuhub-logs/$(ClusterId).$(ProcId).out"
    assert sub["log"] == "$ENV(HOME)/gpuhub-logs/$(ClusterId).log"


def test_site_file_checks_are_the_backends(tmp_path):
    from gpuhub.errors import ConfigError

    base = (
        "name: pool\nscheduler: htcondor\npartitions:\n  gpu:\n    gpus_per_node: 1\n"
    )
    path = tmp_path / "pool.yaml"
    path.write_text(base + "directives: ['--mail-type=END']\n")
    with pytest.raises(ConfigError, match=r"pool.yaml:6: directives.0: HTCondor directive '--mail-type=END'"):
        load_file(path)
    path.write_text(base + "accounting: {source: sacct}\n")
    with pytest.raises(ConfigError, match="'sacct' is not a usage source of htcondor sites; use condor_history or"):
        load_file(path)
    path.write_text(base)
    assert load_file(path).connection is None  # a pool whose commands run on this machine
