"""`gpuhub gpus` on a lab pool: the hosts are probed before the broker, the ledger or a site
model is loaded, and a warm run loads neither pydantic nor YAML."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from labbed import lab_env, lab_pool

pytestmark = pytest.mark.ssh

CODE = """
import json, sys
from gpuhub.cli import main
seen = {}
import gpuhub.cli.lab_gpus as lab_gpus
probe = lab_gpus.probe
def watched(*args, **kwargs):
    seen.update((m, m in sys.modules) for m in ("gpuhub.broker.choose", "gpuhub.ledger", "pydantic", "yaml"))
    return probe(*args, **kwargs)
lab_gpus.probe = watched
try:
    main(sys.argv[1:])
except SystemExit as exc:
    assert not exc.code, exc.code
print(json.dumps({"when_probing": seen, "at_end": {m: m in sys.modules for m in ("pydantic", "yaml")}}),
      file=sys.stderr)
"""


def test_lab_hosts_are_probed_first_and_no_model_is_loaded(testbed: dict[str, str], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    env = lab_env(testbed)
    with lab_pool(env, tmp_path, monkeypatch):
        args = [sys.executable, "-c", CODE, "gpus", "--site", "labpool", "--json"]
        subprocess.run(args, capture_output=True, text=True, timeout=120, check=True)  # fills the caches
        run = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True)
        loaded = json.loads(run.stderr.strip().splitlines()[-1])
        assert loaded["when_probing"] == {"gpuhub.broker.choose": False, "gpuhub.ledger": False,
                                          "pydantic": False, "yaml": False}
        assert loaded["at_end"] == {"pydantic": False, "yaml": False}
        rows = json.loads(run.stdout)["lab_gpus"]
        assert sorted((r["host"], r["gpu"], r["state"]) for r in rows) == [
            ("gpu1", 0, "free"), ("gpu1", 1, "free"), ("gpu2", 0, "free"), ("gpu2", 1, "free")]
