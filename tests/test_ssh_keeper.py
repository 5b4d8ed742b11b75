"""Kept SSH connections (connection keepers) against the testbed's real sshd.

The suite turns keepers off (conftest sets GPUHUB_SSH_PERSIST=0); each test here turns them on
with a runtime directory of its own and kills its keepers at teardown.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import ssh_fields
from gpuhub.sitedata import Connection
from gpuhub.transport import keepers, persist, transport_for
from gpuhub.transport.base import CommandError, CommandTimeout, TransportError
from gpuhub.transport.kept import KeptTransport
from gpuhub.transport.ssh import SSHTransport
from labbed import lab_env, lab_pool

pytestmark = pytest.mark.ssh


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Keepers on, in a runtime directory of this test's own (short: a socket path has 107 bytes)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GPUHUB_SSH_CONFIG", str(tmp_path / "no-ssh-config"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.delenv("GPUHUB_SSH_PERSIST")
    run = Path(tempfile.mkdtemp(prefix="gk-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    keepers._SPAWNED.clear()
    yield run / "gpuhub"
    for keeper in keepers.running():
        with_pid(keeper["pid"], signal.SIGKILL)
    for pid in keeper_pids(run):
        with_pid(pid, signal.SIGKILL)
    shutil.rmtree(run, ignore_errors=True)


def with_pid(pid: int, sig: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, sig)


def keeper_pids(run: Path) -> list[int]:
    """Keepers started under this runtime directory, found by their environment."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if b"gpuhub.transport.keeper" not in (entry / "cmdline").read_bytes():
                continue
            if f"XDG_RUNTIME_DIR={run}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def connection(testbed: dict[str, str], **changes: object) -> Connection:
    """The testbed's connection as a cached site has it (a plain record, not a pydantic model)."""
    fields = {**ssh_fields(testbed), **changes}
    return Connection(**fields, model_fields_set=frozenset(fields))


def kept(testbed: dict[str, str], site: str = "kept", **changes: object) -> KeptTransport:
    return KeptTransport(site, connection(testbed, **changes), 60)


def wait_for(predicate, within: float = 20.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {within} s")


def warm(testbed: dict[str, str], **changes: object) -> dict:
    """Run one command directly (which starts the keeper); return the keeper once it answers."""
    first = kept(testbed, **changes)
    assert first.run(["true"]).ok
    assert (first.kept_runs, first.connections_opened) == (0, 1)
    first.close()
    wait_for(lambda: len(keepers.running()) == 1, what="a keeper answers")
    return keepers.running()[0]


# --------------------------------------------------------------------------------------------


def test_second_transport_runs_through_the_keeper_with_the_same_results(testbed: dict[str, str],
                                                                        runtime: Path) -> None:
    keeper = warm(testbed)
    assert keeper["site"] == "kept" and keeper["target"] == f"{testbed['TESTBED_SSH_USER']}@127.0.0.1:2222"
    direct = SSHTransport("kept", connection(testbed))
    via = kept(testbed)
    cases = [["sh", "-c", "echo out; echo err >&2; exit 3"], ["printf", "%s|", "two words", "it's", "$(x)", ""],
             ["sh", "-c", "printf 'caf\\303\\251 \\377'"]]
    for argv in cases:
        want, got = direct.run(argv, check=False), via.run(argv, check=False)
        assert (got.argv, got.returncode, got.stdout, got.stderr) == (want.argv, want.returncode, want.stdout,
                                                                     want.stderr)
    assert via.run(["cat"], stdin="line\n" * 50000).stdout == "line\n" * 50000
    with pytest.raises(CommandError) as kept_error:
        via.run(["sh", "-c", "echo boom >&2; exit 4"])
    with pytest.raises(CommandError) as direct_error:
        direct.run(["sh", "-c", "echo boom >&2; exit 4"])
    assert str(kept_error.value) == str(direct_error.value)
    assert via.kept_runs == len(cases) + 2 and via.connections_opened == 0  # no connection of its own
    assert keepers.running()[0]["commands"] == len(cases) + 2  # the first command went directly
    # Files and streams still go over a direct connection, opened for them.
    path = f"gpuhub-kept-{secrets.token_hex(4)}.txt"
    via.put_text(path, "hello\n")
    assert via.get_text(path) == "hello\n" and via.connections_opened == 1
    via.run(["rm", "-f", "--", path])
    direct.close()
    via.close()


def test_timeout_stops_the_remote_command(testbed: dict[str, str], runtime: Path) -> None:
    warm(testbed)
    via = kept(testbed)
    marker = f"gpuhub-kept-sleep-{secrets.token_hex(4)}"
    with pytest.raises(CommandTimeout) as caught:
        via.run(["sh", "-c", f"echo started; sleep 300; echo {marker}"], timeout=1)
    assert caught.value.stdout == "started\n" and via.kept_runs == 0 and via.connections_opened == 0
    assert "did not finish within 1 s" in str(caught.value)
    wait_for(lambda: subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 1, 5,
             "the remote command is gone")


def test_edited_known_hosts_is_never_reused(testbed: dict[str, str], runtime: Path, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    shutil.copy(testbed["TESTBED_KNOWN_HOSTS"], known)
    old = warm(testbed, known_hosts=str(known))
    with known.open("a") as handle:
        handle.write("# edited\n")
    via = kept(testbed, known_hosts=str(known))
    assert via.run(["true"]).ok and (via.kept_runs, via.connections_opened) == (0, 1)
    # The keeper verified against the old file sees the change and ends.
    wait_for(lambda: old["socket"] not in [k["socket"] for k in keepers.running()], 10, "the old keeper ends")
    wait_for(lambda: not Path(old["socket"]).exists(), 10, "its socket is gone")


def test_unsafe_socket_directory_means_direct(testbed: dict[str, str], runtime: Path) -> None:
    warm(testbed)
    runtime.chmod(0o755)
    via = kept(testbed)
    assert via.run(["echo", "ok"]).stdout == "ok\n" and (via.kept_runs, via.connections_opened) == (0, 1)
    runtime.chmod(0o700)
    again = kept(testbed)
    assert again.run(["true"]).ok and again.kept_runs == 1


def test_killed_keeper_means_direct_then_a_new_keeper(testbed: dict[str, str], runtime: Path) -> None:
    first = warm(testbed)
    os.kill(first["pid"], signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{first['pid']}").exists() or b"Z" in Path(f"/proc/{first['pid']}/stat")
             .read_bytes().split()[2], 5, "the keeper is dead")
    assert Path(first["socket"]).exists()  # left behind: nobody listens on it
    via = kept(testbed)
    assert via.run(["echo", "ok"]).stdout == "ok\n" and (via.kept_runs, via.connections_opened) == (0, 1)
    wait_for(lambda: [k["pid"] for k in keepers.running()] not in ([], [first["pid"]]), what="a new keeper")
    assert kept(testbed).run(["true"]).ok


def test_keeper_killed_during_a_command_is_a_clear_error(testbed: dict[str, str], runtime: Path) -> None:
    keeper = warm(testbed)
    via = kept(testbed)
    marker = f"gpuhub-kept-lost-{secrets.token_hex(4)}"

    def kill_once_running() -> None:  # the keeper dies while the command runs, not before
        wait_for(lambda: subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0, 30,
                 "the command runs")
        os.kill(keeper["pid"], signal.SIGKILL)

    threading.Thread(target=kill_once_running, daemon=True).start()
    command = ["sh", "-c", f"sleep 30; : {marker}"]
    with pytest.raises(TransportError) as caught:
        via.run(command, timeout=60)
    assert "was lost while `sh -c" in str(caught.value) and "may have run" in str(caught.value)
    assert via.connections_opened == 0  # never run again behind the user's back


def test_idle_keeper_ends(testbed: dict[str, str], runtime: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUHUB_SSH_PERSIST", "1")
    site = SimpleNamespace(name="idle", connection=connection(testbed))
    transport = transport_for(site)
    assert isinstance(transport, KeptTransport) and transport.run(["true"]).ok
    wait_for(lambda: any(runtime.glob("*.sock")), 20, "the keeper starts")
    wait_for(lambda: not any(runtime.glob("*")), 10, "the idle keeper ends and leaves nothing")
    transport.close()


@pytest.mark.parametrize("how", ["site", "environment"])
def test_persist_zero_starts_nothing(testbed: dict[str, str], runtime: Path, monkeypatch: pytest.MonkeyPatch,
                                     how: str) -> None:
    if how == "environment":
        monkeypatch.setenv("GPUHUB_SSH_PERSIST", "0")
        site = SimpleNamespace(name="zero", connection=connection(testbed))
    else:
        site = SimpleNamespace(name="zero", connection=connection(testbed, persist=0))
    transport = transport_for(site)
    assert type(transport) is SSHTransport and transport.run(["true"]).ok
    transport.close()
    time.sleep(1.5)
    assert not runtime.exists() and not keeper_pids(runtime.parent)


def test_keeper_refuses_other_parameters(testbed: dict[str, str], runtime: Path) -> None:
    keeper = warm(testbed)
    parameters = persist.params("kept", persist.connection_fields(connection(testbed)), sorted(connection(testbed)
                                .model_fields_set))
    marker = runtime.parent / "ran"
    for other in ({**parameters, "site": "other"}, {**parameters, "uid": 12345}):
        with keepers.open_keeper(Path(keeper["socket"])) as sock:
            persist.send(sock, {"op": "run", "params": other, "argv": ["touch", str(marker)], "stdin": None,
                                "timeout": 10})
            assert "fallback" in persist.receive(sock)
    assert not marker.exists()


CLI = """
import json, sys
from gpuhub.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"paramiko": "paramiko" in sys.modules, "code": code}), file=sys.stderr)
"""


def test_gpus_command_through_keepers_imports_no_paramiko(testbed: dict[str, str], runtime: Path,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = lab_env(testbed)
    with lab_pool(env, tmp_path, monkeypatch):
        args = [sys.executable, "-c", CLI, "gpus", "--site", "labpool", "--json"]

        def gpus() -> tuple[dict, list]:
            run = subprocess.run(args, capture_output=True, text=True, timeout=120)
            facts = json.loads(run.stderr.strip().splitlines()[-1])
            rows = sorted((r["host"], r["gpu"], r["state"]) for r in json.loads(run.stdout)["lab_gpus"])
            return facts, rows

        first, rows = gpus()
        assert first == {"paramiko": True, "code": 0}
        assert rows == [("gpu1", 0, "free"), ("gpu1", 1, "free"), ("gpu2", 0, "free"), ("gpu2", 1, "free")]
        wait_for(lambda: len(keepers.running()) == 1, what="the pool's keeper")  # both hosts are 127.0.0.1:2222
        second, again = gpus()
        assert second == {"paramiko": False, "code": 0} and again == rows
        assert keepers.running()[0]["commands"] == 2  # each host probed over the one kept connection

        listing = subprocess.run([sys.executable, "-m", "gpuhub", "connections", "--json"], capture_output=True,
                                 text=True, timeout=60, check=True)
        assert [c["site"] for c in json.loads(listing.stdout)["connections"]] == ["labpool"]
        table = subprocess.run([sys.executable, "-m", "gpuhub", "connections"], capture_output=True, text=True,
                               timeout=60, check=True).stdout.splitlines()
        assert table[0].split()[:3] == ["SITE", "LOGIN", "VIA"] and table[1].split()[:3] == [
            "labpool", f"{env['TESTBED_SSH_USER']}@127.0.0.1:2222", "-"]
        closing = subprocess.run([sys.executable, "-m", "gpuhub", "connections", "--close", "labpool"],
                                 capture_output=True, text=True, timeout=60, check=True)
        assert closing.stdout.strip() == "closed 1 kept connection(s)"
        assert keepers.running() == [] and not any(runtime.glob("*"))


def test_two_keepers_started_at_once_leave_one(testbed: dict[str, str], runtime: Path) -> None:
    conn = connection(testbed)
    fields, fields_set = persist.connection_fields(conn), sorted(conn.model_fields_set)
    for _ in range(3):
        keepers._SPAWNED.clear()
        keepers.spawn("kept", fields, fields_set, 60)
    wait_for(lambda: len(keepers.running()) == 1, what="a keeper answers")
    wait_for(lambda: len(keeper_pids(runtime.parent)) == 1, 20, "the others end")  # they found the lock taken
    assert kept(testbed).run(["true"]).ok


def test_missing_runtime_directory_means_direct_and_no_keeper(testbed: dict[str, str], runtime: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime.parent / "missing"))
    via = kept(testbed)
    assert via.run(["echo", "ok"]).stdout == "ok\n" and (via.kept_runs, via.connections_opened) == (0, 1)
    time.sleep(1)
    assert not keeper_pids(runtime.parent / "missing") and not (runtime.parent / "missing").exists()
