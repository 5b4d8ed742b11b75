"""HTCondor output parsers, on output in the documented formats."""

from __future__ import annotations

import pytest

from gpuhub.accounting.condor_collect import usage_rows
from gpuhub.backends.htcondor_parse import Expr, job_status, parse_ads, parse_terse, token_constraint
from gpuhub.errors import GpuhubError
from gpuhub.states import State

# condor_q -json: "[", ads separated by ",", "]"; an expression is written "\/Expr(...)\/".
QUEUE_JSON = r"""[
{
  "ClusterId": 41,
  "ProcId": 0,
  "JobStatus": 2,
  "RemoteHost": "slot1_3@gpu01.example.org",
  "Requirements": "\/Expr((TARGET.GPUs >= RequestGPUs) && (TARGET.Arch == \"X86_64\"))\/",
  "requestgpus": 2,
  "GpuhubToken": "tok1"
},
{
  "clusterid": 42,
  "procid": 0,
  "jobstatus": 5,
  "HoldReason": "The job exceeded allowed job duration of 600 seconds",
  "HoldReasonCode": 46
}
]
"""


def test_terse_is_one_cluster():
    assert parse_terse("123.0 - 123.0\n") == "123"
    assert parse_terse("WARNING: something\n77.0 - 77.9\n") == "77"


@pytest.mark.parametrize("out", ["", "Submitting job(s).\n1 job(s) submitted to cluster 5.\n",
                                 "5.0 - 5.0\n6.0 - 6.0\n"])
def test_terse_refuses_what_is_not_one_cluster(out):
    with pytest.raises(GpuhubError, match=r"not one 'C\.P - C\.P' line"):
        parse_terse(out)


def test_empty_json_output_means_no_job():
    assert parse_ads("") == [] and parse_ads("\n") == []


def test_json_ads_case_insensitive_and_expressions():
    running, held = parse_ads(QUEUE_JSON)
    assert running["RequestGPUs"] == 2 and running["REQUESTGPUS"] == 2
    assert isinstance(running["requirements"], Expr) and running["Requirements"].startswith("(TARGET.GPUs")
    assert held.number("ClusterId") == 42
    assert job_status(running).state == State.RUNNING and job_status(running).nodes == "gpu01.example.org"
    status = job_status(held)
    assert status.state == State.PENDING
    assert status.reason == "held: The job exceeded allowed job duration of 600 seconds"


def test_broken_json_is_one_clear_error():
    with pytest.raises(GpuhubError, match="does not parse"):
        parse_ads('[\n{"ClusterId": 1,\n')
    with pytest.raises(GpuhubError, match="a list of ads"):
        parse_ads('{"ClusterId": 1}')


@pytest.mark.parametrize(
    ("ad", "state", "reason"),
    [
        ({"JobStatus": 0}, State.PENDING, "idle"),
        ({"JobStatus": 1}, State.PENDING, "idle"),
        ({"JobStatus": 2}, State.RUNNING, None),
        ({"JobStatus": 3, "RemoveReason": "via condor_rm (by user ann)"}, State.CANCELLED,
         "removed: via condor_rm (by user ann)"),
        ({"JobStatus": 4, "ExitCode": 0}, State.COMPLETED, None),
        ({"JobStatus": 4, "ExitCode": 3}, State.FAILED, "exit code 3"),
        ({"JobStatus": 4, "ExitBySignal": True, "ExitSignal": 9}, State.FAILED, "killed by signal 9"),
        ({"JobStatus": 5}, State.PENDING, "held: no reason given"),
        ({"JobStatus": 6}, State.RUNNING, "transferring output"),
        ({"JobStatus": 7}, State.RUNNING, "suspended"),
        ({"JobStatus": 9}, State.UNKNOWN, "JobStatus 9"),
    ],
)
def test_job_status_codes(ad, state, reason):
    import json

    status = job_status(parse_ads(json.dumps([ad]))[0])
    assert (status.state, status.reason) == (state, reason)


def test_token_constraint_refuses_what_is_not_a_token():
    assert token_constraint(["ab12", "cd34"]) == 'GpuhubToken =?= "ab12" || GpuhubToken =?= "cd34"'
    with pytest.raises(GpuhubError):
        token_constraint(['x" || true || "'])


HISTORY_JSON = r"""[
{
  "GlobalJobId": "submit.example.org#77.1#1767225600",
  "ClusterId": 77, "ProcId": 1, "Owner": "ann", "AcctGroup": "atlas", "QDate": 1767225600,
  "JobStartDate": 1767225660, "CompletionDate": 1767229260, "EnteredCurrentStatus": 1767229260,
  "JobStatus": 4, "ExitCode": 0, "RemoteWallClockTime": 3600.0, "CommittedTime": 3600,
  "RequestGpus": 2, "GPUsProvisioned": 2, "RequestCpus": 8
},
{
  "ClusterId": 78, "ProcId": 0, "Owner": "bob", "JobStatus": 4, "JobStartDate": 1767225660,
  "CompletionDate": 1767225700, "RequestGPUs": 0
},
{
  "ClusterId": 79, "ProcId": 0, "Owner": "bob", "JobStatus": 2, "QDate": 1767225600,
  "JobStartDate": 1767229200, "RequestGPUs": 1, "RemoteWallClockTime": 0.0
}
]
"""


def test_usage_rows_from_history_and_queue():
    rows = list(usage_rows(parse_ads(HISTORY_JSON), "submit.example.org", "a100", now=1767232800))
    assert [r.job_id for r in rows] == ["77.1", "79.0"]  # the CPU-only job is not a GPU run
    done, running = rows
    assert (done.cluster, done.user, done.account, done.gpus, done.wall_seconds) == (
        "submit.example.org", "ann", "atlas", 2.0, 3600)
    assert (done.start, done.end, done.state, done.gpu_model) == (
        "2026-01-01T00:01:00", "2026-01-01T01:01:00", "COMPLETED", "a100")
    assert running.end is None and running.state == "RUNNING" and running.wall_seconds == 3600
