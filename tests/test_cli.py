"""The command line: outputs for people and scripts, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpuhub.cli import main

DATA = Path(__file__).parent / "data" / "sites"


def run(*args: str, ok: bool = True):
    result = CliRunner().invoke(main, list(args))
    if ok:
        assert result.exit_code == 0, result.output + result.stderr
    return result


def gpuhub(*args: str, env=None):
    """The real console entry point in a subprocess, to see exit codes and stderr as users do."""
    return subprocess.run([sys.executable, "-m", "gpuhub", *args], capture_output=True, text=True, env=env,
                          timeout=60)


def test_help_lists_commands_with_examples():
    out = run("--help").output
    assert "render" in out and "sites" in out and "Examples" in out


def test_help_does_not_import_heavy_modules():
    code = ("import sys; from gpuhub.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('pydantic', 'jinja2', 'paramiko', 'prometheus_client', 'yaml')"
            " if m in sys.modules]\nprint('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out


def test_sites_list_table_and_json():
    table = run("sites", "list").output
    assert table.splitlines()[0].split()[:3] == ["SITE", "SCHEDULER", "HOST"]
    assert "jean-zay" in table and "local" in table
    data = json.loads(run("sites", "list", "--json").output)
    names = {d["name"] for d in data}
    assert {"local", "jean-zay", "cc-in2p3"} <= names
    jz = next(d for d in data if d["name"] == "jean-zay")
    assert jz["scheduler"] == "slurm" and "a100" in jz["gpu_models"]
    assert jz["files"][0]["layer"] == "shipped"


def test_sites_show_marks_unverified_values():
    out = run("sites", "show", "jean-zay").output
    assert "(unverified)" in out
    assert "Unverified values" in out
    assert "Your overrides go in" in out
    data = json.loads(run("sites", "show", "jean-zay", "--json").output)
    assert data["unverified"] and data["account"]["format"] == "{project}@{gpu_model}"
    assert data["partitions"]["a100"]["max_walltime"] == "20:00:00"


def test_sites_schema_is_json_schema():
    schema = json.loads(run("sites", "schema").output)
    assert schema["title"] == "gpuhub site configuration"
    assert "partitions" in schema["properties"] and "required" in schema["$defs"]["Account"]["properties"]
    # Any file may be an override of a lower layer, so an editor must not demand any key.
    found = re.findall(r'"required": \[', json.dumps(schema))
    assert not found


def test_validate_all_and_paths():
    assert "ok  jean-zay" in run("sites", "validate").output
    assert "ok  testbed" in run("sites", "validate", str(DATA / "testbed.yaml")).output


def test_validate_user_override_merged_over_shipped(isolated):
    user = isolated / "config" / "sites"
    user.mkdir(parents=True)
    (user / "jean-zay.yaml").write_text("connection: {user: abc123}\ndefaults: {project: abc}\n")
    assert "ok  jean-zay" in run("sites", "validate", str(user / "jean-zay.yaml")).output
    out = run("render", "--site", "jean-zay", "--gpu-type", "a100", "--gpus", "8", "--", "python", "t.py").output
    assert "#SBATCH --account=abc@a100" in out


def test_bad_site_file_one_line_exit_2_no_traceback(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: broken\nscheduler: slurm\nconnection: {host: h}\npartitions:\n  g: {gpus_per_node: x}\n")
    proc = gpuhub("sites", "validate", str(bad))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"gpuhub: {bad}:5: partitions.g.gpus_per_node: Input should be a valid integer, " \
        "unable to parse string as an integer (got 'x')"


def test_broken_site_in_layer_listed_as_error(isolated, monkeypatch):
    extra = isolated / "extra"
    extra.mkdir()
    (extra / "oops.yaml").write_text("scheduler: [\n")
    monkeypatch.setenv("GPUHUB_SITES", str(extra))
    result = run("sites", "list", ok=False)
    assert result.exit_code == 2
    assert "jean-zay" in result.stdout
    assert "invalid site file" in result.stderr and "oops.yaml:2" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--site", "nope", "--", "x"], "unknown site 'nope'"),
        (["--time", "3x", "--", "x"], "--time: walltime '3x' is not understood"),
        (["--env", "NOEQUALS", "--", "x"], "'NOEQUALS' is not KEY=VALUE"),
        (["--site", "jean-zay", "--", "x"], "needs a project"),
        (["--site", "jean-zay", "-P", "abc", "--gpu-type", "a100", "--time", "30h", "--", "x"],
         "over the 20:00:00 limit of partition 'a100'"),
        (["--site", "jean-zay", "-P", "abc", "--gpus-per-node", "16", "--gpu-type", "h100", "--", "x"],
         "16 GPUs per node asked"),
        (["--site", "jean-zay", "-P", "abc", "--gpu-type", "b200", "--", "x"], "no GPU model 'b200'"),
        ([], "nothing to run"),
        (["--array", "1-", "--", "x"], "--array"),
        (["--site", "jeanzay", "--", "x"], "unknown site 'jeanzay'; did you mean 'jean-zay'?"),
        (["--gpus", "1", "--", "x"], "site 'local' declares no GPUs: run with --gpus 0"),
        (["--gpus", "0", "python3", "-c", "print(1)"],
         "No such option '-c'; if it is an option of the program to run, put the program after '--': "
         "gpuhub render --gpus 0 -- python3 -c 'print(1)'"),
        (["-x"], "options of the program to run go after '--'"),
    ],
)
def test_render_errors(args, message):
    proc = gpuhub("render", *args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_render_prints_script_on_stdout_and_plan_on_stderr():
    proc = gpuhub("render", "--site", "jean-zay", "-P", "abc", "--gpu-type", "a100", "--gpus", "16", "-t", "10h",
                  "--", "python", "train.py")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("#!/bin/bash\n#SBATCH --job-name=gpuhub\n#SBATCH --account=abc@a100\n")
    assert "#SBATCH --nodes=2" in proc.stdout and "#SBATCH --qos=qos_gpu_a100-t3" in proc.stdout
    assert "submit command (over SSH to jean-zay.idris.fr): sbatch --parsable < job.sbatch" in proc.stderr
    assert "16 GPUs over 2 nodes" in proc.stderr


def test_render_json_and_output_dir(tmp_path):
    out = run("render", "--site", "htcondor-example", "--gpus", "2", "--json", "-o", str(tmp_path), "--", "x").output
    data = json.loads(out)
    assert set(data["files"]) == {"job.sub", "job.sh"}
    assert data["submit_argv"] == ["condor_submit", "-terse", "job.sub"]
    assert data["plan"]["gpus"] == 2
    assert (tmp_path / "job.sub").read_text() == data["files"]["job.sub"]
    assert not list(tmp_path.glob("*.tmp"))


def test_render_script_file(tmp_path):
    script = tmp_path / "run.sh"
    script.write_text("echo hello\n")
    out = run("render", "--script", str(script)).output
    assert "bash -c 'echo hello\n' gpuhub-script" in out


def test_site_from_environment(monkeypatch):
    monkeypatch.setenv("GPUHUB_SITE", "ruche")
    assert "#SBATCH --partition=" in run("render", "--", "x").output


def test_after_resolves_gpuhub_ids_to_scheduler_ids(isolated, monkeypatch):
    from gpuhub.ledger import Ledger

    monkeypatch.setenv("GPUHUB_SITES", str(DATA))
    ledger = Ledger()
    for token, scheduler_id in (("t1", "4242"), ("t2", "4243")):
        rec = ledger.add(token=token, site="testbed", scheduler="slurm", name="n", request={}, plan={}, script="")
        ledger.mark_submitted(rec.id, scheduler_id, None, None)
    out = run("render", "--site", "testbed", "--after", "1", "--after", "testbed:4243", "--", "x").output
    assert "#SBATCH --dependency=afterok:4242:4243" in out
    wrong = run("render", "--site", "jean-zay", "-P", "abc", "--after", "1", "--", "x", ok=False)
    assert wrong.exit_code == 2 and "runs on testbed, not on jean-zay" in wrong.output
    both = run("render", "--site", "testbed", "--after", "1", "--dependency", "afterok:1", "--", "x", ok=False)
    assert both.exit_code == 2 and "not both" in both.output


def test_submit_without_dashdash_says_where_the_command_goes():
    proc = gpuhub("submit", "python3", "-c", "print(1)")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "gpuhub submit -- python3 -c 'print(1)'" in proc.stderr


def test_unknown_option_of_gpuhub_itself_keeps_click_suggestions():
    proc = gpuhub("render", "--gpu", "2", "--", "x")
    assert proc.returncode == 2 and "Did you mean" in proc.stderr and "after '--'" not in proc.stderr


@pytest.mark.parametrize("words", [["render", "--site", "je"], ["sites", "show", "je"], ["jobs", "--site", "je"]])
def test_shell_completion_offers_site_names(words):
    env = {**os.environ, "_GPUHUB_COMPLETE": "bash_complete", "COMP_WORDS": " ".join(["gpuhub", *words]),
           "COMP_CWORD": str(len(words))}
    proc = subprocess.run([sys.executable, "-m", "gpuhub"], capture_output=True, text=True, env=env, timeout=60)
    assert "plain,jean-zay" in proc.stdout.splitlines()
