"""OAR parsers on output recorded from a real OAR 2.5.9 (scripts/testbed/oar-record.sh)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuhub.backends.oar_parse import (
    exit_status,
    gpu_seconds,
    job_gpus,
    parse_oarnodes,
    parse_oarstat,
    parse_submit,
)
from gpuhub.errors import GpuhubError
from gpuhub.states import State

DATA = Path(__file__).parent / "data" / "oar"


def read(name: str) -> str:
    return (DATA / name).read_text()


def rc(name: str) -> int:
    return int(read(name + ".rc"))


def only(name: str):
    jobs = parse_oarstat(read(name))
    assert len(jobs) == 1
    return next(iter(jobs.values()))


def test_submit_id_after_admission_rule_lines():
    out = read("oarsub_script.txt")
    assert out.startswith("[ADMISSION RULE]")
    sub = parse_submit(out)
    assert sub.job_ids == ("2",) and sub.array_id is None and sub.id == "2"


def test_submit_array_tracks_the_array_id():
    sub = parse_submit(read("oarsub_array.txt"))
    assert sub.job_ids == ("5", "6", "7")
    assert sub.array_id == "5" and sub.id == "5"


def test_submit_json_of_259_still_read_from_the_plain_line():
    assert parse_submit(read("oarsub_json.txt")).id == "4"


@pytest.mark.parametrize("name", ["oarsub_too_many_gpus.txt", "oarsub_bad_property.txt", "oarsub_bad_syntax.txt"])
def test_refused_submission_has_no_id(name):
    # A refused job prints OAR_JOB_ID=-5: a negative id is not a job.
    assert rc(name) != 0
    with pytest.raises(GpuhubError, match="without an OAR_JOB_ID line"):
        parse_submit(read(name))


def test_waiting_then_running_then_terminated():
    waiting = only("oarstat_waiting.json")
    assert waiting.state == "Waiting" and waiting.status.state is State.PENDING
    assert waiting.start is None and waiting.resources == ()
    running = only("oarstat_running.json")
    assert running.status.state is State.RUNNING and running.status.nodes == "oarnode1"
    assert running.start and running.stop is None and running.status.end is None
    done = parse_oarstat(read("oarstat_terminated.json"))
    first, second = done["2"], done["3"]
    # The script exited 3: a raw wait status of 768.
    assert first.exit_code == 768 and exit_status(768) == (3, 0)
    assert first.status.state is State.FAILED and first.status.exit_code == "3:0"
    assert second.status.state is State.COMPLETED and second.status.exit_code == "0:0"
    assert second.status.end == second.stop and second.stop > second.start


def test_fields_from_script_directives():
    job = only("oarstat_running.json")
    assert (job.name, job.project, job.owner) == ("rec-script", "physics", "hubuser")
    assert job.stdout_file == f"rec-{job.job_id}.out" and job.stderr_file == f"rec-{job.job_id}.err"
    assert job.workdir == "/home/hubuser/oar-record" and job.walltime == 300


def test_without_full_flag_stop_and_exit_code_are_missing():
    job = only("oarstat_not_full.json")
    assert job.walltime is None and job.exit_code is None and job.stop is None


def test_several_jobs_in_one_call():
    assert set(parse_oarstat(read("oarstat_two.json"))) == {"2", "3"}


def test_unknown_job_prints_nothing():
    assert read("oarstat_unknown.json") == "" and rc("oarstat_unknown.json") == 0
    assert parse_oarstat(read("oarstat_unknown.json")) == {}


def test_cancelled_is_error_with_frag_event():
    job = only("oarstat_cancelled.json")
    assert job.state == "Error" and "FRAG_JOB_REQUEST" in job.events
    assert job.status.state is State.CANCELLED and job.status.end == job.stop


def test_ends_walltime_signal_hold_resubmit():
    jobs = {j.name + ("-again" if j.resubmit_of else ""): j for j in parse_oarstat(read("oarstat_ends.json")).values()}
    walltime = jobs["rec-walltime"]
    # Past its walltime OAR frags the job too: the WALLTIME event decides.
    assert walltime.events[:2] == ("FRAG_JOB_REQUEST", "WALLTIME")
    assert walltime.status.state is State.TIMEOUT
    signal = jobs["rec-signal"]
    assert signal.state == "Terminated" and exit_status(signal.exit_code) == (0, 9)
    assert signal.status.state is State.FAILED and signal.status.exit_code == "0:9"
    held = jobs["rec-hold"]
    assert held.start is None and held.status.state is State.CANCELLED
    first, again = jobs["rec-idem"], jobs["rec-idem-again"]
    assert exit_status(first.exit_code)[0] == 99 and "RESUBMIT_JOB_AUTOMATICALLY" in first.events
    assert again.resubmit_of == first.job_id and again.types == ("idempotent",)


def test_hold_is_pending_with_reason():
    status = only("oarstat_hold.json").status
    assert status.state is State.PENDING and status.reason == "Hold"


def test_array_jobs_share_the_array_id():
    jobs = parse_oarstat(read("oarstat_array.json"))
    assert {j.array_id for j in jobs.values()} == {"5"}
    assert sorted(j.array_index for j in jobs.values()) == [1, 2, 3]
    assert all(j.types == ("idempotent",) for j in jobs.values())
    # The first job of an array has its own id as array id, like a plain job: --array tells them apart.
    assert all(j.in_array for j in jobs.values())
    assert not any(j.in_array for j in parse_oarstat(read("oarstat_terminated.json")).values())


def test_resources_and_gpu_seconds():
    resources = parse_oarnodes(read("oarnodes.json"))
    assert len(resources) == 16
    assert {r.model for r in resources.values() if r.host == "oarnode2"} == {"V100"}
    two = parse_oarstat(read("oarstat_terminated.json"))["3"]
    # 4 resources (cores) = 2 distinct GPUs
    assert len(two.resources) == 4 and len(job_gpus(two, resources)) == 2
    assert gpu_seconds(two, resources) == 2 * (two.stop - two.start)
    assert gpu_seconds(only("oarstat_running.json"), resources) == 0


def test_not_json_is_one_clear_error():
    with pytest.raises(GpuhubError, match="not JSON"):
        parse_oarstat("Cannot connect to the database\n")
    with pytest.raises(GpuhubError, match="object of objects"):
        parse_oarstat("[1, 2]")


def test_busy_resources_and_what_queued_jobs_ask():
    resources = parse_oarnodes(read("oarnodes_busy.json"))
    assert sorted(r.resource_id for r in resources.values() if r.busy) == [1, 2]
    assert not any(r.drain for r in resources.values())
    queue = parse_oarstat(read("oarstat_queue.json"))
    assert sorted(j.state for j in queue.values()) == ["Running", "Waiting"]
    waiting = next(j for j in queue.values() if j.state == "Waiting")
    assert "network_address=2/gpu=4" in waiting.wanted and waiting.submitted
