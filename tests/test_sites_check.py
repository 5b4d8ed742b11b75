"""`gpuhub sites check` for Slurm: pure comparison on recorded facts, then on the real testbed."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuhub.backends.slurm_check import SlurmFacts, compare, parse_assoc, parse_partitions, parse_qos, slurm_time
from gpuhub.backends.slurm_start import Refused, parse_test_only
from gpuhub.exporter.readings import NodeGpus
from gpuhub.registry import load_file

DATA = Path(__file__).parent / "data"
SITE2 = load_file(DATA / "broker" / "testbed2.yaml")

SCONTROL = (
    "PartitionName=v100 AllowGroups=ALL Default=YES MaxNodes=UNLIMITED MaxTime=1-00:00:00 Nodes=m1 State=UP "
    "TotalCPUs=32 TotalNodes=1\n"
    "PartitionName=debug AllowGroups=ALL Default=NO MaxNodes=UNLIMITED MaxTime=01:00:00 Nodes=m1 State=UP "
    "TotalCPUs=32 TotalNodes=1\n"
)


def facts(**over) -> SlurmFacts:
    node = NodeGpus("m1", True, {"v100": 4}, {}, ("v100", "debug"), frozenset({"v100", "v100-32g"}))
    base = SlurmFacts(cluster="gpuhub-test2", nodes=[node], partitions=parse_partitions(SCONTROL),
                      default_partition="v100", qos={"normal": None}, accounts={"physics", "chem"})
    for key, value in over.items():
        setattr(base, key, value)
    return base


def test_parsers():
    assert slurm_time("1-00:00:00") == 86400 and slurm_time("30:00") == 1800 and slurm_time("UNLIMITED") is None
    assert parse_qos("normal|\ndev|02:00:00\n") == {"normal": None, "dev": 7200}
    assert parse_assoc("gpuhub-test|astro\ngpuhub-test2|Physics\n", "gpuhub-test2") == {"physics"}
    assert parse_partitions(SCONTROL)["debug"]["MaxTime"] == "01:00:00"


def test_a_true_site_file_checks_out():
    findings = compare(SITE2, facts())
    assert all(f.ok for f in findings), [f.message for f in findings if not f.ok]
    assert {f.path for f in findings} >= {"partitions.v100.gpus_per_node", "partitions.debug.max_walltime",
                                          "defaults.project"}


def test_each_wrong_value_is_reported_with_its_fix():
    wrong = SITE2.model_copy(update={"partitions": {
        **SITE2.partitions,
        "v100": SITE2.partitions["v100"].model_copy(update={"gpus_per_node": 8, "max_walltime": 2 * 86400}),
        "debug": SITE2.partitions["debug"].model_copy(update={"gres_type": "a100"}),
    }})
    bad = {f.path: f for f in compare(wrong, facts(accounts={"chem"})) if not f.ok}
    assert set(bad) == {"partitions.v100.gpus_per_node", "partitions.v100.max_walltime",
                        "partitions.debug.gres_type", "defaults.project"}
    assert bad["partitions.v100.gpus_per_node"].fix == "4"
    assert bad["partitions.v100.max_walltime"].fix == "1-00:00:00"
    assert bad["partitions.debug.gres_type"].fix == "v100"
    assert "is not one of yours on gpuhub-test2 (chem)" in bad["defaults.project"].message


def test_test_only_output():
    stderr = "sbatch: Job 3 to start at 2026-12-03T08:04:45 using 1 processors on nodes m1 in partition v100\n"
    assert parse_test_only(0, "", stderr).isoformat() == "2026-12-03T08:04:45"
    assert parse_test_only(0, "", "") is None
    with pytest.raises(Refused, match="refused by sbatch --test-only: Invalid account or account/partition"):
        parse_test_only(1, "", "sbatch: error: Batch job submission failed: Invalid account or account/partition "
                               "combination specified\n")
