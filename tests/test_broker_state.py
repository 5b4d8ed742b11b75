"""Live state: the shared cache, per-site time limits, and the broker's command-line errors."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gpuhub.broker.cache import LiveCache
from gpuhub.broker.choose import fits
from gpuhub.broker.config import BrokerConfig
from gpuhub.broker.state import Prober, reading_from_json, reading_to_json
from gpuhub.exporter.readings import NodeGpus, QueueJob, SiteReading
from gpuhub.registry import load_file
from gpuhub.request import JobRequest

DATA = Path(__file__).parent / "data"
SITE2 = load_file(DATA / "broker" / "testbed2.yaml")
READING = SiteReading([NodeGpus("m1", True, {"v100": 4}, {"v100": 1}, ("v100", "debug"), frozenset({"v100"}))],
                      [QueueJob("pending", {"v100": 2}, "v100", "physics", "alice")], "v100")


def test_cache_round_trip_ttl_and_junk(tmp_path):
    cache = LiveCache(tmp_path / "live", ttl=30)
    assert cache.get("reading", "k") is None
    cache.put("reading", "k", reading_to_json(READING))
    value, age = cache.get("reading", "k")
    back = reading_from_json(value)
    assert back.nodes == READING.nodes and back.jobs[0].gpus == {"v100": 2} and back.jobs[0].user == ""
    assert "alice" not in json.dumps(value)  # no user names kept
    assert 0 <= age < 5 and not list((tmp_path / "live").glob(".*tmp"))
    assert LiveCache(tmp_path / "live", ttl=30).get("reading", "k")[0] == value  # another command sees it
    path = tmp_path / "live" / "state.pickle"
    assert path.stat().st_mode & 0o077 == 0
    path.chmod(0o620)  # writable by the group: not trusted
    assert LiveCache(tmp_path / "live", ttl=30).get("reading", "k") is None
    path.chmod(0o600)
    path.write_bytes(b"not a pickle")
    assert LiveCache(tmp_path / "live", ttl=30).get("reading", "k") is None
    assert LiveCache(tmp_path / "live", ttl=0).get("reading", "k") is None


def stored(path: Path) -> dict:
    return pickle.loads(path.read_bytes())


def test_cache_is_one_file_merged_and_pruned(tmp_path):
    """Every entry in one file; a write keeps what another command wrote meanwhile and drops
    what is past the TTL; files of the former layouts go away."""
    tmp_path.chmod(0o700)
    (tmp_path / "reading-0123.json").write_text("{}")
    (tmp_path / "state.json").write_text("{}")
    first, second = LiveCache(tmp_path, ttl=30), LiveCache(tmp_path, ttl=30)
    assert first.get("reading", "a") is None and second.get("reading", "b") is None  # both read the file
    first.put("reading", "a", 1)
    second.put("reading", "b", 2)
    third = LiveCache(tmp_path, ttl=30)
    assert third.get("reading", "a")[0] == 1 and third.get("reading", "b")[0] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pickle"]
    kept = stored(tmp_path / "state.pickle")
    kept["entries"]["reading a"][0] -= 60  # written a minute ago: past the TTL
    (tmp_path / "state.pickle").write_bytes(pickle.dumps(kept))
    assert LiveCache(tmp_path, ttl=30).get("reading", "a") is None
    LiveCache(tmp_path, ttl=30).put("start", "c", 3)
    assert set(stored(tmp_path / "state.pickle")["entries"]) == {"reading b", "start c"}
    with third.batch():
        third.put("start", "d", 4)
        assert LiveCache(tmp_path, ttl=30).get("start", "d") is None  # not written before the batch ends
    assert LiveCache(tmp_path, ttl=30).get("start", "d")[0] == 4
    (tmp_path / "state.pickle").write_bytes(b" " * (8 * 1024 * 1024 + 1))  # oversized: a miss, not a read
    assert LiveCache(tmp_path, ttl=30).get("start", "d") is None


def test_concurrent_writers_never_leave_a_torn_entry(tmp_path):
    cache = LiveCache(tmp_path, ttl=30)
    big = {"nodes": [{"n": i} for i in range(2000)]}
    stop = threading.Event()
    bad = []

    def reader():
        while not stop.is_set():
            hit = LiveCache(tmp_path, ttl=30).get("x", "k")  # from the file, as another command reads it
            if hit is not None and len(hit[0]["nodes"]) != 2000:
                bad.append(hit)

    threads = [threading.Thread(target=reader)] + [
        threading.Thread(target=lambda: [cache.put("x", "k", big) for _ in range(30)]) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join()
    stop.set()
    threads[0].join()
    assert not bad


def test_a_hung_probe_is_left_behind_after_its_timeout(tmp_path):
    release = threading.Event()
    calls = []

    def reader(site, transport, deadline):
        calls.append(site.name)
        release.wait(30)
        return READING

    prober = Prober(LiveCache(tmp_path, 30), timeout=0.5, reader=reader, estimator=None,
                    transport_for=lambda site: None)
    fitted = fits([SITE2], JobRequest(command=["x"], gpus=1, time="30m"), BrokerConfig())
    start = time.monotonic()
    states = prober.gather(fitted)
    assert time.monotonic() - start < 2
    assert states["testbed2"].error == "no answer within 0.5 s"
    # the failure is cached: the next gather does not call the probe again
    again = prober.gather(fitted)
    assert again["testbed2"].error.startswith("no answer within 0.5 s (cached") and calls == ["testbed2"]
    release.set()
    fresh = Prober(LiveCache(tmp_path, 30), timeout=5, reader=lambda s, t, d: READING, estimator=None,
                   transport_for=lambda site: None).gather(fitted, refresh=True)
    assert fresh["testbed2"].reading.nodes == READING.nodes


def test_estimates_and_refusals_reach_the_state(tmp_path):
    from datetime import datetime

    def estimator(site, transport, alloc, timeout):
        if alloc.partition_key == "debug":
            raise RuntimeError("sbatch: error: QOSMaxWallDurationPerJobLimit")
        return datetime(2026, 1, 1, 12), "sbatch --test-only"

    prober = Prober(LiveCache(tmp_path, 30), 5, reader=lambda s, t, d: READING, estimator=estimator,
                    transport_for=lambda site: None)
    state = prober.gather(fits([SITE2], JobRequest(command=["x"], gpus=1, time="30m"), BrokerConfig()))["testbed2"]
    assert state.starts == {"v100": (datetime(2026, 1, 1, 12), "sbatch --test-only")}
    assert state.refused == {"debug": "sbatch: error: QOSMaxWallDurationPerJobLimit"}


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpuhub", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("args", "message"), [
    (["plan", "--sites", "nosuch", "--offline"], "unknown site(s) 'nosuch' in --sites"),
    (["submit", "--site", "local", "--failover-after", "30m", "--", "true"],
     "--failover-after needs --site auto or --sites"),
    (["submit", "--site", "auto", "--failover-after", "0s", "--", "true"], "'0s'"),
    (["submit", "--site", "auto", "--failover-after", "40d", "--", "true"], "allowed from 1 s to 30 days"),
    (["plan", "--probe-timeout", "0", "--", "true"], "--probe-timeout"),
    (["plan", "--gpu-mem", "lots", "--offline", "--", "true"], "--gpu-mem: "),
    (["plan", "--sites", ",", "--", "true"], "give site names separated by commas"),
])
def test_bad_broker_input_is_one_clear_line(isolated, args, message):
    proc = run(*args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_bad_broker_yaml_is_one_clear_line(isolated):
    (isolated / "config").mkdir(parents=True, exist_ok=True)
    (isolated / "config" / "broker.yaml").write_text("probe_timeout: 100000\n")
    proc = run("plan", "--offline", "--", "true")
    assert proc.returncode == 2 and "broker.yaml): probe_timeout: Input should be less than or equal to 600" in \
        proc.stderr


def test_offline_plan_of_shipped_sites_needs_no_network(isolated):
    proc = run("plan", "--offline", "--gpu-type", "a100", "--gpus", "8", "-P", "abc", "-t", "10h", "--json", "--",
               "python", "train.py")
    out = json.loads(proc.stdout)
    assert proc.returncode == 0 and out["live"] is False
    assert out["chosen"]["gpu_model"] == "a100" and out["chosen"]["free_now"] is None
    assert {e["site"] for e in out["excluded"]} >= {"local"}


def test_load_sites_gives_each_broken_site_its_reason(isolated, tmp_path, monkeypatch):
    from gpuhub import registry

    sites = tmp_path / "sites"
    sites.mkdir()
    text = (DATA / "broker" / "testbed2.yaml").read_text()
    for i in range(3):
        (sites / f"s{i}.yaml").write_text(text.replace("name: testbed2", f"name: s{i}"))
    (sites / "bad.yaml").write_text("name: bad\nscheduler: slurm\n")
    monkeypatch.setenv("GPUHUB_SITES", str(sites))
    loaded, broken = registry.load_sites(["s0", "s1", "s2", "bad", "nosuch"])
    assert [s.name for s in loaded] == ["s0", "s1", "s2"]
    assert set(broken) == {"bad", "nosuch"} and "partitions" in broken["bad"]
    # an edited file is read again
    edited = text.replace("name: testbed2", "name: s1").replace("gpus_per_node: 4", "gpus_per_node: 2")
    (sites / "s1.yaml").write_text(edited)
    loaded, _ = registry.load_sites(["s1"])
    assert loaded[0].partitions["v100"].gpus_per_node == 2


# Start-up costs a plan from the cache does not pay: writing files (tempfile), digests (hashlib
# loads OpenSSL), building dataclasses (gpuhub.record instead), the JSON codec (only --json
# prints JSON), platformdirs (gpuhub.paths applies the XDG rules itself on Linux). Checked among
# the modules gpuhub loads, not those the interpreter started with.
NOT_ON_A_CACHED_PLAN = ("tempfile", "hashlib", "dataclasses", "json", "platformdirs")


def test_plan_from_cached_state_loads_no_backend_transport_or_accounting(isolated):
    """A plan over cached readings needs the schedulers' capabilities, not their backends; no
    site is contacted, so no transport; the exporter's project labels and the job commands
    (render, submit, status...) stay unloaded; nor does what only writing a cache needs."""
    sites = isolated / "sites"
    sites.mkdir()
    (sites / "testbed2.yaml").write_text((DATA / "broker" / "testbed2.yaml").read_text())
    (isolated / "config").mkdir()
    (isolated / "config" / "broker.yaml").write_text("sites: [testbed2]\ncache_ttl: 3600\n")
    # The admins' directory from the XDG rules, as on a machine where no GPUHUB_* variable is set.
    env = {**os.environ, "GPUHUB_SITES": str(sites), "XDG_CONFIG_DIRS": str(isolated / "xdg")}
    env.pop("GPUHUB_SYSTEM_CONFIG_DIR")
    code = ("import sys\nbefore = set(sys.modules)\nfrom gpuhub.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as exc:\n    print('EXIT', exc.code, file=sys.stderr)\n"
            "print('LOADED', sorted(m for m in sys.modules if m.startswith(('gpuhub.backends.', 'gpuhub.transport',"
            " 'gpuhub.accounting', 'gpuhub.cli.jobs'))), file=sys.stderr)\n"
            f"print('STDLIB', sorted(m for m in {NOT_ON_A_CACHED_PLAN!r} if m in set(sys.modules) - before),"
            " file=sys.stderr)")
    args = ["plan", "--gpus", "1", "-t", "30m", "--", "true"]
    first = subprocess.run([sys.executable, "-c", code, "plan", "--offline", *args[1:]], capture_output=True,
                           text=True, timeout=60, env=env)
    assert "EXIT 0" in first.stderr, first.stderr  # the site file validated and kept, broker.yaml too

    cache = LiveCache(isolated / "cache" / "live", 3600)
    request = JobRequest(command=["true"], gpus=1, time="30m")
    Prober(cache, 5, reader=lambda s, t, d: READING, estimator=lambda s, t, a, left: (None, "no estimate"),
           transport_for=lambda site: None).gather(fits([SITE2], request, BrokerConfig()), refresh=True)
    again = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, env=env)
    assert "EXIT 0" in again.stderr and "LOADED ['gpuhub.backends.capabilities']" \
        in again.stderr, again.stderr
    assert "STDLIB []" in again.stderr, again.stderr
    assert "3/4" in again.stdout, again.stdout  # the cached reading: 4 v100, 1 in use
