"""Whatever a user types in a name, an argument or an environment value reaches the job
byte for byte, through a real bash, and nothing in it is ever executed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuhub.plan import plan
from gpuhub.registry import load_file, load_site
from gpuhub.render import render
from gpuhub.request import JobRequest

DATA = Path(__file__).parent / "data" / "sites"
DUMP = (
    "import json, os, sys; print(json.dumps({'argv': sys.argv[1:], 'name': os.environ['GPUHUB_JOB_NAME'],"
    " 'a': os.environ.get('USER_A'), 'b': os.environ.get('USER_B'), 'cwd': os.getcwd()}))"
)
# Any text a shell can carry: everything but NUL (surrogates are not text).
shell_text = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=40)


def sites():
    htc = load_site("local").model_copy(update={"scheduler": "htcondor"})  # the wrapper is what runs
    return {"slurm": load_file(DATA / "testbed.yaml"), "local": load_site("local"), "htcondor": htc}


SITES = sites()


def run_job(site_kind: str, request: JobRequest, cwd: Path) -> dict:
    site = SITES[site_kind]
    job = render(plan(site, request))
    script = job.files["job.sh" if site_kind == "htcondor" else job.main_file]
    result = subprocess.run(["bash", "-c", script, "job"], capture_output=True, cwd=cwd, timeout=30)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return json.loads(result.stdout)


@pytest.mark.parametrize("site_kind", ["slurm", "local", "htcondor"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=shell_text, args=st.lists(shell_text, max_size=4), a=shell_text, b=shell_text)
def test_values_arrive_unchanged(site_kind, name, args, a, b, tmp_path):
    request = JobRequest(
        command=[sys.executable, "-c", DUMP, *args], name=name, env={"USER_A": a, "USER_B": b}, gpus=0
    )
    out = run_job(site_kind, request, tmp_path)
    assert out["argv"] == args
    assert out["name"] == name
    assert (out["a"], out["b"]) == (a, b)


PAYLOADS = [
    "$(touch {m})",
    "`touch {m}`",
    "; touch {m}",
    "' ; touch {m}; '",
    '" ; touch {m}; "',
    "\n touch {m}\n",
    "$(touch {m})\\",
    "${{IFS}}$(touch${{IFS}}{m})",
    "a\r\ntouch {m}",
    "-e touch {m}",
    "#SBATCH --wrap=touch {m}",
]


@pytest.mark.parametrize("site_kind", ["slurm", "local", "htcondor"])
@pytest.mark.parametrize("payload", PAYLOADS)
def test_injection_executes_nothing(site_kind, payload, tmp_path):
    marker = tmp_path / "pwned"
    text = payload.format(m=marker)
    request = JobRequest(
        command=[sys.executable, "-c", DUMP, text], name=text, env={"USER_A": text}, gpus=0
    )
    out = run_job(site_kind, request, tmp_path)
    assert out["argv"] == [text] and out["name"] == text and out["a"] == text
    assert not marker.exists()


@pytest.mark.parametrize("site_kind", ["slurm", "local"])
def test_workdir_with_hostile_name(site_kind, tmp_path):
    odd = tmp_path / "dir with 'quotes' and $(touch x) ;"
    odd.mkdir()
    request = JobRequest(command=[sys.executable, "-c", DUMP], workdir=str(odd), gpus=0)
    assert run_job(site_kind, request, tmp_path)["cwd"] == str(odd)
    assert not (tmp_path / "x").exists()


def test_workdir_tilde_means_home(tmp_path, monkeypatch):
    (tmp_path / "proj").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path))
    request = JobRequest(command=[sys.executable, "-c", DUMP], workdir="~/proj", gpus=0)
    assert run_job("local", request, tmp_path)["cwd"] == str(tmp_path / "proj")


def test_slurm_job_name_directive_is_sanitised():
    job = render(plan(SITES["slurm"], JobRequest(command=["x"], name="my run; rm -rf / \n#SBATCH --x")))
    lines = [line for line in job.files["job.sbatch"].splitlines() if line.startswith("#SBATCH --job-name")]
    assert lines == ["#SBATCH --job-name=my_run_rm_-rf_SBATCH_--x"]


def test_script_mode_runs_the_script_text(tmp_path):
    request = JobRequest(script='echo "args:$#" > out.txt; printf %s "$GPUHUB_JOB_NAME" >> out.txt', name="n 1")
    job = render(plan(SITES["local"], request))
    subprocess.run(["bash", "-c", job.files["job.sh"]], cwd=tmp_path, check=True, timeout=30)
    assert (tmp_path / "out.txt").read_text() == "args:0\nn 1"
