"""Test isolation and the real-testbed fixtures.

Every test runs with its own empty config/data directories so a developer's
~/.config/gpuhub never leaks in. Tests marked ``slurm``/``ssh`` need the testbed started by
``scripts/testbed/up.sh``; they are skipped without it, unless GPUHUB_TESTBED=require
(CI sets it), where a missing testbed is a failure.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parent.parent
# Subprocesses (`python -m gpuhub ...`) test this checkout too, whatever is installed.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
# No SSH connection is kept between tests (each keeper would couple one test to another); the
# tests of kept connections turn them on themselves.
os.environ["GPUHUB_SSH_PERSIST"] = "0"
TESTBED_ENV = Path(os.environ.get("GPUHUB_TESTBED_ENV", "/var/lib/gpuhub-testbed/testbed.env"))


@pytest.fixture(autouse=True)
def isolated(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("gpuhub-home")
    monkeypatch.setenv("GPUHUB_CONFIG_DIR", str(home / "config"))
    monkeypatch.setenv("GPUHUB_SYSTEM_CONFIG_DIR", str(home / "etc"))
    monkeypatch.setenv("GPUHUB_DATA_DIR", str(home / "data"))
    monkeypatch.setenv("GPUHUB_CACHE_DIR", str(home / "cache"))
    monkeypatch.delenv("GPUHUB_SITES", raising=False)
    monkeypatch.delenv("GPUHUB_SITE", raising=False)
    return home


def _read_env(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            parts = shlex.split(value) or [""]
            out[key.strip().removeprefix("export ").strip()] = parts[0]
    return out


def missing_testbed(message: str) -> NoReturn:
    """A testbed part a test needs is missing: a failure where it is required (CI), else a skip."""
    if os.environ.get("GPUHUB_TESTBED") == "require":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def testbed() -> dict[str, str]:
    """Facts about the running testbed; skip (or fail in CI) when it is not up."""
    if not TESTBED_ENV.is_file():
        missing_testbed(f"Slurm testbed not started ({TESTBED_ENV} missing): run scripts/testbed/up.sh")
    env = _read_env(TESTBED_ENV)
    probe = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        missing_testbed(f"Slurm testbed not answering: {probe.stderr.strip()}")
    return env


TESTBED2_ENV = TESTBED_ENV.with_name("slurm2.env")


@pytest.fixture(scope="session")
def testbed2(testbed: dict[str, str]) -> dict[str, str]:
    """Facts about the testbed's second cluster (scripts/testbed/slurm2.sh)."""
    if not TESTBED2_ENV.is_file():
        missing_testbed(f"second Slurm cluster not started ({TESTBED2_ENV} missing): run scripts/testbed/slurm2.sh")
    return _read_env(TESTBED2_ENV)


def connection_yaml(testbed: dict[str, str]) -> str:
    """The ``connection:`` block of a site reached through the testbed's sshd."""
    return (
        f"connection:\n  host: {testbed['TESTBED_SSH_HOST']}\n  port: {testbed['TESTBED_SSH_PORT']}\n"
        f"  user: {testbed['TESTBED_SSH_USER']}\n  identity_file: {testbed['TESTBED_SSH_KEY']}\n"
        f"  known_hosts: {testbed['TESTBED_KNOWN_HOSTS']}\n"
    )


def ssh_fields(testbed: dict[str, str]) -> dict[str, object]:
    """The ``connection`` fields of a site reached through the testbed's sshd."""
    return {
        "host": testbed["TESTBED_SSH_HOST"],
        "port": int(testbed["TESTBED_SSH_PORT"]),
        "user": testbed["TESTBED_SSH_USER"],
        "identity_file": testbed["TESTBED_SSH_KEY"],
        "known_hosts": testbed["TESTBED_KNOWN_HOSTS"],
        "connect_timeout": 10,
    }


PG_ENV = Path(os.environ.get("GPUHUB_TEST_PG_ENV", "/var/lib/gpuhub-testbed/postgres.env"))


def pg_url() -> str:
    """URL of the tests' PostgreSQL (scripts/testbed/postgres.sh); skip, or fail in CI, without one."""
    url = ""
    if PG_ENV.is_file():
        for line in PG_ENV.read_text().splitlines():
            if line.startswith("GPUHUB_TEST_PG_URL="):
                url = line.partition("=")[2].strip()
    message = f"PostgreSQL for tests not set up ({PG_ENV}): run scripts/testbed/postgres.sh"
    if not url:
        missing_testbed(message)
    try:
        import psycopg

        psycopg.connect(url, connect_timeout=5).close()
    except Exception as exc:  # not installed, not running
        missing_testbed(f"PostgreSQL for tests not reachable: {exc}")
    return url


OAR_ENV = Path(os.environ.get("GPUHUB_TEST_OAR_ENV", "/var/lib/gpuhub-testbed/oar.env"))


@pytest.fixture(scope="session")
def oar_testbed(testbed: dict[str, str]) -> dict[str, str]:
    """Facts about the running OAR (scripts/testbed/oar.sh); skip, or fail in CI, without it."""
    if not OAR_ENV.is_file():
        missing_testbed(f"OAR testbed not started ({OAR_ENV} missing): run scripts/testbed/oar.sh")
    probe = subprocess.run(["oarstat", "-J", "-j", "1"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        missing_testbed(f"OAR testbed not answering: {probe.stderr.strip() or probe.stdout.strip()}")
    pid_file = Path("/run/oar-server.pid")
    pid = pid_file.read_text().strip() if pid_file.is_file() else ""
    comm = Path(f"/proc/{pid}/comm")
    if not (pid.isdigit() and comm.is_file() and comm.read_text().strip() == "Almighty"):
        missing_testbed("OAR server (Almighty) not running: run scripts/testbed/oar.sh")
    return {**testbed, **_read_env(OAR_ENV)}


CONDOR_ENV = Path(os.environ.get("GPUHUB_TEST_CONDOR_ENV", "/var/lib/gpuhub-testbed/htcondor.env"))


@pytest.fixture(scope="session")
def condor_testbed(testbed: dict[str, str]) -> dict[str, str]:
    """The fake condor_* commands of scripts/testbed/htcondor.sh; skip (or fail in CI) without them."""
    if not CONDOR_ENV.is_file() or not Path("/usr/local/bin/condor_q").is_file():
        missing_testbed(f"fake HTCondor not installed ({CONDOR_ENV} missing): run scripts/testbed/htcondor.sh")
    return {**testbed, **_read_env(CONDOR_ENV)}
