"""From readings to label sets and values: GPU models, projects, job states; and the ledger counters."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from gpuhub.errors import GpuhubError
from gpuhub.exporter import htcondor, nvidia, slurm
from gpuhub.exporter.families import BY_NAME, FAMILIES
from gpuhub.exporter.readings import JOB_STATES, NodeGpus, QueueJob, SiteReading
from gpuhub.exporter.samples import GpuModels, project_label, site_samples
from gpuhub.exporter.usage import read_ledger
from gpuhub.ledger import Ledger
from gpuhub.registry import load_file
from gpuhub.states import JobStatus, State

DATA = Path(__file__).parent / "data"
TESTBED = load_file(DATA / "sites" / "testbed.yaml")
JEAN_ZAY = load_file(Path(__file__).parent.parent / "site_configs" / "jean-zay.yaml")


def slurm_reading(sinfo: str, squeue: str) -> SiteReading:
    nodes = slurm.parse_sinfo((DATA / "exporter" / sinfo).read_text())
    jobs = slurm.parse_squeue((DATA / "exporter" / squeue).read_text())
    return SiteReading(nodes.nodes, jobs, nodes.default_partition)


def test_every_sample_matches_its_family():
    samples = site_samples("tb", slurm_reading("sinfo-busy.txt", "squeue-busy.txt"), GpuModels(TESTBED), True)
    for name, values in samples.items():
        family = BY_NAME[name]
        assert all(len(labels) == len(family.labels) for labels in values), name


def test_capacity_on_recorded_busy_testbed():
    s = site_samples("tb", slurm_reading("sinfo-busy.txt", "squeue-busy.txt"), GpuModels(TESTBED))
    assert s["gpuhub_gpus"][("tb", "v100")] == 16
    assert s["gpuhub_gpus_allocated"][("tb", "v100")] == 4
    assert s["gpuhub_gpus_idle"][("tb", "v100")] == 12
    assert s["gpuhub_gpus_allocated"][("tb", "a100")] == 1
    assert s["gpuhub_gpus_allocated"][("tb", "a100_3g.40gb")] == 2
    assert s["gpuhub_gpus_unavailable"][("tb", "a100")] == 0
    for model in ("a100", "v100", "2g.20gb", "a100_1g.10gb"):
        parts = [s[f"gpuhub_gpus{x}"][("tb", model)] for x in ("_allocated", "_idle", "_unavailable")]
        assert sum(parts) == s["gpuhub_gpus"][("tb", model)]
    # both nodes are in every partition: each partition sees all 16 v100
    assert s["gpuhub_partition_gpus"][("tb", "short", "v100")] == 16
    assert s["gpuhub_partition_gpus_idle"][("tb", "gpu", "v100")] == 12


def test_drained_nodes_make_idle_gpus_unavailable():
    s = site_samples("tb", slurm_reading("sinfo-drained.txt", "squeue-busy.txt"), GpuModels(TESTBED))
    assert s["gpuhub_gpus_allocated"][("tb", "v100")] == 4  # jobs keep running on a draining node
    assert s["gpuhub_gpus_idle"][("tb", "v100")] == 0
    assert s["gpuhub_gpus_unavailable"][("tb", "v100")] == 12


def test_queue_on_recorded_testbed():
    s = site_samples("tb", slurm_reading("sinfo-busy.txt", "squeue-busy.txt"), GpuModels(TESTBED))
    jobs = s["gpuhub_jobs"]
    assert {state: jobs[("tb", state)] for state in JOB_STATES} == {
        "pending": 3,
        "held": 1,
        "running": 4,
        "completing": 0,
        "suspended": 0,
        "other": 0,
    }
    requested = s["gpuhub_jobs_gpus_requested"]
    assert requested[("tb", "gpu", "v100", "held")] == 4
    assert requested[("tb", "gpu", "v100", "running")] == 4
    assert requested[("tb", "gpu", "a100", "pending")] == 1
    # untyped tasks pending in Slurm partition "short": the testbed site file says short is a100
    assert requested[("tb", "short", "a100", "pending")] == 4
    allocated = s["gpuhub_project_gpus_allocated"]
    assert allocated == {
        ("tb", "physics", "v100"): 3,
        ("tb", "abc", "v100"): 1,  # account abc@h100: the project is abc
        ("tb", "lsst", "a100"): 1,
        ("tb", "astro", "a100_3g.40gb"): 2,
    }
    assert s["gpuhub_project_jobs"][("tb", "abc", "held")] == 1
    assert "gpuhub_user_jobs" not in s and "gpuhub_user_gpus_allocated" not in s


def test_user_labels_are_opt_in():
    s = site_samples("tb", slurm_reading("sinfo-busy.txt", "squeue-busy.txt"), GpuModels(TESTBED), user_labels=True)
    assert s["gpuhub_user_jobs"][("tb", "hubuser", "pending")] == 1
    assert s["gpuhub_user_gpus_allocated"][("tb", "root", "v100")] == 4


def test_untyped_request_without_site_mapping_is_any():
    s = site_samples("tb", slurm_reading("sinfo-busy.txt", "squeue-busy.txt"), GpuModels(None))
    assert s["gpuhub_jobs_gpus_requested"][("tb", "short", "any", "pending")] == 4


def test_untyped_gres_named_from_the_site_file():
    # Jean Zay style: untyped GRES, one GPU model per partition (v100 by constraint inside gpu_p13)
    node = NodeGpus("jz1", True, {"": 4}, {"": 1}, ("gpu_p13",), frozenset({"v100-32g"}))
    other = NodeGpus("jz2", True, {"": 8}, {"": 0}, ("gpu_p5",), frozenset({"a100"}))
    lost = NodeGpus("jz3", True, {"": 8}, {}, ("prepost",))
    job = QueueJob("pending", {"": 8}, "gpu_p5", "abc@a100", "u")
    s = site_samples("jz", SiteReading([node, other, lost], [job]), GpuModels(JEAN_ZAY))
    assert s["gpuhub_gpus"] == {("jz", "v100"): 4, ("jz", "a100"): 8, ("jz", "unknown"): 8}
    assert s["gpuhub_jobs_gpus_requested"] == {("jz", "gpu_p5", "a100", "pending"): 8}


def test_htcondor_and_nvidia_samples():
    reading = htcondor.parse_status((DATA / "exporter" / "condor_status.txt").read_text())
    jobs = htcondor.parse_queue((DATA / "exporter" / "condor_q.txt").read_text())
    s = site_samples("pool", SiteReading(reading.nodes, jobs), GpuModels(None))
    assert s["gpuhub_gpus"][("pool", "v100")] == 4
    assert s["gpuhub_gpus_allocated"][("pool", "v100")] == 2
    assert s["gpuhub_gpus_unavailable"][("pool", "v100")] == 2
    assert s["gpuhub_gpus_idle"][("pool", "a100")] == 1
    assert s["gpuhub_gpus_unavailable"][("pool", "rtx2080ti")] == 1
    assert s["gpuhub_gpus_idle"][("pool", "unknown")] == 2
    assert "gpuhub_partition_gpus" not in s  # an HTCondor pool has no partitions
    assert s["gpuhub_project_gpus_allocated"] == {
        ("pool", "physics", "any"): 2,  # running + completing
        ("pool", "atlas", "any"): 2,
        ("pool", "lsst", "any"): 1,  # suspended jobs keep their GPUs
    }
    assert s["gpuhub_jobs_gpus_requested"][("pool", "", "any", "pending")] == 4
    lab = site_samples("lab", nvidia.parse((DATA / "exporter" / "nvidia-smi.txt").read_text()), GpuModels(None))
    assert lab["gpuhub_gpus"] == {("lab", "a40"): 4}
    assert lab["gpuhub_gpus_allocated"] == {("lab", "a40"): 2}
    assert lab["gpuhub_gpus_idle"] == {("lab", "a40"): 1}
    assert lab["gpuhub_gpus_unavailable"] == {("lab", "a40"): 1}
    assert "gpuhub_jobs" not in lab  # no queue on a lab server


@pytest.mark.parametrize(
    ("account", "project"), [("abc@a100", "abc"), ("abc@h100", "abc"), ("physics", "physics"), ("", "none")]
)
def test_project_label(account, project):
    assert project_label(account) == project  # the accounting rule, "none" for no account


def test_family_names_follow_conventions():
    names = [f.name for f in FAMILIES]
    assert len(names) == len(set(names))
    for family in FAMILIES:
        assert re.fullmatch(r"gpuhub_[a-z0-9_]+", family.name)
        assert family.name.endswith("_total") == (family.kind == "counter"), family.name
        assert "job_id" not in family.labels and "jobid" not in family.labels
        assert ("user" in family.labels) == family.name.startswith("gpuhub_user_")


# --- ledger ---------------------------------------------------------------------------------------


def _add_job(book: Ledger, token: str, *, site="tb", project="abc@a100", gpus=2, model="a100", span=None, sid="1"):
    record = book.add(
        token=token,
        site=site,
        scheduler="slurm",
        name="j",
        request={"project": project} if project else {},
        plan={"gpus": gpus, "gpu_model": model, "account": "acct@v100"},
        script="#!/bin/bash\n",
    )
    if sid is None:
        book.mark_failed_submit(record.id, "no")
        return
    book.mark_submitted(record.id, sid, None, None)
    if span is not None:
        start = time.time() - 1000
        book.update_status([(record.id, JobStatus(State.COMPLETED, start=start, end=start + span))])


def test_ledger_counters(tmp_path):
    book = Ledger(tmp_path / "ledger.sqlite")
    _add_job(book, "t1", span=100, sid="1")
    _add_job(book, "t2", span=50, gpus=4, sid="2")
    _add_job(book, "t3", project=None, span=10, model="v100", sid="3")  # no project: from the account
    _add_job(book, "t4", sid="4")  # still pending: no GPU time yet
    _add_job(book, "t5", sid=None)  # failed to submit
    _add_job(book, "t6", site="other", span=7, gpus=1, sid="1")
    book.close()
    samples = read_ledger(tmp_path / "ledger.sqlite")
    assert samples["gpuhub_gpu_seconds_total"] == pytest.approx(
        {("tb", "abc", "a100"): 2 * 100 + 4 * 50, ("tb", "acct", "v100"): 20, ("other", "abc", "a100"): 7}
    )
    assert samples["gpuhub_submissions_total"] == {("tb", "accepted"): 4, ("tb", "failed"): 1, ("other", "accepted"): 1}


def test_ledger_is_never_created(tmp_path):
    with pytest.raises(GpuhubError, match="no ledger at"):
        read_ledger(tmp_path / "missing.sqlite")
    assert not (tmp_path / "missing.sqlite").exists()
