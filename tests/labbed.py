"""Fake lab GPU servers on the testbed's loopback sshd, shared by the lab-server tests.

A fake host is a world-readable directory under /var/tmp holding a symlink to the testbed's
fake nvidia-smi and the ``gpus.state`` it reads, plus the host's lock directory. Two login
users (``hubuser``, ``hubuser2``) reach it, each with their own key.
"""

from __future__ import annotations

import shutil
import textwrap
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LAB_ENV = Path("/var/lib/gpuhub-testbed/labserver.env")


def lab_env(testbed: dict[str, str]) -> dict[str, str]:
    """testbed.env plus labserver.env; skip (or fail in CI) without the lab additions."""
    from conftest import _read_env, missing_testbed

    if not LAB_ENV.is_file():
        missing_testbed(f"lab-server testbed not set up ({LAB_ENV} missing): run scripts/testbed/labserver.sh")
    return {**testbed, **_read_env(LAB_ENV)}


@dataclass
class FakeHost:
    root: Path
    name: str = "gpu1"
    apps: list[str] = field(default_factory=list)

    @property
    def nvidia_smi(self) -> str:
        return str(self.root / "nvidia-smi")

    @property
    def lock_dir(self) -> str:
        return str(self.root / "locks")

    def set_gpus(self, count: int, busy: dict[int, int] | None = None, model: str = "NVIDIA A40") -> None:
        """``count`` GPUs; ``busy`` maps an index to the memory (MiB) something outside gpuhub uses."""
        busy = busy or {}
        lines = [
            f"gpu|{i}|{self.uuid(i)}|{model}|{busy.get(i, 3)}|46068|{50 if i in busy else 0}" for i in range(count)
        ]
        self._write([*lines, *self.apps])

    def add_app(self, index: int, pid: int, memory: int = 2000) -> None:
        """A compute process on GPU ``index`` (a real pid, so its owner can be looked up)."""
        self.apps.append(f"app|{self.uuid(index)}|{pid}|{memory}|python")
        current = [line for line in (self.root / "gpus.state").read_text().splitlines() if line.startswith("gpu|")]
        self._write([*current, *self.apps])

    def uuid(self, index: int) -> str:
        return f"GPU-{self.name}-{index:02d}-{self.root.name[-12:]}"

    def _write(self, lines: list[str]) -> None:
        tmp = self.root / "gpus.state.tmp"
        tmp.write_text("\n".join(lines) + "\n")
        tmp.chmod(0o644)
        tmp.replace(self.root / "gpus.state")


def make_host(env: dict[str, str], name: str = "gpu1", gpus: int = 4) -> FakeHost:
    root = Path("/var/tmp") / f"gpuhub-labtest-{uuid.uuid4().hex}"
    root.mkdir()
    root.chmod(0o1777)  # like /var/tmp, where the lock directory is made
    (root / "nvidia-smi").symlink_to(env["TESTBED_FAKE_NVIDIA_SMI"])
    host = FakeHost(root, name)
    host.set_gpus(gpus)
    return host


def remove_host(host: FakeHost) -> None:
    shutil.rmtree(host.root, ignore_errors=True)


def site_yaml(env: dict[str, str], name: str, hosts: list[FakeHost], gpus_per_node: int = 4, lab: str = "") -> str:
    """An ssh site on the loopback sshd whose hosts are the fake ones (all at 127.0.0.1)."""
    entries = "\n".join(
        f"    - {{name: {h.name}, host: {env['TESTBED_SSH_HOST']}, lock_dir: {h.lock_dir}, nvidia_smi: {h.nvidia_smi}}}"
        for h in hosts
    )
    extra = textwrap.indent(textwrap.dedent(lab).strip(), "  ") if lab.strip() else ""
    return (
        f"name: {name}\n"
        "scheduler: ssh\n"
        "connection:\n"
        f"  host: {hosts[0].name}\n"
        f"  port: {env['TESTBED_SSH_PORT']}\n"
        f"  user: {env['TESTBED_SSH_USER']}\n"
        f"  identity_file: {env['TESTBED_SSH_KEY']}\n"
        f"  known_hosts: {env['TESTBED_KNOWN_HOSTS']}\n"
        "lab:\n"
        "  kill_grace: 1\n"
        "  queue_poll: 0.2\n"
        f"  hosts:\n{entries}\n"
        f"{extra}\n"
        "partitions:\n"
        "  gpu:\n"
        "    gpu_model: a40\n"
        f"    gpus_per_node: {gpus_per_node}\n"
    )


@contextmanager
def lab_pool(env: dict[str, str], tmp_path: Path, monkeypatch: Any, count: int = 2, gpus: int = 2,
             name: str = "labpool") -> Iterator[list[FakeHost]]:
    """A pool site of ``count`` fake hosts in $GPUHUB_SITES; the hosts are removed afterwards."""
    hosts = [make_host(env, f"gpu{i}", gpus=gpus) for i in range(1, count + 1)]
    try:
        sites = tmp_path / "sites"
        sites.mkdir()
        (sites / f"{name}.yaml").write_text(site_yaml(env, name, hosts, gpus_per_node=gpus))
        monkeypatch.setenv("GPUHUB_SITES", str(sites))
        yield hosts
    finally:
        for host in hosts:
            remove_host(host)
