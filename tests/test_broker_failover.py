"""Failover steps on a real ledger with a scripted scheduler: moves, never two running, crash-safe."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

import pytest

from gpuhub.broker.failover import Ops, advance
from gpuhub.ledger import Ledger
from gpuhub.states import JobStatus, State

TARGETS = [{"site": "a", "partition": "p", "gpu_model": "v100"},
           {"site": "b", "partition": "q", "gpu_model": "a100"},
           {"site": "c", "partition": "r", "gpu_model": "a100"}]


@dataclass
class Scheduler:
    """Job states as a scheduler would report them; cancel only acts on pending jobs."""

    ledger: Ledger
    states: dict[str, State] = field(default_factory=dict)
    starts_on_cancel: set[str] = field(default_factory=set)  # jobs that start just before the cancel lands
    refuse: set[str] = field(default_factory=set)  # sites whose submit fails
    submitted: list[str] = field(default_factory=list)
    crash_after_cancel: bool = False

    def refresh(self, record, ledger):
        ledger.update_status([(record.id, JobStatus(self.states[record.scheduler_id]))])
        return ledger.get(record.id)

    def cancel_pending(self, record):
        sid = record.scheduler_id
        if sid in self.starts_on_cancel:
            self.states[sid] = State.RUNNING
        elif self.states[sid] == State.PENDING:
            self.states[sid] = State.CANCELLED
        if self.crash_after_cancel:
            self.crash_after_cancel = False
            raise KeyboardInterrupt("killed")

    def submit(self, previous, target, ledger):
        first = previous.attempt_of or previous.id
        rec = ledger.add(token=f"t{len(self.submitted)}-{target['site']}", site=target["site"], scheduler="slurm",
                         name="job", request=previous.request,
                         plan={"partition_key": target["partition"]}, script="", attempt_of=first,
                         attempt=len(ledger.attempts(first)) + 1)
        if target["site"] in self.refuse:
            ledger.mark_failed_submit(rec.id, "Invalid account")
            return ledger.get(rec.id)
        sid = f"{target['site']}-{len(self.submitted)}"
        self.submitted.append(sid)
        self.states[sid] = State.PENDING
        return ledger.mark_submitted(rec.id, sid, None, None)

    def ops(self) -> Ops:
        return Ops(self.refresh, self.cancel_pending, self.submit)

    def running(self) -> list[str]:
        return [s for s, st in self.states.items() if st == State.RUNNING]


@pytest.fixture
def world(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    sched = Scheduler(ledger)
    rec = ledger.add(token="first", site="a", scheduler="slurm", name="job", request={"command": ["true"]},
                     plan={"partition_key": "p"}, script="")
    rec = ledger.mark_submitted(rec.id, "a-0", None, None)
    sched.states["a-0"] = State.PENDING
    ledger.start_failover(rec.id, TARGETS, after=60)
    return ledger, sched, rec


def test_waits_then_moves_to_the_next_site(world):
    ledger, sched, rec = world
    t0 = rec.submitted_at
    assert "moves in 30 s" in advance(ledger, rec.id, now=t0 + 30, ops=sched.ops())
    assert advance(ledger, rec.id, now=t0 + 61, ops=sched.ops()) == "moved: attempt 1 on a -> attempt 2 on b"
    attempts = ledger.attempts(rec.id)
    assert [(a.site, a.attempt, a.state) for a in attempts] == [("a", 1, State.CANCELLED), ("b", 2, State.PENDING)]
    assert attempts[1].attempt_of == rec.id


def test_a_job_that_starts_meanwhile_stays_and_nothing_else_is_sent(world):
    ledger, sched, rec = world
    sched.starts_on_cancel.add("a-0")
    message = advance(ledger, rec.id, now=rec.submitted_at + 61, ops=sched.ops())
    assert "became running before it could be moved" in message
    assert sched.submitted == [] and sched.running() == ["a-0"]
    assert ledger.failover(rec.id).done == message


def test_running_job_ends_the_failover(world):
    ledger, sched, rec = world
    sched.states["a-0"] = State.RUNNING
    message = advance(ledger, rec.id, now=rec.submitted_at + 600, ops=sched.ops())
    assert message == "attempt 1 on a is running; no more moves"
    assert ledger.active_failovers() == []


def test_killed_between_cancel_and_resubmit_resumes_the_move(world):
    ledger, sched, rec = world
    sched.crash_after_cancel = True
    with pytest.raises(KeyboardInterrupt):
        advance(ledger, rec.id, now=rec.submitted_at + 61, ops=sched.ops())
    assert ledger.failover(rec.id).moving == rec.id and sched.submitted == []
    assert advance(ledger, rec.id, now=rec.submitted_at + 62, ops=sched.ops()).startswith("moved:")
    assert [a.site for a in ledger.attempts(rec.id)] == ["a", "b"]


def test_a_refusing_site_is_skipped_and_the_last_site_stays_queued(world):
    ledger, sched, rec = world
    sched.refuse.add("b")
    assert advance(ledger, rec.id, now=rec.submitted_at + 61, ops=sched.ops()) == \
        "moved: attempt 1 on a -> attempt 3 on c"
    last = ledger.attempts(rec.id)[-1]
    message = advance(ledger, rec.id, now=last.submitted_at + 61, ops=sched.ops())
    assert message == "attempt 3 on c pending, no other site left in the plan; it stays queued"
    states = [s for s in sched.states.values() if s in (State.PENDING, State.RUNNING)]
    assert states == [State.PENDING]


def test_a_user_cancel_is_not_a_move(world):
    ledger, sched, rec = world
    sched.states["a-0"] = State.CANCELLED
    assert "is cancelled; no more moves" in advance(ledger, rec.id, now=rec.submitted_at + 61, ops=sched.ops())
    assert sched.submitted == []


def test_schema_1_ledger_is_migrated_in_place(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    from gpuhub import ledger as mod

    for statement in mod._SCHEMA:
        db.execute(statement)
    db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    db.execute("INSERT INTO jobs (token, site, scheduler, name, request, plan, script, state, created_at, updated_at)"
               " VALUES ('x', 's', 'slurm', 'n', '{}', '{}', '', 'pending', 1, 1)")
    db.commit()
    db.close()
    ledger = Ledger(path)
    old = ledger.by_token("x")
    assert (old.attempt, old.attempt_of) == (1, None) and ledger.attempts(old.id) == [old]
    assert ledger.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "2"
