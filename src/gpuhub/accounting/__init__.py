"""GPU-hour accounting: collect job runs from sites, store them idempotently, report them.

Data flow, one way::

    sacct (Slurm) / gpuhub ledger (local, lab servers)
        -> UsageRow -> UsageStore (SQLite | PostgreSQL): usage_records (one row per job run)
                                                          usage_rollup (per month, kept at ingest)
        -> reports (table, CSV, JSON, Markdown, HTML)

Every record has a natural key (site, cluster, job id, submit time, start time), so collecting the
same window twice, or two collectors at once, never counts a job run twice.
"""
