"""Pieces every backend's job script shares."""

from __future__ import annotations

import re
import shlex

from gpuhub.plan import Allocation
from gpuhub.states import JobStatus, State

# Rendezvous port from the job id, as IDRIS's idr_torch does: two jobs sharing a node never clash.
MASTER_PORT_EXPR = "$((10000 + SLURM_JOB_ID % 20000))"
REQUEUE_SIGNAL = "USR2"  # not USR1: NCCL uses it
REQUEUE_LEAD = 120  # seconds before the time limit
_PYTHONS = re.compile(r"^(?:.*/)?python(?:3(?:\.\d+)?)?$")

_NAME_BAD = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_job_name(name: str) -> str:
    """A scheduler-safe job name; the exact name still reaches the job as $GPUHUB_JOB_NAME."""
    cleaned = _NAME_BAD.sub("_", name).strip("_.-")[:64]
    return cleaned or "gpuhub"


def log_paths(scheduler_id: str, job_name: str, log_dir: str, task: int | None = None) -> tuple[str, str]:
    """``LOG_DIR/NAME-ID.out`` (array task: ``NAME-ID_TASK.out``) and ``.err``: Slurm's ``%x-%j``
    (``%x-%A_%a``), which the OAR script reproduces."""
    stem = f"{log_dir}/{safe_job_name(job_name)}-{scheduler_id}" + (f"_{task}" if task is not None else "")
    return f"{stem}.out", f"{stem}.err"


def job_env(alloc: Allocation) -> dict[str, str]:
    """Environment of the job: gpuhub's facts, then site, partition and user values (user wins)."""
    req = alloc.request
    env = {
        "GPUHUB_SITE": alloc.site.name,
        "GPUHUB_JOB_NAME": req.name,
        "GPUHUB_NODES": str(alloc.nodes),
        "GPUHUB_GPUS_PER_NODE": str(alloc.gpus_per_node),
    }
    network = alloc.site.network
    if network.interface:
        env["NCCL_SOCKET_IFNAME"] = network.interface
        env["GLOO_SOCKET_IFNAME"] = network.interface
    env.update(network.env)
    env.update(alloc.site.env)
    env.update(alloc.partition.env)
    env.update(req.env)
    return env


def requeue_lead(alloc: Allocation) -> int:
    """Seconds before the time limit at which the job is told to checkpoint."""
    return min(REQUEUE_LEAD, max(alloc.walltime // 2, 10))


def user_command(alloc: Allocation) -> list[str]:
    req = alloc.request
    if req.script is not None:
        return ["bash", "-c", req.script, "gpuhub-script"]
    return list(req.command)


def torchrun_args(command: list[str]) -> list[str]:
    """What follows ``torchrun [options]``: a script, ``-m module``, or ``--no-python`` and a program."""
    if _PYTHONS.match(command[0]) and len(command) > 1:
        return command[1:]
    if command[0].endswith(".py"):
        return command
    return ["--no-python", *command]


def launch(alloc: Allocation, srun: bool) -> tuple[list[str], str]:
    """Shell lines that prepare the launch, and the command line itself (both trusted: built here,
    every user value quoted). ``srun``: the scheduler starts one torchrun per node with srun."""
    command = user_command(alloc)
    nproc = max(alloc.gpus_per_node, 1)
    if alloc.launcher == "none":
        return [], shlex.join(command)
    if alloc.launcher == "srun":
        ranks = (
            "export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS"
            ' LOCAL_WORLD_SIZE=$SLURM_NTASKS_PER_NODE; exec "$@"'
        )
        prefix = ["srun", "--kill-on-bad-exit=1", "bash", "-c", ranks, "gpuhub-task"]
        return _master_lines(), shlex.join(prefix + command)
    # torchrun
    if not srun:
        prefix = ["torchrun", "--standalone", f"--nproc-per-node={nproc}"]
        return [], shlex.join(prefix + torchrun_args(command))
    line = (
        "srun --ntasks-per-node=1 --kill-on-bad-exit=1 torchrun"
        ' --nnodes="$SLURM_JOB_NUM_NODES"'
        f" --nproc-per-node={nproc}"
        " --rdzv-backend=c10d"
        ' --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT"'
        ' --rdzv-id="$SLURM_JOB_ID" '
    )
    return _master_lines(), line + shlex.join(torchrun_args(command))


def _master_lines() -> list[str]:
    return [
        'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        f'export MASTER_PORT="{MASTER_PORT_EXPR}"',
    ]


def setup_lines(alloc: Allocation) -> list[str]:
    return [*alloc.site.setup, *alloc.partition.setup]


# An array whose tasks all ended is as bad as its worst task.
ARRAY_WORST = [State.FAILED, State.TIMEOUT, State.PREEMPTED, State.CANCELLED]


def combine_tasks(statuses: list[JobStatus], expected: int = 1) -> JobStatus:
    """One status for an array job from its tasks' statuses (a plain job has one)."""
    if len(statuses) == 1 and expected == 1:
        return statuses[0]
    counts: dict[State, int] = {}
    for st in statuses:
        counts[st.state] = counts.get(st.state, 0) + 1
    summary = "array: " + ", ".join(f"{n} {s.value}" for s, n in sorted(counts.items(), key=lambda kv: kv[0].value))
    if State.RUNNING in counts:
        state = State.RUNNING
    elif State.PENDING in counts:
        state = State.PENDING
    elif set(counts) == {State.COMPLETED}:
        state = State.COMPLETED
    else:
        state = next((s for s in ARRAY_WORST if s in counts), State.UNKNOWN)
    if len(statuses) < expected:
        # Tasks not seen yet (accounting lags behind the end of a task): not finished.
        summary += f", {expected - len(statuses)} not reported yet"
        if state.finished:
            state = State.RUNNING
    starts = [s.start for s in statuses if s.start]
    ends = [s.end for s in statuses if s.end]
    return JobStatus(state=state, reason=summary, start=min(starts) if starts else None,
                     end=max(ends) if ends and state.finished else None)
