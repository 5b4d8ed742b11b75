"""What each scheduler can do, readable without importing its backend.

Planning a job (``gpuhub plan`` over many sites, ``render``) needs only these flags from the
backends; reading them here keeps the backends' modules (parsers, scripts, states) unloaded.
Each backend class takes its own entry, so a scheduler's capabilities are written once.
"""

from __future__ import annotations

from gpuhub.record import Record


class Capabilities(Record):
    """What a scheduler can do; plan, render and the CLI read these, never the scheduler's name."""

    multi_node: bool = False  # one job may span several nodes
    arrays: bool = False  # --array
    dependencies: bool = False  # --after / --dependency
    requeue: bool = False  # --requeue (signal before the time limit, then requeue)
    launchers: tuple[str, ...] = ("none", "torchrun")  # values of --launcher it can start
    connection: str = "required"  # "required", "optional" or "none": the site's `connection` block
    usage: bool = True  # collect_usage brings GPU hours into the accounting store
    accounts: bool = True  # --account reaches the scheduler (--project is gpuhub's own: any site)
    qos: bool = True  # --qos reaches the scheduler
    directives: bool = True  # --directive lines reach the scheduler
    # Who stops a job at its walltime: "scheduler" (sbatch --time...) or "gpuhub" (no scheduler:
    # gpuhub's own watchdog, only when a time was asked for or set by the site).
    time_limit: str = "scheduler"
    gpu_locks: bool = False  # GPUs reserved by gpuhub itself: the site's `lab:` block, --wait-for-gpus


# Seconds between TERM and KILL when gpuhub stops a job at its time limit (time_limit "gpuhub"):
# planning reads it too, without loading the shell scripts that use it.
KILL_AFTER = 30

# site `scheduler:` value (the keys of gpuhub.backends.BACKENDS) -> what its backend can do
CAPABILITIES: dict[str, Capabilities] = {
    "slurm": Capabilities(multi_node=True, arrays=True, dependencies=True, requeue=True,
                          launchers=("none", "torchrun", "srun")),
    "htcondor": Capabilities(arrays=True, connection="optional", qos=False),
    # OAR has queues (-q), no QoS
    "oar": Capabilities(multi_node=True, arrays=True, dependencies=True, requeue=True,
                        launchers=("none", "torchrun"), qos=False),
    "ssh": Capabilities(connection="required", gpu_locks=True, time_limit="gpuhub", accounts=False,
                        qos=False, directives=False),
    "local": Capabilities(connection="none", time_limit="gpuhub", accounts=False, qos=False, directives=False),
}
