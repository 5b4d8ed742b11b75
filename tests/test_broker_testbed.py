"""The broker against the testbed's two real Slurm clusters."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gpuhub.exporter import slurm
from gpuhub.registry import load_file
from gpuhub.transport import transport_for

DATA = Path(__file__).parent / "data"
pytestmark = [pytest.mark.slurm, pytest.mark.ssh]


def test_second_cluster_is_its_own_cluster_behind_its_own_login_node(testbed2):
    site = load_file(DATA / "broker" / "testbed2.yaml")
    transport = transport_for(site)
    config = transport.run(["scontrol", "show", "config"], timeout=30).stdout
    assert f"ClusterName             = {testbed2['TESTBED2_CLUSTER']}" in config
    reading = slurm.read(transport, time.monotonic() + 30)
    assert [n.name for n in reading.nodes] == ["m1"]
    assert reading.nodes[0].total == {"v100": 4} and reading.default_partition == "v100"
