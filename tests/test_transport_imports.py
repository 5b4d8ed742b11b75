"""Connecting loads paramiko without the modules paramiko imports for rare uses."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest


@pytest.mark.skipif(importlib.util.find_spec("invoke") is None, reason="invoke is not installed")
def test_invoke_loads_only_when_an_ssh_config_match_exec_needs_it(tmp_path) -> None:
    code = (
        "import sys\n"
        "import gpuhub.transport.ssh\n"
        "import paramiko\n"
        "print('before', type(sys.modules['invoke']).__name__)\n"
        "config = paramiko.SSHConfig.from_text('Match exec \"true\"\\n  User matched\\n')\n"
        "print('user', config.lookup('somehost').get('user'))\n"
        "print('after', type(sys.modules['invoke']).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["before _OnFirstUse", "user matched", "after module"]
