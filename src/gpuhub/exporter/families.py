"""Every metric the exporter serves: name, type, help and labels (docs/monitoring.md explains each).

Names follow the Prometheus conventions: ``gpuhub_`` prefix, base units (seconds), ``_total``
only on counters, ``_timestamp_seconds`` for Unix times. Labels are bounded: sites, partitions,
GPU models, projects (allocations), and a fixed set of job states. No job id is ever a label;
user names are only exported with ``--user-labels``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Family:
    name: str  # the name of the exposed series; counters end in _total
    kind: Literal["gauge", "counter"]
    help: str
    labels: tuple[str, ...]


_G, _C = "gauge", "counter"

FAMILIES: tuple[Family, ...] = (
    Family("gpuhub_build_info", _G, "Always 1; the version label is the running gpuhub.", ("version",)),
    # --- site health -------------------------------------------------------------------------
    Family(
        "gpuhub_site_up",
        _G,
        "1 if the last poll of the site's scheduler succeeded, 0 if it failed or did not answer in time.",
        ("site", "scheduler"),
    ),
    Family(
        "gpuhub_site_poll_duration_seconds",
        _G,
        "Duration of the last poll of the site (the timeout when it did not answer).",
        ("site",),
    ),
    Family(
        "gpuhub_site_last_success_timestamp_seconds",
        _G,
        "Unix time at which the last successful poll of the site ended; cache age is time() minus this.",
        ("site",),
    ),
    Family(
        "gpuhub_site_poll_errors_total",
        _C,
        "Polls of the site that failed or did not answer in time, since the exporter started.",
        ("site",),
    ),
    # --- capacity: every GPU counted once, whatever partitions its node is in ---------------------
    Family("gpuhub_gpus", _G, "GPUs configured on the site, by GPU model.", ("site", "gpu_model")),
    Family("gpuhub_gpus_allocated", _G, "GPUs allocated to jobs, by GPU model.", ("site", "gpu_model")),
    Family(
        "gpuhub_gpus_idle",
        _G,
        "GPUs free for a new job (not allocated, node up and not drained), by GPU model.",
        ("site", "gpu_model"),
    ),
    Family(
        "gpuhub_gpus_unavailable",
        _G,
        "GPUs neither allocated nor usable: on down, drained, failing or unreachable nodes, by GPU model.",
        ("site", "gpu_model"),
    ),
    # --- capacity by partition: a node in several partitions counts in each ------------------------
    Family(
        "gpuhub_partition_gpus",
        _G,
        "GPUs configured on the nodes of a Slurm partition (do not sum over partitions: they share nodes).",
        ("site", "partition", "gpu_model"),
    ),
    Family(
        "gpuhub_partition_gpus_allocated",
        _G,
        "GPUs allocated on the nodes of a Slurm partition (to jobs of any partition).",
        ("site", "partition", "gpu_model"),
    ),
    Family(
        "gpuhub_partition_gpus_idle",
        _G,
        "GPUs free for a new job on the nodes of a Slurm partition.",
        ("site", "partition", "gpu_model"),
    ),
    Family(
        "gpuhub_partition_gpus_unavailable",
        _G,
        "GPUs on down or drained nodes of a Slurm partition.",
        ("site", "partition", "gpu_model"),
    ),
    # --- capacity by host: lab servers only (a pool's few hosts, named in the site file) ----------
    *(
        Family(f"gpuhub_host_gpus{suffix}", _G, f"GPUs of a lab server{what}, by host and GPU model.",
               ("site", "host", "gpu_model"))
        for suffix, what in (
            ("", ""),
            ("_allocated", " held by gpuhub jobs, used outside gpuhub or reserved by the site"),
            ("_idle", " free for a new job"),
            ("_unavailable", " that nvidia-smi cannot read"),
        )
    ),
    # --- queue ----------------------------------------------------------------------------------
    Family(
        "gpuhub_jobs",
        _G,
        "Jobs (array tasks counted one by one) in the site's queue, by state.",
        ("site", "state"),
    ),
    Family(
        "gpuhub_jobs_gpus_requested",
        _G,
        "GPUs asked by queued jobs (pending, held) or allocated to them (running...), by partition, "
        "GPU model (any = no model asked) and state.",
        ("site", "partition", "gpu_model", "state"),
    ),
    Family(
        "gpuhub_project_gpus_allocated",
        _G,
        "GPUs allocated to running jobs, by project (the scheduler account without its @suffix).",
        ("site", "project", "gpu_model"),
    ),
    Family("gpuhub_project_jobs", _G, "Jobs in the queue, by project and state.", ("site", "project", "state")),
    Family(
        "gpuhub_user_gpus_allocated",
        _G,
        "GPUs allocated to running jobs, by user (only with --user-labels).",
        ("site", "user", "gpu_model"),
    ),
    Family(
        "gpuhub_user_jobs",
        _G,
        "Jobs in the queue, by user and state (only with --user-labels).",
        ("site", "user", "state"),
    ),
    # --- from the gpuhub ledger -------------------------------------------------------------------
    Family("gpuhub_ledger_up", _G, "1 if the last read of the gpuhub ledger succeeded.", ()),
    Family(
        "gpuhub_gpu_seconds_total",
        _C,
        "GPU-seconds (GPUs x run time) of finished jobs submitted through gpuhub, from its ledger.",
        ("site", "project", "gpu_model"),
    ),
    Family(
        "gpuhub_submissions_total",
        _C,
        "Jobs submitted through gpuhub, from its ledger: accepted by the scheduler, or failed to submit.",
        ("site", "outcome"),
    ),
)

BY_NAME = {family.name: family for family in FAMILIES}
