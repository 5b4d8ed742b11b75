"""Job commands. ``render`` is the submit path stopped before anything is sent."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from gpuhub.cli.output import emit_json, note
from gpuhub.errors import RequestError

DEFAULT_SITE = "local"

# request field -> the option a user typed, so errors speak the user's language
OPTION_OF = {
    "command": "COMMAND",
    "script": "--script",
    "gpus": "--gpus",
    "nodes": "--nodes",
    "gpus_per_node": "--gpus-per-node",
    "gpu_type": "--gpu-type",
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
}


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
                     help="Site to run on (env GPUHUB_SITE)."),
        click.option("--name", "-J", help="Job name."),
        click.option("--gpus", "-G", type=click.IntRange(min=0), help="Total GPUs (spread over nodes if needed)."),
        click.option("--nodes", "-N", type=click.IntRange(min=1), help="Number of nodes."),
        click.option("--gpus-per-node", type=click.IntRange(min=0), help="GPUs on each node."),
        click.option("--gpu-type", help="GPU model (a100, h100, v100...) or partition key."),
        click.option("--cpus-per-gpu", type=click.IntRange(min=1), help="CPU cores per GPU (site default otherwise)."),
        click.option("--mem", help="Memory per node: 64G, 500M."),
        click.option("--time", "-t", help="Walltime: 2h, 90m, 1d12h, HH:MM:SS, D-HH:MM:SS."),
        click.option("--env", "-e", multiple=True, callback=_env_pair, metavar="KEY=VALUE",
                     help="Environment variable for the job (repeatable)."),
        click.option("--workdir", "-C", help="Directory the command runs in, on the site (~/ allowed)."),
        click.option("--array", help="Job array indices: 0-49, 0-999%20 (at most 20 at once), 1,3,5."),
        click.option("--dependency", "-d", help="Run after other jobs: afterok:123, afterany:12:13."),
        click.option("--project", "-P", help="Project; the site turns it into an account (jean-zay: abc -> abc@a100)."),
        click.option("--account", "-A", help="Scheduler account, verbatim (overrides --project)."),
        click.option("--partition", "-p", help="Partition key of the site file, or the scheduler's partition name."),
        click.option("--qos", "-q", help="QoS (chosen from the walltime when the site lists them)."),
        click.option("--directive", "directives", multiple=True,
                     help="Extra scheduler option, e.g. --directive=--mail-type=END (repeatable)."),
        click.option("--script", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="Run this bash script file instead of a COMMAND."),
        click.argument("command", nargs=-1, type=click.UNPROCESSED),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def build_request(opts: dict[str, Any]) -> Any:
    """JobRequest from CLI options; validation errors name the option at fault."""
    from gpuhub.request import JobRequest

    fields: dict[str, Any] = {k: v for k, v in opts.items() if k in OPTION_OF and v not in (None, (), {})}
    if "command" in fields:
        fields["command"] = list(fields["command"])
    if "directives" in fields:
        fields["directives"] = list(fields["directives"])
    script = fields.pop("script", None)
    if script is not None:
        try:
            fields["script"] = Path(script).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise click.BadParameter(f"{script}: cannot read as text: {exc}", param_hint="--script") from None
    if not fields.get("command") and script is None:
        raise click.UsageError("nothing to run: give a command after '--' (gpuhub render -- python train.py) "
                               "or --script FILE")
    try:
        return JobRequest(**fields)
    except ValidationError as exc:
        raise RequestError(_request_error(exc)) from None


def _request_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        option = OPTION_OF.get(loc[0], loc[0]) if loc else "request"
        if option == "--env" and len(loc) > 1:
            option = f"--env {loc[1]}"
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        shown = f" (got {value!r})" if loc and not isinstance(value, dict | list) and repr(value) not in msg else ""
        parts.append(f"{option}: {msg}{shown}" if loc else msg)
    return "; ".join(parts)


def prepare(opts: dict[str, Any], token: str | None = None) -> Any:
    """Site + request -> RenderedJob: the one path shared by render and submit."""
    from gpuhub.plan import plan
    from gpuhub.registry import load_site
    from gpuhub.render import render as render_job

    site = load_site(opts["site"])
    request = build_request(opts)
    return render_job(plan(site, request), token=token)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@job_options
@click.option("--json", "as_json", is_flag=True, help="Print plan, files and submit command as JSON.")
@click.option("--output-dir", "-o", type=click.Path(file_okay=False, path_type=Path),
              help="Also write the files into this directory.")
def render(as_json: bool, output_dir: Path | None, **opts: Any) -> None:
    """Print the exact job script and submit command for a site; nothing is sent.

    The script goes to stdout (so `> job.sbatch` works); the plan and the submit
    command go to stderr. This is `gpuhub submit` stopped before sending.

    \b
    Examples:
      gpuhub render -- python train.py --epochs 3
      gpuhub render --site jean-zay --project abc --gpu-type a100 --gpus 16 --time 10h -- python train.py
      gpuhub render --site ruche --gpus 2 --array 0-9%2 -e SEED=1 --json -- python sweep.py
    """
    job = prepare(opts)
    if output_dir:
        output_dir.mkdir(parents=True, exist_ok=True)
        for name, text in job.files.items():
            target = output_dir / name
            tmp = target.with_suffix(target.suffix + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, target)  # never leave a half-written script behind
    if as_json:
        emit_json(job.to_dict())
        return
    many = len(job.files) > 1
    for name, text in job.files.items():
        if many:
            click.echo(f"# ==> {name} <==")
        click.echo(text, nl=not text.endswith("\n"))
    alloc = job.allocation
    site = alloc.site
    where = f"over SSH to {site.connection.host}" if site.connection else "on this machine"
    note(f"gpuhub: site {site.name} ({site.scheduler}), {alloc.gpus} GPU(s) on {alloc.nodes} node(s), "
         f"{alloc.summary()['walltime']}")
    for reason in alloc.reasons:
        note(f"gpuhub:   {reason}")
    used_unverified = [p for p in site.unverified if p.split(".")[:2] == ["partitions", alloc.partition_key]
                       or not p.startswith("partitions.")]
    if used_unverified:
        note(f"gpuhub: unverified site values in play: {', '.join(used_unverified)}")
    note(f"gpuhub: submit command ({where}): {job.submit_command()}")
