"""SSHTransport and `gpuhub sites trust` against the real sshd of the testbed (no mocks).

Tests marked ``ssh`` talk to the loopback sshd on 127.0.0.1:2222 started by
scripts/testbed/up.sh. Remote processes run on this machine, so ``pgrep`` here sees them.
"""

from __future__ import annotations

import base64
import contextlib
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from click.testing import CliRunner

from conftest import ssh_fields
from gpuhub import registry
from gpuhub.cli import main
from gpuhub.site import Connection
from gpuhub.transport.base import CommandError, CommandTimeout, TransportError
from gpuhub.transport.ssh import SSHTransport, fingerprint, gpuhub_known_hosts, known_keys, resolve

DATA = Path(__file__).parent / "data"
HOST_PUB = Path("/var/lib/gpuhub-testbed/ssh/ssh_host_ed25519_key.pub")


@pytest.fixture(autouse=True)
def no_personal_ssh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the developer's ~/.ssh (config, known_hosts, keys) and ssh-agent out of the tests."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GPUHUB_SSH_CONFIG", str(tmp_path / "no-ssh-config"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


def connection(testbed: dict[str, str], **changes: object) -> Connection:
    fields = {**ssh_fields(testbed), **changes}
    return Connection(**{k: v for k, v in fields.items() if v is not None})


@pytest.fixture
def tb(testbed: dict[str, str]) -> Iterator[SSHTransport]:
    transport = SSHTransport("testbed", connection(testbed))
    yield transport
    transport.close()


def host_key() -> tuple[str, str]:
    """(key type, base64) of the testbed sshd's host key, read now (up.sh may regenerate it)."""
    key_type, blob = HOST_PUB.read_text().split()[:2]
    return key_type, blob


def remote_gone(pattern: str, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 1:
            return True
        time.sleep(0.1)
    return False


def next_within(gen: Iterator[str], seconds: float = 10.0) -> str:
    box: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: box.put(next(gen)), daemon=True).start()
    return box.get(timeout=seconds)


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


@pytest.mark.ssh
def test_run_returns_code_stdout_stderr(tb: SSHTransport) -> None:
    result = tb.run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert result.argv == ["sh", "-c", "echo out; echo err >&2; exit 3"]
    assert tb.run(["squeue", "--version"]).stdout.startswith("slurm")


@pytest.mark.ssh
def test_hostile_arguments_arrive_unchanged(tb: SSHTransport) -> None:
    marker = f"/tmp/gpuhub-pwned-{secrets.token_hex(4)}"
    args = [
        "two words",
        "it's",
        '"double"',
        f"$(touch {marker})",
        f"`touch {marker}`",
        "line one\nline two",
        "*",
        "~",
        "; rm -rf / ;",
        "&& |",
        "back\\slash",
        "",
        "tab\there",
        "ünïcødé",
        "-n",
        "$HOME",
        "!bang",
        "{a,b}",
    ]
    out = tb.run(["printf", "%s\\0", *args]).stdout
    assert out.split("\0")[:-1] == args
    assert tb.run(["test", "-e", marker], check=False).returncode == 1


@pytest.mark.ssh
def test_stdin_is_delivered(tb: SSHTransport) -> None:
    assert tb.run(["cat"], stdin="first\nsecond line\n").stdout == "first\nsecond line\n"
    big = "x" * 3_000_000  # more than the SSH window: written from a thread
    assert tb.run(["wc", "-c"], stdin=big).stdout.strip() == "3000000"
    assert tb.run(["cat"]).stdout == ""  # no stdin: EOF at once, nothing hangs


@pytest.mark.ssh
def test_large_stdout_and_stderr_at_once(tb: SSHTransport) -> None:
    script = "head -c 3000000 /dev/zero | tr '\\0' e >&2; head -c 3000000 /dev/zero | tr '\\0' o"
    result = tb.run(["sh", "-c", script], timeout=60)
    assert len(result.stdout) == 3_000_000 and set(result.stdout) == {"o"}
    assert len(result.stderr) == 3_000_000 and set(result.stderr) == {"e"}


@pytest.mark.ssh
def test_failure_raises_command_error(tb: SSHTransport) -> None:
    with pytest.raises(CommandError) as info:
        tb.run(["sh", "-c", "echo partial; echo 'no such partition' >&2; exit 7"])
    err = info.value
    assert err.result.returncode == 7
    assert err.result.stdout == "partial\n"
    assert "no such partition" in err.message and "exit 7" in err.message
    assert "site testbed (hubuser@127.0.0.1)" in err.message
    assert tb.run(["false"], check=False).returncode == 1


@pytest.mark.ssh
def test_timeout_stops_the_remote_command(tb: SSHTransport) -> None:
    duration = f"300.{secrets.randbelow(10**6):06d}"  # a unique command line to look for
    start = time.monotonic()
    with pytest.raises(CommandTimeout) as info:
        # A background child and a foreground one: the whole process group must go.
        tb.run(["sh", "-c", f"echo started; sleep {duration} & sleep {duration}; wait"], timeout=2)
    elapsed = time.monotonic() - start
    assert elapsed < 2 + 4, elapsed
    assert info.value.argv[0] == "sh" and info.value.stdout == "started\n"
    assert "did not finish within 2 s" in info.value.message
    assert remote_gone(f"sleep {duration}"), "the remote sleep outlived the timeout"
    assert tb.run(["echo", "still usable"]).stdout == "still usable\n"
    assert tb.connections_opened == 1


@pytest.mark.ssh
def test_one_connection_for_many_commands(tb: SSHTransport, capsys: pytest.CaptureFixture[str]) -> None:
    first = tb.run(["sh", "-c", "echo $SSH_CONNECTION"]).stdout
    paramiko_transport = tb._transport
    count = 200
    start = time.monotonic()
    for i in range(count):
        assert tb.run(["echo", str(i)]).stdout == f"{i}\n"
    rate = count / (time.monotonic() - start)
    assert tb._transport is paramiko_transport and tb.connections_opened == 1
    assert tb.run(["sh", "-c", "echo $SSH_CONNECTION"]).stdout == first  # same client port: same TCP connection
    with capsys.disabled():
        print(f"\n{count} sequential commands over one SSH connection: {rate:.0f} commands/s")


@pytest.mark.ssh
def test_concurrent_commands_share_the_connection(tb: SSHTransport) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(10):
                tag = f"t{n}-{i}"
                assert tb.run(["sh", "-c", 'sleep 0.05; echo "$0"', tag]).stdout == tag + "\n"
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert tb.connections_opened == 1


@pytest.mark.ssh
def test_reconnects_after_the_server_drops_the_connection(tb: SSHTransport) -> None:
    assert tb.run(["true"]).ok
    duration = f"20.{secrets.randbelow(10**6):06d}"
    outcome: queue.Queue = queue.Queue()

    def long_command() -> None:
        try:
            outcome.put(tb.run(["sleep", duration], timeout=30))
        except Exception as exc:
            outcome.put(exc)

    threading.Thread(target=long_command, daemon=True).start()
    deadline = time.monotonic() + 5
    while subprocess.run(["pgrep", "-f", f"sleep {duration}"], capture_output=True).returncode and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
    local_port = tb._transport.sock.getsockname()[1]
    listing = subprocess.run(
        ["ss", "-Htnp", "state", "established", f"( sport = :2222 and dport = :{local_port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pids = {int(p) for p in re.findall(r"pid=(\d+)", listing)}
    assert pids, f"no sshd process found for our connection: {listing!r}"
    for pid in pids:  # the sshd processes serving this one connection
        # Killing the session's privileged monitor can end its child before we reach it.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while tb.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not tb.alive()
    lost = outcome.get(timeout=10)
    assert isinstance(lost, TransportError) and "was lost while `sleep" in lost.message
    orphans = subprocess.run(["pgrep", "-f", f"sleep {duration}"], capture_output=True, text=True).stdout.split()
    for pid in orphans:  # without its sshd the remote sleep may linger: it is ours, end it
        os.kill(int(pid), signal.SIGTERM)
    assert tb.run(["echo", "back"]).stdout == "back\n"
    assert tb.connections_opened == 2 and tb.alive()


@pytest.mark.ssh
def test_reconnects_after_close_and_after_a_dead_socket(tb: SSHTransport) -> None:
    assert tb.alive()  # not connected yet, but usable
    tb.run(["true"])
    tb.close()
    assert not tb.alive()
    assert tb.run(["echo", "again"]).stdout == "again\n"
    tb._transport.sock.shutdown(socket.SHUT_RDWR)  # the network goes away under us
    assert tb.run(["echo", "third"]).stdout == "third\n"
    assert tb.connections_opened == 3


# --------------------------------------------------------------------------------------------
# Files and streams
# --------------------------------------------------------------------------------------------


@pytest.mark.ssh
def test_put_and_get_text(tb: SSHTransport) -> None:
    top = f"gpuhub-test-{secrets.token_hex(4)}"
    path = f"~/{top}/deep/er/job.sbatch"
    text = "#!/bin/bash\n#SBATCH --job-name=héllo\necho 'ok'\n"
    try:
        tb.put_text(path, text, 0o600)
        assert tb.get_text(path) == text
        assert tb.run(["stat", "-c", "%a", f"{top}/deep/er/job.sbatch"]).stdout.strip() == "600"
        tb.put_text(path, "replaced\n", 0o755)
        assert tb.get_text(path) == "replaced\n"
        assert tb.run(["ls", "-A", f"{top}/deep/er"]).stdout == "job.sbatch\n"  # no temp file left behind
        home = tb.run(["sh", "-c", 'printf %s "$HOME"']).stdout
        assert tb.get_text(f"{home}/{top}/deep/er/job.sbatch") == "replaced\n"  # absolute paths too
        with pytest.raises(FileNotFoundError):
            tb.get_text(f"~/{top}/missing")
    finally:
        tb.run(["rm", "-rf", top])
    assert tb.connections_opened == 1


@pytest.mark.ssh
def test_put_text_errors_are_clear(tb: SSHTransport) -> None:
    with pytest.raises(TransportError, match=r"cannot write /proc/gpuhub-nope/x on site testbed"):
        tb.put_text("/proc/gpuhub-nope/x", "x")


@pytest.mark.ssh
def test_stream_follows_a_growing_file(tb: SSHTransport) -> None:
    path = f"/tmp/gpuhub-stream-{secrets.token_hex(4)}.log"
    tb.put_text(path, "one\n")
    gen = tb.stream(["tail", "-n", "+1", "-f", path])
    try:
        assert next_within(gen) == "one\n"
        tb.run(["sh", "-c", 'printf "two\\nthree\\n" >> "$0"', path])
        assert next_within(gen) == "two\n"
        assert next_within(gen) == "three\n"
    finally:
        gen.close()
    assert remote_gone(f"tail -n \\+1 -f {path}"), "tail -f still runs after the stream was closed"
    tb.run(["rm", "-f", path])
    assert list(tb.stream(["printf", "a\\nb\\nc"])) == ["a\n", "b\n", "c"]


# --------------------------------------------------------------------------------------------
# Host keys
# --------------------------------------------------------------------------------------------


@pytest.mark.ssh
def test_unknown_host_key_is_refused(testbed: dict[str, str], tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    transport = SSHTransport("testbed", connection(testbed, known_hosts=str(empty)))
    with pytest.raises(TransportError) as info:
        transport.run(["true"])
    key_type, blob = host_key()
    message = info.value.message
    assert "host key of [127.0.0.1]:2222 (site testbed) is not known" in message
    assert f"{key_type} {fingerprint(blob)}" in message
    assert "run `gpuhub sites trust testbed`" in message


@pytest.mark.ssh
def test_changed_host_key_is_refused(testbed: dict[str, str], tmp_path: Path) -> None:
    other = Path(testbed["TESTBED_SSH_KEY"] + ".pub").read_text().split()[1]  # some other ed25519 key
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:2222 ssh-ed25519 {other}\n")
    transport = SSHTransport("testbed", connection(testbed, known_hosts=str(known)))
    with pytest.raises(TransportError) as info:
        transport.run(["true"])
    message = info.value.message
    assert message.startswith("HOST KEY CHANGED for [127.0.0.1]:2222 (site testbed)")
    assert f"known ssh-ed25519 {fingerprint(other)}" in message
    assert f"offered ssh-ed25519 {fingerprint(host_key()[1])}" in message
    assert "this may be an attack" in message and str(known) in message


@pytest.mark.ssh
def test_hashed_known_hosts_and_revoked_keys(testbed: dict[str, str], tmp_path: Path) -> None:
    key_type, blob = host_key()
    hashed = paramiko.HostKeys.hash_host("[127.0.0.1]:2222")
    known = tmp_path / "known_hosts"
    known.write_text(f"# hashed, as HashKnownHosts writes it\n{hashed} {key_type} {blob}\n")
    assert SSHTransport("testbed", connection(testbed, known_hosts=str(known))).run(["true"]).ok
    known.write_text(f"[127.0.0.1]:2222 {key_type} {blob}\n@revoked * {key_type} {blob}\n")
    with pytest.raises(TransportError, match="REVOKED"):
        SSHTransport("testbed", connection(testbed, known_hosts=str(known))).run(["true"])


@pytest.mark.ssh
def test_gpuhub_known_hosts_is_always_read(testbed: dict[str, str], tmp_path: Path) -> None:
    key_type, blob = host_key()
    own = gpuhub_known_hosts()
    own.parent.mkdir(parents=True, exist_ok=True)
    own.write_text(f"[127.0.0.1]:2222 {key_type} {blob}\n")
    empty = tmp_path / "empty"
    empty.write_text("")
    assert SSHTransport("testbed", connection(testbed, known_hosts=str(empty))).run(["true"]).ok


# --------------------------------------------------------------------------------------------
# `gpuhub sites trust`
# --------------------------------------------------------------------------------------------


def site_dir(tmp_path: Path, fingerprints: dict[str, str] | None = None) -> Path:
    """A GPUHUB_SITES directory with the testbed site, minus its known_hosts setting."""
    directory = tmp_path / "sites"
    directory.mkdir(exist_ok=True)
    lines = [line for line in (DATA / "sites" / "testbed.yaml").read_text().splitlines() if "known_hosts" not in line]
    text = "\n".join(lines) + "\n"
    if fingerprints:
        block = "".join(f"\n    {k}: {v!r}" for k, v in fingerprints.items())
        text = text.replace(
            "  keepalive_interval: 10\n", f"  keepalive_interval: 10\n  host_key_fingerprints:{block}\n"
        )
    (directory / "testbed.yaml").write_text(text)
    return directory


@pytest.mark.ssh
def test_sites_trust_adds_the_key_and_connections_work(
    testbed: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_type, blob = host_key()
    monkeypatch.setenv("GPUHUB_SITES", str(site_dir(tmp_path, {"ed25519": fingerprint(blob)})))
    site = registry.load_site("testbed")
    assert site.connection is not None and site.connection.known_hosts is None
    with pytest.raises(TransportError, match="gpuhub sites trust testbed"):
        SSHTransport(site.name, site.connection).run(["true"])

    result = CliRunner().invoke(main, ["sites", "trust", "testbed", "--yes"])
    assert result.exit_code == 0, result.output
    assert f"[127.0.0.1]:2222 offers {key_type} {fingerprint(blob)}" in result.output
    assert "matches the ed25519 fingerprint published in the site file" in result.output
    own = gpuhub_known_hosts()
    assert own.read_text() == f"[127.0.0.1]:2222 {key_type} {blob}\n"

    transport = SSHTransport(site.name, site.connection)
    assert transport.run(["echo", "trusted"]).stdout == "trusted\n"
    transport.close()

    again = CliRunner().invoke(main, ["sites", "trust", "testbed"])
    assert again.exit_code == 0, again.output
    assert "already trusted" in again.output
    assert own.read_text() == f"[127.0.0.1]:2222 {key_type} {blob}\n"


@pytest.mark.ssh
def test_sites_trust_refuses_a_mismatch(
    testbed: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bogus = "SHA256:" + base64.b64encode(b"\0" * 32).decode().rstrip("=")
    monkeypatch.setenv("GPUHUB_SITES", str(site_dir(tmp_path, {"ed25519": bogus})))
    result = CliRunner().invoke(main, ["sites", "trust", "testbed", "--yes"])
    assert result.exit_code == 2, result.output
    assert "this may be an attack" in result.output and bogus in result.output
    assert not gpuhub_known_hosts().exists()
    # A site that publishes only other key types is refused too.
    monkeypatch.setenv("GPUHUB_SITES", str(site_dir(tmp_path, {"rsa": bogus})))
    result = CliRunner().invoke(main, ["sites", "trust", "testbed", "--yes"])
    assert result.exit_code == 2 and "only for rsa" in result.output
    assert not gpuhub_known_hosts().exists()


@pytest.mark.ssh
def test_sites_trust_asks_first(testbed: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUHUB_SITES", str(site_dir(tmp_path)))
    declined = CliRunner().invoke(main, ["sites", "trust", "testbed"], input="n\n")
    assert declined.exit_code == 1 and "publishes no fingerprint" in declined.output
    assert not gpuhub_known_hosts().exists()
    target = tmp_path / "elsewhere" / "known_hosts"
    accepted = CliRunner().invoke(main, ["sites", "trust", "testbed", "--known-hosts", str(target)], input="y\n")
    assert accepted.exit_code == 0, accepted.output
    key_type, blob = host_key()
    assert target.read_text() == f"[127.0.0.1]:2222 {key_type} {blob}\n"
    assert "do not read" in accepted.output  # that file is not one connections read


@pytest.mark.ssh
def test_sites_trust_refuses_a_changed_key(
    testbed: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPUHUB_SITES", str(site_dir(tmp_path)))
    other = Path(testbed["TESTBED_SSH_KEY"] + ".pub").read_text().split()[1]
    own = gpuhub_known_hosts()
    own.parent.mkdir(parents=True, exist_ok=True)
    own.write_text(f"[127.0.0.1]:2222 ssh-ed25519 {other}\n")
    result = CliRunner().invoke(main, ["sites", "trust", "testbed", "--yes"])
    assert result.exit_code == 2 and "HOST KEY CHANGED" in result.output
    assert own.read_text() == f"[127.0.0.1]:2222 ssh-ed25519 {other}\n"


# --------------------------------------------------------------------------------------------
# ssh_config, jump hosts, proxy commands
# --------------------------------------------------------------------------------------------


@pytest.mark.ssh
def test_ssh_config_alias(testbed: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(
        "Host tb\n"
        "    HostName 127.0.0.1\n"
        "    Port 2222\n"
        "    User hubuser\n"
        f"    IdentityFile {testbed['TESTBED_SSH_KEY']}\n"
        f"    UserKnownHostsFile {testbed['TESTBED_KNOWN_HOSTS']}\n"
        "    ServerAliveInterval 7\n"
        "Host *\n"
        "    User somebody-else\n"
    )
    monkeypatch.setenv("GPUHUB_SSH_CONFIG", str(config))
    transport = SSHTransport("tb-site", Connection(host="tb"))
    assert transport.where == "site tb-site (hubuser@tb)"
    assert transport.run(["id", "-un"]).stdout == "hubuser\n"
    endpoint = transport.endpoint
    assert endpoint is not None
    assert (endpoint.hostname, endpoint.port, endpoint.user, endpoint.keepalive) == ("127.0.0.1", 2222, "hubuser", 7)
    assert endpoint.known_hosts_files[0] == Path(testbed["TESTBED_KNOWN_HOSTS"])
    transport.close()
    # What the site file sets wins over ssh_config.
    site_wins, _ = resolve(Connection(host="tb", port=2200, user="me", identity_file="/k", keepalive_interval=0))
    assert (site_wins.port, site_wins.user, site_wins.identity_files, site_wins.keepalive) == (2200, "me", ("/k",), 0)


@pytest.mark.ssh
@pytest.mark.parametrize("jumps", [1, 2])
def test_proxy_jump_through_the_testbed_itself(testbed: dict[str, str], jumps: int) -> None:
    hop = f"{testbed['TESTBED_SSH_USER']}@127.0.0.1:2222"
    transport = SSHTransport("testbed", connection(testbed, proxy_jump=",".join([hop] * jumps)))
    assert transport.run(["echo", "through"]).stdout == "through\n"
    assert len(transport._jumps) == jumps
    transport.put_text(f"/tmp/gpuhub-jump-{os.getpid()}", "via jump\n")
    assert transport.get_text(f"/tmp/gpuhub-jump-{os.getpid()}") == "via jump\n"
    transport.run(["rm", "-f", f"/tmp/gpuhub-jump-{os.getpid()}"])
    transport.close()


@pytest.mark.ssh
def test_jump_host_key_is_checked_too(testbed: dict[str, str], tmp_path: Path) -> None:
    other = Path(testbed["TESTBED_SSH_KEY"] + ".pub").read_text().split()[1]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:2222 ssh-ed25519 {other}\n")
    transport = SSHTransport(
        "testbed", connection(testbed, known_hosts=str(known), proxy_jump="hubuser@127.0.0.1:2222")
    )
    with pytest.raises(TransportError, match=r"HOST KEY CHANGED for \[127.0.0.1\]:2222 \(jump host of site testbed\)"):
        transport.run(["true"])


@pytest.mark.ssh
@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client")
def test_proxy_command_from_ssh_config(
    testbed: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "ssh_config"
    proxy = (
        f"ssh -o BatchMode=yes -i {testbed['TESTBED_SSH_KEY']} -o UserKnownHostsFile={testbed['TESTBED_KNOWN_HOSTS']}"
        " -p %p -W %h:%p %r@%h"
    )
    config.write_text(f"Host tbproxy\n    HostName 127.0.0.1\n    ProxyCommand {proxy}\n")
    monkeypatch.setenv("GPUHUB_SSH_CONFIG", str(config))
    conn = connection(testbed, host="tbproxy")
    transport = SSHTransport("testbed", conn)
    assert transport.run(["echo", "proxied"]).stdout == "proxied\n"
    transport.close()


# --------------------------------------------------------------------------------------------
# Keys and connection failures
# --------------------------------------------------------------------------------------------


def new_key(path: Path, passphrase: str = "") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-f", str(path)], check=True)
    return path


@pytest.mark.ssh
def test_wrong_key_is_a_clear_auth_error(testbed: dict[str, str], tmp_path: Path) -> None:
    key = new_key(tmp_path / "id_other")
    transport = SSHTransport("testbed", connection(testbed, identity_file=str(key)))
    with pytest.raises(TransportError) as info:
        transport.run(["true"])
    message = info.value.message
    assert message.startswith("authentication to hubuser@127.0.0.1:2222 (site testbed) failed")
    assert str(key) in message and "PRIVATE KEY" not in message


@pytest.mark.ssh
def test_encrypted_key_without_agent(testbed: dict[str, str], tmp_path: Path) -> None:
    key = new_key(tmp_path / "id_locked", passphrase="correct horse")
    transport = SSHTransport("testbed", connection(testbed, identity_file=str(key)))
    with pytest.raises(TransportError) as info:
        transport.run(["true"])
    assert "protected by a passphrase" in info.value.message
    assert f"ssh-add {key}" in info.value.message and "correct horse" not in info.value.message


@pytest.mark.ssh
@pytest.mark.skipif(shutil.which("ssh-agent") is None, reason="needs ssh-agent")
def test_key_from_ssh_agent(testbed: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", "-q", testbed["TESTBED_SSH_KEY"]], env=env, check=True, capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        transport = SSHTransport("testbed", connection(testbed, identity_file=None))
        assert transport.run(["echo", "agent"]).stdout == "agent\n"
        transport.close()
    finally:
        agent.terminate()
        agent.wait(5)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.ssh
def test_nothing_listening_fails_fast(testbed: dict[str, str]) -> None:
    port = free_port()
    transport = SSHTransport("closed", connection(testbed, port=port, ip_restricted=True))
    start = time.monotonic()
    with pytest.raises(TransportError) as info:
        transport.run(["true"])
    assert time.monotonic() - start < 3
    message = info.value.message
    assert f"connection to 127.0.0.1:{port} (site closed) refused" in message
    assert "site closed only admits registered addresses; use a VPN or connection.proxy_jump" in message


def test_unknown_host_name() -> None:
    transport = SSHTransport("nowhere", Connection(host="gpuhub-no-such-host.invalid", connect_timeout=5))
    with pytest.raises(TransportError, match=r"cannot resolve host name 'gpuhub-no-such-host.invalid'"):
        transport.run(["true"])


def test_help_does_not_import_paramiko() -> None:
    code = (
        "import sys\n"
        "from gpuhub.cli import main\n"
        "for args in (['--help'], ['sites', '--help'], ['sites', 'trust', '--help']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('paramiko' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_known_hosts_matching(tmp_path: Path) -> None:
    blob = base64.b64encode(b"\0\0\0\x0bssh-ed25519" + b"\0\0\0\x20" + b"k" * 32).decode()
    hashed = paramiko.HostKeys.hash_host("login.example.org")
    known = tmp_path / "known_hosts"
    known.write_text(
        f"*.example.org,!bad.example.org ssh-ed25519 {blob}\n"
        f"{hashed} ssh-ed25519 {blob}\n"
        f"[gpu.example.org]:2222 ssh-ed25519 {blob}\n"
        "@cert-authority *.example.org ssh-ed25519 AAAA\n"
        "garbage\n"
    )
    assert [k.lineno for k in known_keys([known], "login.example.org")] == [1, 2]
    assert known_keys([known], "bad.example.org") == []
    assert [k.lineno for k in known_keys([known], "[gpu.example.org]:2222")] == [3]
    assert known_keys([known], "[gpu.example.org]:22") == []
    assert known_keys([tmp_path / "missing"], "x") == []


def test_endpoint_names_and_jump_parsing() -> None:
    target, jumps = resolve(
        Connection(host="login.example.org", user="u", proxy_jump="alice@bastion:2200,ssh://gw,[::1]:23")
    )
    assert target.key_name == "login.example.org" and target.label == "u@login.example.org"
    assert [(j.user, j.hostname, j.port) for j in jumps[:1]] == [("alice", "bastion", 2200)]
    assert [(j.hostname, j.port) for j in jumps[1:]] == [("gw", 22), ("::1", 23)]
    assert jumps[2].key_name == "[::1]:23"
    assert target.known_hosts_files[-1] == gpuhub_known_hosts()
