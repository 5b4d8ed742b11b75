"""Bad input through the real command line: one clear line, the right exit code, never a traceback,
a consistent ledger. The cases live in tests/bad_inputs.py (run it alone to count them)."""

from __future__ import annotations

import pytest

from bad_inputs import CASES, run_case


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_cleanly(case):
    outcome = run_case(case)
    assert outcome.ok, f"{case.id}: {'; '.join(outcome.problems)}\nstdout: {outcome.stdout[-800:]}\n" \
                       f"stderr: {outcome.stderr[-1500:]}"
