"""Every Slurm script gpuhub renders for a shipped site is accepted by a real ``sbatch --test-only``.

The testbed mirrors the shipped sites' partitions, node features, GRES types, QoS, licences and
the accounts used here (scripts/testbed/gen_conf.py), so each directive is checked by Slurm itself.
"""

from __future__ import annotations

import subprocess

import pytest

from golden_cases import rendered

pytestmark = pytest.mark.slurm

SLURM_JOBS = [(site, case, job) for site, case, job in rendered() if job.submit_argv[0] == "sbatch"]


@pytest.mark.parametrize(("site", "case", "job"), SLURM_JOBS, ids=[f"{s}-{c}" for s, c, _ in SLURM_JOBS])
def test_sbatch_accepts(testbed, site, case, job, tmp_path):
    proc = subprocess.run(
        ["sbatch", "--test-only", *job.submit_argv[1:]],
        input=job.files[job.stdin_file],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 0, f"{site}/{case}: {proc.stderr.strip()}"
    assert "to start at" in proc.stderr


def test_sbatch_rejects_what_the_site_does_not_have(testbed, tmp_path):
    """The check has teeth: an account the cluster does not know is refused."""
    job = SLURM_JOBS[0][2]
    script = job.files[job.stdin_file].replace("#SBATCH --account=", "#SBATCH --account=nosuch", 1)
    if "#SBATCH --account=nosuch" not in script:
        script = script.replace("#!/bin/bash\n", "#!/bin/bash\n#SBATCH --account=nosuchaccount\n", 1)
    proc = subprocess.run(["sbatch", "--test-only"], input=script, capture_output=True, text=True, cwd=tmp_path,
                          timeout=60)
    assert proc.returncode != 0
