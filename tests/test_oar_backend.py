"""The OAR backend without a cluster: #OAR lines, site checks, usage rows and GPU readings from
output recorded on a real OAR 2.5.9 (tests/data/oar)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuhub.accounting.oar_usage import usage_rows, window_sql
from gpuhub.backends import backend_for
from gpuhub.backends.oar import oar_walltime
from gpuhub.backends.oar_parse import gpu_seconds, parse_oarnodes, parse_oarstat
from gpuhub.errors import ConfigError, GpuhubError, RequestError
from gpuhub.exporter.oar import asked_gpus, parse_nodes, parse_queue
from gpuhub.plan import plan
from gpuhub.registry import load_site
from gpuhub.render import render
from gpuhub.request import JobRequest
from gpuhub.states import State
from gpuhub.transport.base import Result

DATA = Path(__file__).parent / "data" / "oar"


def script(**kw) -> str:
    kw.setdefault("command", ["python", "train.py"])
    kw.setdefault("project", "pr-physics")
    job = render(plan(load_site("gricad-bigfoot"), JobRequest(**kw)), token="0123abcd")
    return job.files["job.oar"]


def oar_lines(text: str) -> list[str]:
    return [line[5:] for line in text.splitlines() if line.startswith("#OAR ")]


def test_directives_of_a_bigfoot_job():
    assert oar_lines(script(gpus=2, time="90m", name="my run")) == [
        "-n my_run",
        "-l /nodes=1/gpu=2,walltime=1:30:00",
        "-p gpumodel='V100'",
        "--project pr-physics",
        "-O gpuhub-logs/my_run-%jobid%.out",
        "-E gpuhub-logs/my_run-%jobid%.err",
    ]


def test_walltime_hours_pass_24():
    assert oar_walltime(48 * 3600 + 61) == "48:01:01"


def test_project_is_required():
    with pytest.raises(RequestError, match="project"):
        script(gpus=1, project=None)


def test_properties_are_joined_and_own_options_refused():
    lines = oar_lines(script(gpus=1, gpu_type="a100", directives=["-p mem_per_gpu > 74", "-t besteffort"]))
    assert "-p (gpumodel='A100') AND (mem_per_gpu > 74)" in lines and lines[-1] == "-t besteffort"
    with pytest.raises(RequestError, match="--name"):
        script(gpus=1, directives=["-n other"])
    with pytest.raises(RequestError, match="not an option oarsub reads"):
        script(gpus=1, directives=["--mem=4G"])


def test_array_maps_oar_numbering_to_the_indices_asked():
    text = script(gpus=1, array="3,5-6")
    assert "--array 3" in oar_lines(text)
    assert "gpuhub_indices=(3 5 6)" in text
    assert 'export GPUHUB_ARRAY_INDEX="${gpuhub_indices[OAR_ARRAY_INDEX-1]}"' in text
    with pytest.raises(RequestError, match="cannot limit"):
        script(gpus=1, array="0-9%2")


def test_dependency_and_requeue():
    lines = oar_lines(script(gpus=1, dependency="afterany:12:13", requeue=True))
    assert {"-a 12", "-a 13", "-t idempotent", "--signal 12"} <= set(lines)
    assert any(line.startswith("--checkpoint ") for line in lines)
    with pytest.raises(RequestError, match="afterany"):
        script(gpus=1, dependency="afterok:12")


def test_two_nodes_and_torchrun_limits():
    assert "-l /nodes=2/gpu=4,walltime=1:00:00" in oar_lines(script(nodes=2, gpus_per_node=4, time="1h"))
    with pytest.raises(RequestError, match="OAR_NODEFILE"):
        script(nodes=2, gpus_per_node=4, launcher="torchrun")


def test_site_checks(tmp_path, monkeypatch):
    body = (Path(__file__).parent.parent / "site_configs" / "gricad-bigfoot.yaml").read_text()
    bad = body.replace("name: gricad-bigfoot", "name: bad-oar").replace(
        "description: NVIDIA V100 nodes", "description: x\n    directives: ['--bogus 1']")
    (tmp_path / "bad-oar.yaml").write_text(bad)
    monkeypatch.setenv("GPUHUB_SITES", str(tmp_path))
    with pytest.raises(ConfigError, match="not an option oarsub reads"):
        load_site("bad-oar")


def test_usage_rows_match_gpu_seconds():
    resources = parse_oarnodes((DATA / "oarnodes.json").read_text())
    jobs = parse_oarstat((DATA / "oarstat_terminated.json").read_text())
    rows = {r.job_id: r for r in usage_rows("gricad", jobs, resources, now=0)}
    for job_id, job in jobs.items():
        row = rows[job_id]
        assert row.gpus * row.wall_seconds == gpu_seconds(job, resources) > 0
        assert row.account == "physics" and row.user == "hubuser" and row.end
    assert rows["3"].gpus == 2 and rows["3"].gpu_model == "a100" and rows["3"].state == "COMPLETED"
    assert rows["2"].state == "FAILED"
    running = list(usage_rows("gricad", parse_oarstat((DATA / "oarstat_running.json").read_text()), resources, now=0))
    assert running and running[0].end is None
    assert window_sql(10, 20) == "start_time > 0 AND start_time < 20 AND (stop_time = 0 OR stop_time >= 10)"


def test_array_usage_rows_name_their_task():
    resources = parse_oarnodes((DATA / "oarnodes.json").read_text())
    jobs = parse_oarstat((DATA / "oarstat_array.json").read_text())
    assert sorted(r.job_ref for r in usage_rows("g", jobs, resources, now=0)) == ["5_1", "5_2", "5_3"]


def test_live_gpus_and_queue():
    resources = parse_oarnodes((DATA / "oarnodes_busy.json").read_text())
    nodes = {n.name: n for n in parse_nodes(resources)}
    assert nodes["oarnode1"].total == {"a100": 4} and nodes["oarnode2"].total == {"v100": 4}
    assert nodes["oarnode1"].used == {"a100": 1} and nodes["oarnode2"].used == {}
    assert all(n.available for n in nodes.values())
    queue = sorted(parse_queue((DATA / "oarstat_queue.json").read_text(), resources), key=lambda j: j.state)
    assert [(j.state, j.gpus) for j in queue] == [("pending", {"": 8}), ("running", {"a100": 1})]
    assert asked_gpus("-l \"{type = 'default'}/network_address=2/gpu=4,walltime=0:1:0\" ") == 8


def test_backend_capabilities():
    can = backend_for("oar").capabilities
    assert can.multi_node and can.arrays and can.dependencies and can.requeue
    assert "srun" not in can.launchers


class Recorded:
    """Answers every command with one recorded output, and keeps the argv it was given."""

    def __init__(self, name: str, returncode: int = 0) -> None:
        self.stdout, self.returncode, self.argv = (DATA / name).read_text(), returncode, []

    def run(self, argv, stdin=None, timeout=60.0, check=True):
        self.argv.append(argv)
        return Result(argv, self.returncode, self.stdout, "")


def test_poll_follows_a_resubmitted_job_and_combines_arrays():
    backend = backend_for("oar")
    ends = Recorded("oarstat_ends.json")
    # 11 exited 99 and OAR resubmitted it as 12 (same array id): 12's state is the job's.
    statuses = backend.poll(ends, ["11", "8", "9"])
    assert ends.argv == [["oarstat", "-fJ", "--sql", "array_id IN (8,9,11)"]]
    assert statuses["11"].state is State.RUNNING and statuses["11"].start == 1796285412  # run 12
    assert statuses["8"].state is State.TIMEOUT and statuses["9"].state is State.FAILED
    array = backend.poll(Recorded("oarstat_array.json"), ["5"], tasks={"5": 3})["5"]
    assert array.state is State.COMPLETED and array.reason == "array: 3 completed"


def test_cancel_accepts_already_killed_and_refuses_other_failures():
    backend = backend_for("oar")
    backend.cancel(Recorded("oardel_again.txt", returncode=6), ["4"])
    with pytest.raises(GpuhubError, match="oardel failed"):
        backend.cancel(Recorded("oardel_unknown.txt", returncode=1), ["999999"])
    with pytest.raises(GpuhubError, match="not OAR job ids"):
        backend.cancel(Recorded("oardel.txt"), ["4; true"])
