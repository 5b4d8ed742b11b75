"""The gpuhub program ends without the interpreter's teardown, yet loses no output."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gpuhub.cli import main


def gpuhub(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpuhub", *args], capture_output=True, text=True, timeout=60)


def test_output_is_complete_and_exit_codes_kept(isolated) -> None:
    done = gpuhub("render", "--", "echo", "last-line")
    assert done.returncode == 0 and done.stdout.rstrip().endswith("echo last-line"), done
    assert "submit command" in done.stderr
    wrong = gpuhub("render", "--time", "forever", "--", "true")
    assert wrong.returncode == 2 and wrong.stderr.startswith("Error: --time:") and not wrong.stdout


def test_a_closed_pipe_ends_quietly(isolated) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "gpuhub", "render", "--", "true"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # as `| head -1` does
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0
    assert "Traceback" not in err and "Exception ignored" not in err, err


def test_called_from_code_it_raises_system_exit(isolated) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["render", "--time", "forever", "--", "true"])
    assert exc.value.code == 2
