"""``gpuhub exporter``: Prometheus metrics for GPU sites, served from a cache.

One background poller per site asks the site's scheduler (Slurm ``sinfo``/``squeue``,
HTCondor ``condor_status``/``condor_q``, ``nvidia-smi`` on a lab server) at its own interval
and timeout, turns the answer into label sets and values, and stores them. A scrape only
reads what is stored, so a slow or hanging site never delays it; such a site shows up as
``gpuhub_site_up 0``. A second poller reads the gpuhub ledger for submission and GPU-time
counters.

=================  ==========================================================================
``readings``       what a poll learns (nodes and their GPUs, queued jobs), scheduler-neutral
``slurm``          ``sinfo``/``squeue`` commands and their pure parsers
``htcondor``       ``condor_status``/``condor_q`` commands and their pure parsers
``nvidia``         the ``nvidia-smi`` command of lab servers and its pure parser
``families``       every metric: name, type, help, labels
``samples``        readings -> label sets and values (GPU models, projects, job states)
``usage``          the ledger-derived counters
``poller``         the store scrapes read, the per-site poller threads with their watchdog
``collector``      the prometheus_client collector over the store
``server``         the HTTP server; the exposition is rendered in the background after changes
``app``            all of the above put together (used by ``gpuhub exporter``)
=================  ==========================================================================

Only :mod:`collector` and :mod:`server` import ``prometheus_client``; nothing here is imported
by ``gpuhub --help``.
"""
