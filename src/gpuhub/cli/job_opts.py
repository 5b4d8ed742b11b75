"""The job description options of ``render``, ``submit`` and ``plan``, and the request built
from them: ``plan`` loads these without the job commands."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from gpuhub.cli.output import complete_site
from gpuhub.cli.params import JobRef
from gpuhub.errors import RequestError, shown
from gpuhub.limits import MAX_CPUS, MAX_GPUS, MAX_GPUS_PER_NODE, MAX_NODES

DEFAULT_SITE = "local"
MAX_SCRIPT_BYTES = 4 << 20  # --script FILE: it is written into the job script

# request field -> the option a user typed, so errors speak the user's language
OPTION_OF = {
    "command": "COMMAND",
    "script": "--script",
    "gpus": "--gpus",
    "nodes": "--nodes",
    "gpus_per_node": "--gpus-per-node",
    "gpu_type": "--gpu-type",
    "gpu_mem": "--gpu-mem",
    "cpus_per_gpu": "--cpus-per-gpu",
    "mem": "--mem",
    "time": "--time",
    "env": "--env",
    "workdir": "--workdir",
    "array": "--array",
    "dependency": "--dependency",
    "project": "--project",
    "account": "--account",
    "partition": "--partition",
    "qos": "--qos",
    "directives": "--directive",
    "name": "--name",
    "launcher": "--launcher",
    "requeue": "--requeue",
    "wait_for_gpus": "--wait-for-gpus",
}


WAIT_FOREVER = "forever"


def _wait_for_gpus(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """``--wait-for-gpus`` alone: as long as it takes (0); with a TIMEOUT: that many seconds."""
    if value is None:
        return None
    if value == WAIT_FOREVER:
        return 0
    from gpuhub.units import parse_walltime

    try:
        seconds = parse_walltime(value)
    except (ValueError, TypeError) as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    if seconds > 30 * 86400:
        raise click.BadParameter(f"{value!r} is over the 30-day limit", ctx=ctx, param=param)
    return seconds


def _env_pair(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", ctx=ctx, param=param)
        env[key] = value
    return env


def job_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The job description options, shared by ``render`` and ``submit``."""
    options = [
        click.option("--site", "-s", envvar="GPUHUB_SITE", default=DEFAULT_SITE, show_default=True,
                     shell_complete=complete_site,
                     help="Site to run on (env GPUHUB_SITE); `auto`: the best site for the job (see `gpuhub plan`)."),
        click.option("--name", "-J", help="Job name."),
        click.option("--gpus", "-G", type=click.IntRange(0, MAX_GPUS),
                     help="Total GPUs (spread over nodes if needed)."),
        click.option("--nodes", "-N", type=click.IntRange(1, MAX_NODES), help="Number of nodes."),
        click.option("--gpus-per-node", type=click.IntRange(0, MAX_GPUS_PER_NODE), help="GPUs on each node."),
        click.option("--gpu-type", help="GPU model or class (a100, h100, v100..., any) or partition key."),
        click.option("--gpu-mem", help="Least memory of each GPU: 40G (partitions with smaller GPUs are skipped)."),
        click.option("--cpus-per-gpu", type=click.IntRange(1, MAX_CPUS),
                     help="CPU cores per GPU (site default otherwise)."),
        click.option("--mem", help="Memory per node: 64G, 500M."),
        click.option("--time", "-t", help="Walltime: 2h, 90m, 1d12h, HH:MM:SS, D-HH:MM:SS."),
        click.option("--env", "-e", multiple=True, callback=_env_pair, metavar="KEY=VALUE",
                     help="Environment variable for the job (repeatable)."),
        click.option("--workdir", "-C", help="Directory the command runs in, on the site (~/ allowed)."),
        click.option("--array", help="Job array indices: 0-49, 0-999%20 (at most 20 at once), 1,3,5."),
        click.option("--dependency", "-d", help="Run after other jobs: afterok:123, afterany:12:13."),
        click.option("--after", "after", multiple=True, metavar="JOB", type=JobRef(),
                     help="Start once JOB has completed successfully (gpuhub id, SITE:ID or last; repeatable)."),
        click.option("--project", "-P", help="Project; the site turns it into an account (jean-zay: abc -> abc@a100)."),
        click.option("--account", "-A", help="Scheduler account, verbatim (overrides --project)."),
        click.option("--partition", "-p", help="Partition key of the site file, or the scheduler's partition name."),
        click.option("--qos", "-q", help="QoS (chosen from the walltime when the site lists them)."),
        click.option("--launcher", "-L", type=click.Choice(["none", "torchrun", "srun"]),
                     help="How to start ranks: torchrun (one per node), srun (one task per GPU), none."),
        click.option("--requeue", is_flag=True, default=None,
                     help="Slurm: signal USR2 before the time limit so the job checkpoints, then requeue it."),
        click.option("--wait-for-gpus", "wait_for_gpus", is_flag=False, flag_value=WAIT_FOREVER, default=None,
                     metavar="[TIMEOUT]", callback=_wait_for_gpus,
                     help="Lab servers: when no GPUs are free, wait in the host's queue (up to TIMEOUT: 30m, "
                          "2h...) instead of failing."),
        click.option("--directive", "directives", multiple=True,
                     help="Extra scheduler option, e.g. --directive=--mail-type=END (repeatable)."),
        click.option("--script", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="Run this bash script file instead of a COMMAND."),
        click.argument("command", nargs=-1, type=click.UNPROCESSED),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _after(opts: dict[str, Any]) -> str | None:
    """``--after 42 --after jean-zay:123`` -> ``afterok:<id>:<id>``, every job on the submit site."""
    refs = opts.get("after") or ()
    if not refs:
        return opts.get("dependency")
    if opts.get("dependency"):
        raise click.UsageError("give --after or --dependency, not both")
    from gpuhub.cli.jobs import _ledger
    from gpuhub.jobs import resolve

    ledger = _ledger("read")
    ids = []
    for ref in refs:
        record = resolve(ref, ledger)
        if record.site != opts["site"]:
            raise click.BadParameter(f"job {ref} runs on {record.site}, not on {opts['site']}", param_hint="--after")
        if not record.scheduler_id:
            raise click.BadParameter(f"job {ref} was never accepted by its site", param_hint="--after")
        ids.append(record.scheduler_id)
    return "afterok:" + ":".join(ids)


def build_request(opts: dict[str, Any]) -> Any:
    """The validated request (a :class:`gpuhub.requestdata.Request`) from CLI options; validation
    errors name the option at fault."""
    from gpuhub.requestdata import plain, quick

    opts = {**opts, "dependency": _after(opts)}
    fields: dict[str, Any] = {k: v for k, v in opts.items() if k in OPTION_OF and v not in (None, (), {})}
    if "command" in fields:
        fields["command"] = list(fields["command"])
    if "directives" in fields:
        fields["directives"] = list(fields["directives"])
    script = fields.pop("script", None)
    if opts.get("site_here") and "workdir" not in fields:
        fields["workdir"] = os.getcwd()  # a site without a connection runs here: run where the user stands
    if script is not None:
        try:
            if not Path(script).is_file() or Path(script).stat().st_size > MAX_SCRIPT_BYTES:
                raise click.BadParameter(f"{script}: not a regular file of at most {MAX_SCRIPT_BYTES >> 20} MiB",
                                         param_hint="--script")
            fields["script"] = Path(script).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise click.BadParameter(f"{script}: cannot read as text: {exc}", param_hint="--script") from None
    if not fields.get("command") and script is None:
        raise click.UsageError("nothing to run: give a command after '--' (gpuhub render -- python train.py) "
                               "or --script FILE")
    request = quick(fields)  # values that plainly pass every check: no pydantic to load
    if request is not None:
        return request
    from pydantic import ValidationError

    from gpuhub.request import JobRequest

    try:
        return plain(JobRequest(**fields))
    except ValidationError as exc:
        raise RequestError(_request_error(exc)) from None


def _request_error(exc: Any) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        option = OPTION_OF.get(loc[0], loc[0]) if loc else "request"
        if option == "--env" and len(loc) > 1:
            option = f"--env {loc[1]}"
        msg = err["msg"].removeprefix("Value error, ")
        if not loc:  # a rule across fields: name them as options (gpus=0 -> --gpus 0)
            msg = re.sub(r"\b([a-z_]+)=", lambda m: f"{OPTION_OF[m[1]]} " if m[1] in OPTION_OF else m[0], msg)
        value = err.get("input")
        got = f" (got {shown(value)})" if loc and not isinstance(value, dict | list) and shown(value) not in msg else ""
        parts.append(f"{option}: {msg}{got}" if loc else msg)
    return "; ".join(parts)
