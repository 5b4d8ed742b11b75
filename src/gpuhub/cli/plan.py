"""``gpuhub plan``: which site should run this job, and why."""

from __future__ import annotations

from typing import Any

import click

from gpuhub.cli.broker_opts import broker_args, broker_options
from gpuhub.cli.job_opts import build_request, job_options
from gpuhub.cli.output import emit_json, table


def plan_table(result: Any) -> str:
    from gpuhub.broker.rank import when

    rows = []
    for row in result.rows:
        a, live = row.allocation, row.live
        rows.append([
            "*" if row.chosen else "",
            row.site,
            a.partition_key,
            f"{a.gpus} {a.gpu_model or 'GPU'}" + (f" ({a.nodes} nodes)" if a.nodes > 1 else ""),
            f"{live.free}/{live.total}" if live else "-",
            str(live.queued) if live else "-",
            ("now" if live.fits_now else when(live.start)) if live else "-",
            f"{row.cost:.1f}",
            "; ".join(row.reasons),
        ])
    out = [table(["", "site", "partition", "gpus", "free", "queued", "start", "gpu-h", "reason"], rows)] if rows else []
    if result.excluded:
        out.append("excluded:")
        out += [f"  {site}: {why}" for site, why in result.excluded.items()]
    return "\n".join(out)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@job_options
@broker_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable plan: chosen row, candidates, exclusions.")
def plan(as_json: bool, **opts: Any) -> None:
    """Rank the sites that can run a job, mark the one `submit --site auto` would choose, say why.

    Every configured site (or those of --sites) is checked for the GPU kind asked (--gpu-type,
    a class such as a100 or any; --gpu-mem), GPU count and nodes, walltime, account, and
    reachability; feasible partitions are ranked on GPUs free now, the scheduler's expected
    start, your preference order (broker.yaml `prefer`, or --prefer), queued demand and
    normalised GPU hours. Live state is cached for a few seconds between commands.

    \b
    Examples:
      gpuhub plan --gpus 4 --gpu-type any -t 2h -- python train.py
      gpuhub plan --sites jean-zay,ruche -P abc --gpu-mem 40G --gpus 8 -t 10h -- python train.py
      gpuhub plan --offline --gpu-type v100 --gpus 2 -- python train.py
      gpuhub plan --json --gpus 1 -- true | jq .chosen.site
    """
    from gpuhub.broker.api import broker_plan

    ctx = click.get_current_context()
    if not opts.get("sites") and opts.get("site") not in (None, "auto") and \
            ctx.get_parameter_source("site") == click.core.ParameterSource.COMMANDLINE:
        opts["sites"] = [opts["site"]]
    request = build_request({**opts, "command": opts.get("command") or ("true",), "site_here": False})
    result = broker_plan(request, **broker_args(opts))
    if as_json:
        emit_json(result.to_json())
        if not result.rows:
            raise SystemExit(2)
    elif result.rows:
        click.echo(plan_table(result))
    result.require()
