"""The package-level Python API, whatever submodules were imported before."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("first", ["", "import gpuhub.jobs", "import gpuhub.plan, gpuhub.render",
                                   "from gpuhub.render import render"])
def test_plan_and_render_callable_from_the_package(first: str) -> None:
    code = f"""{first}
import gpuhub
site = gpuhub.load_site("jean-zay")
request = gpuhub.JobRequest(command=["python", "train.py"], gpus=8, gpu_type="a100", project="abc", time="10h")
rendered = gpuhub.render(gpuhub.plan(site, request))
assert rendered.submit_argv == ["sbatch", "--parsable"], rendered.submit_argv
assert "#SBATCH --account=abc@a100" in rendered.files["job.sbatch"]
import gpuhub.plan as module
assert module.plan(site, request).gpus == 8   # the submodule stays a module
from gpuhub import plan
assert plan(site, request).nodes == 1
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
