"""GPU locks, queue, walltime and cancel on a lab server, for real: jobs started over the
loopback sshd by two login users, on fake hosts whose nvidia-smi reads a state file."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest

from gpuhub.backends import shell
from gpuhub.backends.lab import ops
from gpuhub.backends.lab.discovery import Thresholds
from gpuhub.plan import plan
from gpuhub.registry import load_site
from gpuhub.render import render
from gpuhub.request import JobRequest
from gpuhub.states import State
from labbed import FakeHost, lab_env, make_host, remove_host, site_yaml

pytestmark = pytest.mark.ssh


@pytest.fixture
def env(testbed):
    return lab_env(testbed)


@pytest.fixture
def host(env):
    made = make_host(env, "gpu1", gpus=4)
    yield made
    remove_host(made)


class Lab:
    """One fake host, a site for it, and an SSH transport per login user."""

    def __init__(self, env: dict[str, str], host: FakeHost, tmp_path: Path, monkeypatch, lab: str = "") -> None:
        sites = tmp_path / "sites"
        sites.mkdir(exist_ok=True)
        (sites / "labtest.yaml").write_text(site_yaml(env, "labtest", [host], lab=lab))
        monkeypatch.setenv("GPUHUB_SITES", str(sites))
        monkeypatch.delenv(shell.LOCAL_JOBS_ENV, raising=False)
        from gpuhub.transport.ssh import SSHTransport

        self.site = load_site("labtest")
        self.host = self.site.lab.hosts[0]
        self.fake = host
        conn = self.site.connection.model_copy(update={"host": self.host.address})
        second = conn.model_copy(update={"user": env["TESTBED_LAB_USER2"], "identity_file": env["TESTBED_LAB_KEY2"]})
        self.users = {"hubuser": SSHTransport("labtest", conn), "hubuser2": SSHTransport("labtest", second)}
        self.tokens: dict[str, list[str]] = {u: [] for u in self.users}

    def submit(self, user: str, wait: int = ops.NO_WAIT, **request) -> tuple[str, ops.Launch]:
        request.setdefault("name", "labtest")
        request.setdefault("gpus", 1)
        token = uuid.uuid4().hex[:16]
        job = render(plan(self.site, JobRequest(**request)), token)
        args = ops.wrapper_args(job.allocation, self.site.lab, self.host, token, wait)
        self.tokens[user].append(token)
        return token, ops.launch(self.users[user], job, token, args, self.host.name)

    def status(self, user: str, token: str):
        return ops.status(self.users[user], [token], self.host.name)[token]

    def wait_state(self, user: str, token: str, states: set[State], timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while True:
            st = self.status(user, token)
            if st.state in states:
                return st
            assert time.monotonic() < deadline, f"job {token} still {st} after {timeout} s"
            time.sleep(0.2)

    def probe(self):
        return ops.probe(self.users["hubuser"], self.site.lab, self.host)

    def read(self, user: str, token: str, name: str) -> str:
        return self.users[user].get_text(f"{shell.job_dir(token)}/{name}")

    def close(self) -> None:
        for user, transport in self.users.items():
            try:
                ops.cancel(transport, self.tokens[user])
                script = 'for id in "$@"; do rm -rf -- "$HOME/.gpuhub/jobs/$id"; done'
                transport.run(["bash", "-c", script, "cleanup", *self.tokens[user]], check=False)
            finally:
                transport.close()


@pytest.fixture
def lab(env, host, tmp_path, monkeypatch):
    made = Lab(env, host, tmp_path, monkeypatch)
    yield made
    made.close()


def held_by(lab: Lab) -> dict[int, str]:
    return {s.gpu.index: s.holder.token for s in lab.probe().classify(Thresholds()) if s.holder}


def test_ten_concurrent_submissions_from_two_users_get_disjoint_gpus(lab, host):
    host.set_gpus(8)
    results: list[tuple[str, str, ops.Launch]] = []
    errors: list[BaseException] = []

    def one(user: str) -> None:
        try:
            token, launch = lab.submit(user, command=["bash", "-c", 'echo "$CUDA_VISIBLE_DEVICES"; sleep 30'])
            results.append((user, token, launch))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=("hubuser" if i % 2 else "hubuser2",)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    started = [(u, tok, la) for u, tok, la in results if la.kind == "started"]
    refused = [la for _, _, la in results if la.kind == "refused"]
    assert len(started) == 8 and len(refused) == 2
    gpus = [g for _, _, la in started for g in la.gpus]
    assert sorted(gpus) == list(range(8))  # every GPU once: disjoint
    assert {u for u, _, _ in started} == {"hubuser", "hubuser2"}
    assert held_by(lab) == {la.gpus[0]: tok for _, tok, la in started}
    for user, token, launch in started:  # what the job itself sees
        deadline = time.monotonic() + 10
        while not lab.read(user, token, "job.out").strip():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert lab.read(user, token, "job.out").strip() == str(launch.gpus[0])
    reasons = [la.reason for la in refused]
    assert all("8 of 8" not in why and "0 of 8 free" in why for why in reasons), reasons


def test_refusal_lists_who_holds_what(lab, host):
    token, first = lab.submit("hubuser2", gpus=3, command=["sleep", "30"])
    assert first.kind == "started" and first.gpus == (0, 1, 2), first
    _, second = lab.submit("hubuser", gpus=2, command=["true"])
    assert second.kind == "refused" and second.reason == "2 GPU(s) asked, 1 of 4 free"
    message = ops.refusal("gpu1", second, Thresholds())
    assert f"GPU 0 (NVIDIA A40): held by hubuser2, job {token}, for 00:00:0" in message
    assert "--wait-for-gpus" in message
    host.set_gpus(2)  # the site file promises 4, the host shows 2: never enough, even waiting
    _, never = lab.submit("hubuser", gpus=3, wait=ops.WAIT_FOREVER, command=["true"])
    assert never.kind == "refused" and "this host has 2 GPU(s) gpuhub may hand out" in never.reason


def test_lock_of_a_killed_job_is_reclaimed(lab, host):
    token, launch = lab.submit("hubuser", gpus=4, command=["sleep", "300"])
    assert launch.kind == "started"
    pid = lab.read("hubuser", token, "pid").split()[0]
    # kill -9 the whole job at once: nothing gets to release anything
    lab.users["hubuser"].run(["bash", "-c", 'kill -KILL -- "-$1"', "kill", pid])
    assert lab.wait_state("hubuser", token, {State.FAILED}).reason.startswith("the job's process ended")
    stale = sorted(p.name for p in Path(host.lock_dir).glob(f"*.{token}"))
    assert len(stale) == 4  # still there: only their owner may remove them (sticky directory)
    other, got = lab.submit("hubuser2", gpus=4, command=["sleep", "30"])
    assert got.kind == "started" and got.gpus == (0, 1, 2, 3)
    assert set(held_by(lab).values()) == {other}
    lab.probe()  # the owner's next command removes its dead locks
    assert not list(Path(host.lock_dir).glob(f"*.{token}"))


def test_gpu_busy_outside_gpuhub_is_skipped(lab, host):
    # a real process of the other user, seen by nvidia-smi on GPU 0; GPU 1 has memory in use
    outsider = lab.users["hubuser2"].run(["bash", "-c", "setsid sleep 120 </dev/null >/dev/null 2>&1 & echo $!"])
    pid = int(outsider.stdout.strip())
    try:
        host.set_gpus(4, busy={1: 6000})
        host.add_app(0, pid)
        _, launch = lab.submit("hubuser", gpus=2, command=["sleep", "30"])
        assert launch.kind == "started" and launch.gpus == (2, 3)
        states = {s.gpu.index: s for s in lab.probe().classify(Thresholds())}
        assert states[0].state == "foreign" and states[0].apps[0].user == "hubuser2"
        assert states[1].state == "foreign" and states[2].state == states[3].state == "held"
        _, refused = lab.submit("hubuser", gpus=1, command=["true"])
        assert refused.kind == "refused"
        assert f"GPU 0 (NVIDIA A40): used outside gpuhub by hubuser2 (pid {pid})" in ops.refusal(
            "gpu1", refused, Thresholds())
    finally:
        lab.users["hubuser2"].run(["kill", str(pid)], check=False)


def test_walltime_is_enforced_with_term_then_kill(lab, host):
    # the job ignores TERM: it must be killed after the grace (1 s here)
    token, launch = lab.submit("hubuser", gpus=2, time="00:00:02",
                               command=["bash", "-c", "trap '' TERM; sleep 300 & wait; sleep 300"])
    assert launch.kind == "started"
    t0 = time.monotonic()
    st = lab.wait_state("hubuser", token, {State.TIMEOUT, State.FAILED, State.COMPLETED})
    assert st.state == State.TIMEOUT and "walltime" in (st.reason or "")
    assert 2 <= st.end - st.start <= 6 and time.monotonic() - t0 < 8
    assert held_by(lab) == {}  # released


def test_cancel_kills_the_whole_tree_and_frees_the_gpus(lab, host):
    # a child in a process group of its own (set -m) still belongs to the job
    script = "set -m; sleep 301 & set +m; sleep 302 & wait"
    token, launch = lab.submit("hubuser", gpus=2, command=["bash", "-c", script])
    assert launch.kind == "started" and len(held_by(lab)) == 2
    t = lab.users["hubuser"]
    count = ["bash", "-c", "pgrep -u \"$(id -u)\" -f '^sleep 30[12]$' | wc -l"]
    deadline = time.monotonic() + 10
    while t.run(count).stdout.strip() != "2":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    ops.cancel(t, [token])
    assert lab.wait_state("hubuser", token, {State.CANCELLED, State.FAILED}).state == State.CANCELLED
    assert t.run(count).stdout.strip() == "0"
    assert held_by(lab) == {}


def test_job_outlives_the_ssh_connection(lab, host):
    token, launch = lab.submit("hubuser", gpus=1, command=["bash", "-c", "sleep 2; echo done"])
    assert launch.kind == "started"
    lab.users["hubuser"].close()  # the connection that started it is gone
    assert lab.status("hubuser", token).state == State.RUNNING  # a new connection
    st = lab.wait_state("hubuser", token, {State.COMPLETED, State.FAILED})
    assert st.state == State.COMPLETED and lab.read("hubuser", token, "job.out") == "done\n"


def test_queue_is_first_in_first_out(lab, host):
    host.set_gpus(2)
    first, a = lab.submit("hubuser", gpus=2, command=["sleep", "6"])
    second, b = lab.submit("hubuser2", gpus=2, wait=ops.WAIT_FOREVER, command=["sleep", "2"])
    third, c = lab.submit("hubuser", gpus=1, wait=ops.WAIT_FOREVER, command=["sleep", "1"])
    assert (a.kind, b.kind, c.kind) == ("started", "queued", "queued")
    assert "1 job(s) queued ahead need 2" in c.reason
    st = lab.status("hubuser", third)
    assert st.state == State.PENDING and "waiting for GPUs on gpu1" in (st.reason or "")
    done = {u_t: lab.wait_state(*u_t, {State.COMPLETED}, timeout=40) for u_t in
            [("hubuser", first), ("hubuser2", second), ("hubuser", third)]}
    one, two, three = done.values()
    # the 1-GPU job did not overtake the 2-GPU job queued before it, though it would have fit
    assert one.end <= two.start <= three.start and three.start >= two.end


def test_queue_timeout_gives_up(lab, host):
    lab.submit("hubuser", gpus=4, command=["sleep", "30"])
    token, launch = lab.submit("hubuser2", gpus=1, wait=1, command=["true"])
    assert launch.kind == "queued"
    assert lab.status("hubuser2", token).start is None  # waiting is not GPU time
    st = lab.wait_state("hubuser2", token, {State.FAILED}, timeout=15)
    assert "no GPUs within the 1 s wait" in (st.reason or "") and st.start is None


def test_policy_per_user_limit_and_reserved_gpus(env, host, tmp_path, monkeypatch):
    lab = Lab(env, host, tmp_path, monkeypatch, lab="max_gpus_per_user: 2\nreserved_gpus: [0]")
    try:
        _, a = lab.submit("hubuser", gpus=2, command=["sleep", "30"])
        assert a.kind == "started" and a.gpus == (1, 2)  # GPU 0 is the site's
        _, b = lab.submit("hubuser", gpus=1, command=["true"])
        assert b.kind == "refused" and "you already hold 2 GPU(s) here" in b.reason
        _, c = lab.submit("hubuser2", gpus=1, command=["sleep", "30"])
        assert c.kind == "started" and c.gpus == (3,)
    finally:
        lab.close()


def test_no_nvidia_smi_is_a_clear_error(lab, host):
    (host.root / "nvidia-smi").unlink()
    _, launch = lab.submit("hubuser", gpus=1, command=["true"])
    assert launch.kind == "refused" and "no nvidia-smi on this host" in launch.reason
    with pytest.raises(Exception, match="no nvidia-smi on gpu1"):
        lab.probe()


def test_planted_entries_do_not_confuse_or_hang_the_host(lab, host):
    # another user's junk in the shared directory: odd names, a FIFO, a symlink, an endless line
    locks = Path(host.lock_dir)
    lab.submit("hubuser2", gpus=1, command=["true"])  # creates the directory
    planted = ["a|b.c", "x\ny.z"]
    script = (
        'cd "$1" && for n in "$2" "$3"; do echo "1 1 1 1" > "$n"; done && mkfifo fifo.tok && '
        "ln -s /dev/zero zero.tok && head -c 5000000 /dev/zero | tr '\\0' 1 > big.tok"
    )
    lab.users["hubuser2"].run(["bash", "-c", script, "plant", str(locks), *planted])
    t0 = time.monotonic()
    token, launch = lab.submit("hubuser", gpus=2, command=["sleep", "30"])
    assert launch.kind == "started" and launch.gpus == (0, 1) and time.monotonic() - t0 < 10
    assert {e.token for e in lab.probe().locks if e.alive} == {token}
