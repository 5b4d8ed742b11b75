"""Slurm output parsers, on output recorded from the real testbed (Slurm 22.05)."""

from pathlib import Path

import pytest

from gpuhub.backends.common import combine_tasks as _combine
from gpuhub.backends.slurm_parse import parse_sacct, parse_squeue, parse_submit, slurm_state
from gpuhub.errors import GpuhubError
from gpuhub.states import JobStatus, State

DATA = Path(__file__).parent / "data" / "slurm"


def test_parse_submit():
    assert parse_submit("1234\n") == "1234"
    assert parse_submit("1234;cluster2\n") == "1234"
    with pytest.raises(GpuhubError, match="not a job id"):
        parse_submit("sbatch: error: Batch job submission failed\n")


@pytest.mark.parametrize(
    ("text", "state"),
    [("PENDING", State.PENDING), ("RUNNING", State.RUNNING), ("COMPLETED", State.COMPLETED),
     ("CANCELLED by 0", State.CANCELLED), ("TIMEOUT", State.TIMEOUT), ("OUT_OF_MEMORY", State.FAILED),
     ("NODE_FAIL", State.FAILED), ("PREEMPTED", State.PREEMPTED), ("REQUEUED", State.PENDING),
     ("COMPLETING", State.RUNNING), ("WEIRD", State.UNKNOWN)],
)
def test_states(text, state):
    assert slurm_state(text) == state


def test_parse_squeue_recorded():
    jobs = parse_squeue((DATA / "squeue.txt").read_text())
    status, comment = jobs["17"]
    assert status.state == State.RUNNING and status.nodes == "n[1-2]" and comment == "gpuhub:abc123"
    assert jobs["19"][0].state == State.PENDING and jobs["19"][0].reason == "Dependency"
    assert jobs["18_1"][0].reason == "JobArrayTaskLimit" and jobs["18_1"][1] == ""
    assert jobs["18_0"][0].reason is None


def test_parse_sacct_recorded():
    jobs = parse_sacct((DATA / "sacct.txt").read_text())
    assert jobs["7"].state == State.COMPLETED and jobs["7"].exit_code == "0:0" and jobs["7"].nodes == "n1"
    assert jobs["8"].state == State.FAILED and jobs["8"].exit_code == "3:0"
    assert jobs["9"].state == State.CANCELLED and jobs["9"].reason == "CANCELLED by 0"
    assert {k for k in jobs if k.startswith("10_")} == {f"10_{i}" for i in range(6)}
    assert jobs["7"].end - jobs["7"].start == 1


def test_array_combination():
    done = JobStatus(State.COMPLETED, start=10, end=20)
    assert _combine([done, JobStatus(State.RUNNING, start=5)]).state == State.RUNNING
    assert _combine([done, JobStatus(State.PENDING)]).state == State.PENDING
    both = _combine([done, JobStatus(State.COMPLETED, start=1, end=30)])
    assert (both.state, both.start, both.end) == (State.COMPLETED, 1, 30)
    failed = _combine([done, JobStatus(State.FAILED), JobStatus(State.CANCELLED)])
    assert failed.state == State.FAILED and "1 cancelled" in failed.reason


def test_array_not_finished_while_tasks_unreported():
    partial = _combine([JobStatus(State.COMPLETED, start=1, end=2)] * 3, expected=5)
    assert partial.state == State.RUNNING and "2 not reported yet" in partial.reason
    assert _combine([JobStatus(State.COMPLETED, start=1, end=2)] * 5, expected=5).state == State.COMPLETED
