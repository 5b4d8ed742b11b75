"""Rendered files of every shipped site, compared with recorded golden files.

After an intended change: GPUHUB_UPDATE_GOLDEN=1 pytest tests/test_golden.py, then review the diff.
"""

from __future__ import annotations

import os

import pytest

from golden_cases import GOLDEN, SHIPPED, rendered

UPDATE = os.environ.get("GPUHUB_UPDATE_GOLDEN") == "1"


def test_every_shipped_site_has_golden_files():
    assert SHIPPED, "no shipped site files found"
    for site in SHIPPED:
        assert (GOLDEN / site).is_dir() or UPDATE, f"no golden files for shipped site {site}"


@pytest.mark.parametrize(("site", "case", "job"), list(rendered()), ids=lambda v: v if isinstance(v, str) else "")
def test_rendered_matches_golden(site, case, job):
    for name, text in job.files.items():
        path = GOLDEN / site / case / name
        if UPDATE:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        assert path.is_file(), f"missing golden file {path}"
        assert text == path.read_text(), f"{path} differs; re-record with GPUHUB_UPDATE_GOLDEN=1 if intended"
    assert job.submit_argv[0] in {"sbatch", "condor_submit", "oarsub", "bash"}


def test_no_stale_golden_directories():
    cases = {(site, case) for site, case, _ in rendered()}
    on_disk = {(p.parent.name, p.name) for p in GOLDEN.glob("*/*") if p.is_dir()}
    assert on_disk <= cases, f"golden files for cases that no longer exist: {sorted(on_disk - cases)}"
