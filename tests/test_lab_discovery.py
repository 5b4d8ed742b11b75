"""Lab-server GPU discovery and placement: the parser on nvidia-smi's real output formats, and the
host-side decision (awk, run for real) held to agreement with the Python one on random hosts."""

from __future__ import annotations

import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuhub.backends.lab import remote
from gpuhub.backends.lab.discovery import NoNvidiaSmi, Thresholds, parse_probe
from gpuhub.backends.lab.placement import choose, verdict
from gpuhub.errors import GpuhubError

# Recorded shapes of real output: `--format=csv,noheader,nounits` joins fields with ", ";
# [N/A] where the driver cannot tell (WSL, vGPU), [Not Supported] on consumer cards, and error
# words in brackets for a GPU in trouble.
REAL = """#gpus
0, GPU-5d5ad4bf-2e8a-2b1d-5b40-5dc4b3f0f8a1, NVIDIA A100-SXM4-40GB, 0, 40960, 0
1, GPU-0c7e1f9a-6a43-8e67-02c1-8f3b9b1d2e77, NVIDIA A100-SXM4-40GB, 38012, 40960, 97
2, GPU-9a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9, NVIDIA GeForce RTX 2080 Ti, 5, 11264, [Not Supported]
3, GPU-11111111-2222-3333-4444-555555555555, NVIDIA A100-SXM4-40GB, [GPU requires reset], 40960, [Unknown Error]
#rc 0
#apps
GPU-0c7e1f9a-6a43-8e67-02c1-8f3b9b1d2e77, 81234, 37998
GPU-9a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9, 9912, [N/A]
#rc 0
#owners
  81234 alice
   9912 bob
#locks
GPU-5d5ad4bf-2e8a-2b1d-5b40-5dc4b3f0f8a1|a1b2c3d4e5f60718|carol|4242|778560|1796280000|1|0
#queue
1796280000123456789|00ff00ff00ff00ff|dave|5151|99|1796280001|2|1
#now 1796285327
"""


def test_parse_real_formats():
    probe = parse_probe(REAL, "gpu1")
    assert [g.index for g in probe.gpus] == [0, 1, 2, 3]
    a100 = probe.gpus[1]
    assert (a100.name, a100.memory_used, a100.memory_total, a100.utilization) == (
        "NVIDIA A100-SXM4-40GB", 38012, 40960, 97)
    assert probe.gpus[2].utilization is None and not probe.gpus[2].broken  # [Not Supported] is no fault
    assert probe.gpus[3].broken and probe.gpus[3].memory_used is None
    assert [(a.pid, a.user, a.memory) for a in probe.apps] == [(81234, "alice", 37998), (9912, "bob", None)]
    assert probe.locks[0].user == "carol" and not probe.locks[0].alive
    assert probe.queue[0].need == 2 and probe.waiting()[0].user == "dave"
    assert probe.now == 1796285327
    states = {s.gpu.index: s.state for s in probe.classify(Thresholds())}
    # 0: its lock's process is dead, so it is free again; 1 and 2: used outside gpuhub; 3: broken
    assert states == {0: "free", 1: "foreign", 2: "foreign", 3: "unavailable"}


def test_thresholds_and_reserved():
    text = "#gpus\n0, GPU-a, X, 2000, 40960, 0\n1, GPU-b, X, 10, 40960, 50\n2, GPU-c, X, 0, 40960, 0\n#rc 0\n"
    probe = parse_probe(text, "h")
    assert [s.state for s in probe.classify(Thresholds())] == ["foreign", "foreign", "free"]
    loose = Thresholds(busy_memory_mib=4096, busy_utilization=60, reserved=frozenset({2}))
    assert [s.state for s in probe.classify(loose)] == ["free", "free", "reserved"]


def test_no_nvidia_smi_and_failing_nvidia_smi():
    with pytest.raises(NoNvidiaSmi, match="no nvidia-smi on gpu7"):
        parse_probe("#error no-nvidia-smi\n", "gpu7")
    failing = "#gpus\nNVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n#rc 9\n"
    with pytest.raises(GpuhubError, match=r"nvidia-smi failed on gpu7: .*couldn't communicate"):
        parse_probe(failing, "gpu7")


# --- the probe itself, run by bash as on a host --------------------------------------------------

# A stand-in for nvidia-smi where each query waits (up to 5 s) for the other to have started:
# run one after the other, the first one gives up and says so.
MEETING = r"""#!/usr/bin/env bash
here=${0%/*}
case $1 in --query-gpu=*) me=gpu other=app ;; *) me=app other=gpu ;; esac
: > "$here/$me.started"
for _ in $(seq 50); do [ -e "$here/$other.started" ] && break; sleep 0.1; done
[ -e "$here/$other.started" ] || { echo "$me query ran alone"; exit 7; }
if [ "$me" = gpu ]; then
  echo "0, GPU-0000-aaaa, NVIDIA A40, 3, 46068, 0"; exit "${GPU_RC:-0}"
fi
echo "GPU-0000-aaaa, $$, 500"; exit "${APP_RC:-0}"
"""


def run_probe(tmp_path, rc: dict[str, str] | None = None, smi: str | None = None) -> str:
    """The probe's output with the meeting nvidia-smi, at a path that needs quoting."""
    directory = tmp_path / "dir with 'quote' $(touch pwned) `x`"
    directory.mkdir(exist_ok=True)
    fake = directory / "nvidia-smi"
    fake.write_text(MEETING)
    fake.chmod(0o755)
    (tmp_path / "locks").mkdir(exist_ok=True)
    env = {"PATH": "/usr/bin:/bin", **(rc or {})}
    out = subprocess.run(["bash", "-c", remote.PROBE, "gpuhub-probe", smi or str(fake), str(tmp_path / "locks")],
                         capture_output=True, text=True, timeout=30, env=env, check=True)
    assert not list(tmp_path.glob("**/pwned")) and not out.stderr
    return out.stdout


def test_probe_runs_both_queries_at_once(tmp_path):
    text = run_probe(tmp_path)
    assert "ran alone" not in text, text
    probe = parse_probe(text, "h")
    assert [g.uuid for g in probe.gpus] == ["GPU-0000-aaaa"] and [a.gpu_uuid for a in probe.apps] == ["GPU-0000-aaaa"]
    assert "#gpus\n0, GPU-0000-aaaa, NVIDIA A40, 3, 46068, 0\n#rc 0\n#apps\n" in text


def test_probe_keeps_each_query_exit_status_and_says_when_there_is_no_nvidia_smi(tmp_path):
    text = run_probe(tmp_path, {"GPU_RC": "9", "APP_RC": "4"})
    assert "#gpus\n0, GPU-0000-aaaa, NVIDIA A40, 3, 46068, 0\n#rc 9\n" in text and "\n#rc 4\n#owners" in text
    text = run_probe(tmp_path, smi=str(tmp_path / "no such dir" / "nvidia-smi"))
    assert text == "#error no-nvidia-smi\n"
    with pytest.raises(NoNvidiaSmi):
        parse_probe(text, "h")


# --- the host's awk decision against the Python one ------------------------------------------------

USERS = ("alice", "bob", "carol")


@st.composite
def hosts(draw):
    n = draw(st.integers(1, 6))
    lines = ["#gpus"]
    for i in range(n):
        uuid = draw(st.sampled_from([f"GPU-{i:04d}-aaaa", f"GPU-{i:04d}-aaaa", "[N/A]"]))
        mem = draw(st.sampled_from(["0", "3", "1024", "0", "1025", "[N/A]", "[GPU requires reset]"]))
        util = draw(st.sampled_from(["0", "10", "0", "11", "[Not Supported]"]))
        lines.append(f"{i}, {uuid}, NVIDIA A40, {mem}, 46068, {util}")
    lines += ["#rc 0", "#apps"]
    for i in draw(st.lists(st.integers(0, n - 1), max_size=2)):
        lines.append(f"GPU-{i:04d}-aaaa, {1000 + i}, 500")
    lines += ["#rc 0", "#owners", "#locks"]
    for i in draw(st.lists(st.integers(0, n - 1), max_size=4, unique=True)):
        key = draw(st.sampled_from([f"GPU-{i:04d}-aaaa", f"idx{i}"]))
        alive = draw(st.booleans())
        lines.append(f"{key}|tok{i}|{draw(st.sampled_from(USERS))}|{2000 + i}|1|1700000000|1|{int(alive)}")
    lines.append("#queue")
    for j in range(draw(st.integers(0, 3))):
        alive = draw(st.sampled_from([True, True, False]))
        lines.append(f"17000000000{j}|q{j}|{draw(st.sampled_from(USERS))}|{3000 + j}|1|1700000000|"
                     f"{draw(st.integers(1, 3))}|{int(alive)}")
    lines.append("#now 1700000100")
    limits = Thresholds(
        reserved=frozenset(draw(st.lists(st.integers(0, n - 1), max_size=2))),
        max_gpus_per_user=draw(st.sampled_from([None, 1, 2, 4])),
    )
    token = draw(st.sampled_from([None, "q0", "q1", "q2"]))
    return "\n".join(lines) + "\n", limits, draw(st.integers(1, 4)), draw(st.sampled_from(USERS)), token


def host_decides(text: str, limits: Thresholds, need: int, user: str, token: str | None) -> list[str]:
    argv = ["awk", "-v", f"need={need}", "-v", f"me={user}", "-v", f"token={token or ''}",
            "-v", "reserved=" + ",".join(map(str, sorted(limits.reserved))), "-v", "memmax=1024",
            "-v", "utilmax=10", "-v", f"maxper={limits.max_gpus_per_user or 0}", "-v", "show=1", remote.DECIDE]
    return subprocess.run(argv, input=text, capture_output=True, text=True, check=True).stdout.splitlines()


@settings(max_examples=300, deadline=None)
@given(hosts())
def test_host_and_client_decide_alike(case):
    text, limits, need, user, token = case
    probe = parse_probe(text, "h")
    *shown, last = host_decides(text, limits, need, user, token)
    assert shown == [f"gpu {s.gpu.index} {s.state}" for s in probe.classify(limits)]
    mine = verdict(probe, limits, need, user, token)
    kind, _, rest = last.partition(" ")
    assert kind == mine.kind
    if kind == "take":
        assert rest.split(" ")[0] == ",".join(map(str, mine.gpus))
    else:
        assert rest == mine.reason


def _probe(host: str, free: int, held: int = 0, queued: int = 0) -> object:
    lines = ["#gpus"] + [f"{i}, GPU-{host}-{i}, NVIDIA A40, 0, 46068, 0" for i in range(free + held)]
    lines += ["#rc 0", "#locks"] + [f"GPU-{host}-{i}|t{i}|bob|9|1|1|1|1" for i in range(free, free + held)]
    lines += ["#queue"] + [f"{j}|w{j}|bob|9|1|1|1|1" for j in range(queued)]
    return parse_probe("\n".join(lines) + "\n", host)


def test_pool_least_loaded_first_and_queue():
    probes = [_probe("a", 1, 3), _probe("b", 3, 1), _probe("c", 2, 0)]
    pick = choose(probes, Thresholds(), 2, "alice", wait=False)
    assert pick.host == "c" and pick.verdict.kind == "take" and "least loaded of 3 hosts" in pick.reason
    full = [_probe("a", 0, 4, queued=2), _probe("b", 0, 4, queued=1)]
    assert choose(full, Thresholds(), 1, "alice", wait=False).verdict.kind == "wait"
    queued = choose(full, Thresholds(), 1, "alice", wait=True)
    assert queued.host == "b" and "queued" in queued.reason
    never = choose([_probe("a", 2)], Thresholds(), 3, "alice", wait=True)
    assert never.verdict.kind == "never" and "has 2 GPU(s)" in never.reason
