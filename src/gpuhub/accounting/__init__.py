"""GPU-hour accounting: collect job runs from sites, store them idempotently, report them.

Data flow, one way::

    sacct (Slurm) / condor_history (HTCondor) / gpuhub ledger (local, lab servers)
        -> UsageRow -> UsageStore (SQLite | PostgreSQL): usage_records (one row per job run)
                                                          usage_rollup (per month, kept at ingest)
        -> Report (report.py) -> table, CSV, JSON, Markdown (formats.py), HTML (html.py)

Every record has a natural key (site, cluster, job id, submit time, start time), so collecting the
same window twice, or two collectors at once, never counts a job run twice.
"""
