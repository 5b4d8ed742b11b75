"""Counters from the gpuhub ledger: submissions, and GPU-seconds of finished jobs.

The ledger is opened read-only (the exporter never creates or migrates it) and aggregated
inside SQLite by :class:`~gpuhub.ledger.Ledger`, so one row per site, project and GPU model
reaches Python.
Both values only grow: the ledger never deletes a job, and a finished job's times are never
rewritten. A job counts ``gpus x (ended_at - started_at)`` once it has finished; an array job
counts as one allocation of its ``gpus`` over its whole span. These are dashboard figures,
not accounting: ``gpuhub usage`` reads the schedulers' own records.
"""

from __future__ import annotations

from pathlib import Path

from gpuhub.exporter.samples import Samples, project_label
from gpuhub.ledger import Ledger


def read_ledger(path: Path) -> Samples:
    """Ledger counters as samples; raises GpuhubError, sqlite3.Error or OSError when the ledger
    cannot be read."""
    book = Ledger.open_read_only(path)
    try:
        out: Samples = {"gpuhub_gpu_seconds_total": {}, "gpuhub_submissions_total": {}}
        seconds = out["gpuhub_gpu_seconds_total"]
        for site, project, account, model, gpu_seconds in book.gpu_seconds():
            labels = (site, project_label(project or account), model or "unknown")
            seconds[labels] = seconds.get(labels, 0.0) + gpu_seconds
        for (site, outcome), count in book.submission_counts().items():
            out["gpuhub_submissions_total"][(site, outcome)] = float(count)
        return out
    finally:
        book.close()
