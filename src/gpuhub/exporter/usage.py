"""Counters from the gpuhub ledger: submissions, and GPU-seconds of finished jobs.

The ledger is opened read-only (the exporter never creates or migrates it) and aggregated
inside SQLite (JSON1), so one row per site, project and GPU model reaches Python.
Both values only grow: the ledger never deletes a job, and a finished job's times are never
rewritten. A job counts ``gpus x (ended_at - started_at)`` once it has finished; an array job
counts as one allocation of its ``gpus`` over its whole span. These are dashboard figures,
not accounting: ``gpuhub usage`` reads the schedulers' own records.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gpuhub.exporter.samples import Samples, project_of
from gpuhub.states import FINISHED

_FINISHED = ",".join(f"'{state.value}'" for state in FINISHED)
GPU_SECONDS_SQL = f"""
    SELECT site,
           json_extract(request, '$.project'),
           COALESCE(json_extract(plan, '$.account'), json_extract(request, '$.account')),
           json_extract(plan, '$.gpu_model'),
           SUM(COALESCE(json_extract(plan, '$.gpus'), 0) * MAX(ended_at - started_at, 0))
    FROM jobs
    WHERE state IN ({_FINISHED}) AND started_at IS NOT NULL AND ended_at IS NOT NULL
    GROUP BY 1, 2, 3, 4
"""
SUBMISSIONS_SQL = """
    SELECT site,
           CASE WHEN scheduler_id IS NOT NULL THEN 'accepted' ELSE 'failed' END AS outcome,
           COUNT(*)
    FROM jobs
    WHERE scheduler_id IS NOT NULL OR state = 'failed'
    GROUP BY site, outcome
"""


def read_ledger(path: Path) -> Samples:
    """Ledger counters as samples; raises sqlite3.Error or OSError when the ledger cannot be read."""
    if not path.is_file():
        raise FileNotFoundError(f"no ledger at {path}")
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        out: Samples = {"gpuhub_gpu_seconds_total": {}, "gpuhub_submissions_total": {}}
        seconds = out["gpuhub_gpu_seconds_total"]
        for site, project, account, model, gpu_seconds in db.execute(GPU_SECONDS_SQL):
            labels = (site, project_of(project or account or ""), model or "unknown")
            seconds[labels] = seconds.get(labels, 0.0) + float(gpu_seconds or 0)
        for site, outcome, count in db.execute(SUBMISSIONS_SQL):
            out["gpuhub_submissions_total"][(site, outcome)] = float(count)
        return out
    finally:
        db.close()
