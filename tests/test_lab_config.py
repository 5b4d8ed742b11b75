"""The ``lab:`` block of a site file: bad values are refused with the file, line and rule."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

BASE = """
name: lab-x
scheduler: ssh
connection: {host: gpu1}
partitions:
  gpu: {gpus_per_node: 4}
"""


def validate(tmp_path, body: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "lab-x.yaml"
    path.write_text(textwrap.dedent(BASE) + textwrap.dedent(body))
    return subprocess.run([sys.executable, "-m", "gpuhub", "sites", "validate", str(path)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("lab: {lock_dir: ~/locks}", "lab.lock_dir: '~/locks' must be an absolute path"),
        ("lab: {max_gpus_per_user: 0}", "lab.max_gpus_per_user: Input should be greater than or equal to 1"),
        ("lab: {busy_utilization: 101}", "lab.busy_utilization: Input should be less than or equal to 100"),
        ("lab: {reserved_gpus: [1, 1]}", "reserved_gpus repeat: [1, 1]"),
        ("lab: {hosts: [gpu1, gpu2, gpu2]}", "hosts repeat: gpu2"),
        ("lab: {hosts: [gpu2, gpu3]}", "connection.host: 'gpu1' must be one of lab.hosts (gpu2, gpu3)"),
        ("lab: {hosts: ['gpu 1']}", "host name 'gpu 1'"),
        ("lab: {nvidia_smi: 'nvidia-smi; rm -rf ~'}", "must be a command name or path without blanks"),
        ("lab: {max_walltime: 1y}", "lab.max_walltime"),
        ("lab: {kill_grace: 0}", "lab.kill_grace"),
    ],
)
def test_bad_lab_values(tmp_path, body, message):
    result = validate(tmp_path, body)
    assert result.returncode == 2, result
    assert message in result.stderr and "Traceback" not in result.stderr


def test_lab_block_only_on_ssh_sites(tmp_path):
    path = tmp_path / "slurmy.yaml"
    path.write_text(
        "name: slurmy\nscheduler: local\npartitions: {cpu: {gpus_per_node: 0}}\nlab: {max_gpus_per_user: 2}\n"
    )
    result = subprocess.run([sys.executable, "-m", "gpuhub", "sites", "validate", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "lab: 'lab' settings are for lab GPU servers (scheduler ssh)" in result.stderr


def test_a_good_pool(tmp_path):
    body = """
    lab:
      hosts: [gpu1, {name: gpu2, host: 10.0.0.2, port: 2200, lock_dir: /scratch/locks}]
      max_gpus_per_user: 2
      max_walltime: 72h
      reserved_gpus: [0]
    """
    result = validate(tmp_path, body)
    assert result.returncode == 0, result.stderr
