"""The real OAR testbed, driven as the login user over the loopback sshd, read by gpuhub's parsers."""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest

from gpuhub.backends.oar_parse import gpu_seconds, job_gpus, parse_oarnodes, parse_oarstat, parse_submit
from gpuhub.site import Connection
from gpuhub.transport.ssh import SSHTransport

pytestmark = [pytest.mark.oar, pytest.mark.ssh]


@pytest.fixture
def login(oar_testbed):
    transport = SSHTransport("oar-testbed", Connection(
        host=oar_testbed["TESTBED_SSH_HOST"], port=int(oar_testbed["TESTBED_SSH_PORT"]),
        user=oar_testbed["TESTBED_SSH_USER"], identity_file=oar_testbed["TESTBED_SSH_KEY"],
        known_hosts=oar_testbed["TESTBED_KNOWN_HOSTS"]))
    yield transport
    transport.close()


def oar_db_gpu_seconds(job_ids: list[str]) -> dict[str, int]:
    """GPU-seconds as OAR's own database has them: distinct `gpu` of the assigned resources x run time."""
    sql = ("SELECT j.job_id, count(DISTINCT r.gpu) * (j.stop_time - j.start_time) FROM jobs j "
           "JOIN assigned_resources a ON a.moldable_job_id = j.assigned_moldable_job "
           "JOIN resources r ON r.resource_id = a.resource_id "
           f"WHERE j.job_id IN ({','.join(str(int(i)) for i in job_ids)}) GROUP BY j.job_id, j.stop_time, j.start_time")
    out = subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-X", "-p", "5432", "-d", "oar", "-tAc", sql],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return {k: int(v) for k, v in (line.split("|") for line in out.split())}


def wait_finished(login, ids: list[str], timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        jobs = parse_oarstat(login.run(["oarstat", "-fJ", *[a for i in ids for a in ("-j", i)]]).stdout)
        if all(jobs[i].state in ("Terminated", "Error") for i in ids):
            return jobs
        assert time.monotonic() < deadline, {i: jobs[i].state for i in ids}
        time.sleep(0.5)


def test_scripts_with_oar_directives_run_on_the_model_asked(login):
    workdir = f"oar-tests/{uuid.uuid4().hex[:8]}"
    login.run(["mkdir", "-p", workdir])
    home = login.run(["pwd"]).stdout.strip()
    ids = {}
    for model, gpus in (("A100", 1), ("V100", 2)):
        script = (f"#!/bin/bash\n#OAR -n smoke-{model}\n#OAR -l /nodes=1/gpu={gpus},walltime=0:02:00\n"
                  f"#OAR -p gpumodel='{model}'\n#OAR -O {home}/{workdir}/%jobid%.out\n"
                  f"#OAR -E {home}/{workdir}/%jobid%.err\necho \"$OAR_JOB_NAME on $(sort -u $OAR_NODEFILE)\"\n"
                  "sleep 2\n")
        path = f"{home}/{workdir}/{model}.oar"
        login.put_text(path, script, mode=0o755)
        ids[model] = parse_submit(login.run(["oarsub", "-d", f"{home}/{workdir}", "-S", path]).stdout).id
    jobs = wait_finished(login, list(ids.values()))
    resources = parse_oarnodes(login.run(["oarnodes", "-J"]).stdout)
    for model, gpus in (("A100", 1), ("V100", 2)):
        job = jobs[ids[model]]
        assert job.status.state.value == "completed", job
        assert {resources[r].model for r in job.resources} == {model}
        assert len(job_gpus(job, resources)) == gpus
        host = job.hosts[0]
        assert login.get_text(f"{home}/{workdir}/{job.job_id}.out") == f"smoke-{model} on {host}\n"
    ours = {i: gpu_seconds(jobs[i], resources) for i in ids.values()}
    assert ours == oar_db_gpu_seconds(list(ids.values()))
    assert all(v > 0 for v in ours.values())
