"""Options and steps that let ``submit`` and ``plan`` choose the site (``--site auto``, ``--sites``)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from gpuhub.cli.output import note
from gpuhub.cli.params import BoundedFloat, JobRef

AUTO = "auto"


def _names(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise click.BadParameter("give site names separated by commas, e.g. jean-zay,ruche", ctx=ctx, param=param)
    return names


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    from gpuhub.broker.failover import MAX_AFTER, MIN_AFTER
    from gpuhub.units import parse_walltime

    try:
        seconds = parse_walltime(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    if not MIN_AFTER <= seconds <= MAX_AFTER:
        raise click.BadParameter(f"{value!r}: allowed from {MIN_AFTER} s to 30 days", ctx=ctx, param=param)
    return float(seconds)


def broker_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """How the site is chosen: candidates, preference, live state."""
    options = [
        click.option("--sites", callback=_names, metavar="A,B,...",
                     help="Choose among these sites only (implies --site auto)."),
        click.option("--prefer", callback=_names, metavar="A,B,...",
                     help="Preference order for the choice (replaces broker.yaml `prefer`)."),
        click.option("--offline", is_flag=True, help="Choose from the site files alone: no probe is run."),
        click.option("--refresh", is_flag=True, help="Probe the sites again even if a recent reading is cached."),
        click.option("--probe-timeout", type=BoundedFloat(0.1, 600),
                     help="Longest wait for one site's live state, in seconds (broker.yaml probe_timeout)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def failover_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--failover-after", callback=_duration, metavar="DURATION",
        help="With --site auto: if still pending after this long (30m, 2h), move to the next site of the plan.",
    )(func)


def broker_args(opts: dict[str, Any]) -> dict[str, Any]:
    return {
        "sites": opts.get("sites"),
        "offline": bool(opts.get("offline")),
        "refresh": bool(opts.get("refresh")),
        "timeout": opts.get("probe_timeout"),
        "prefer": opts.get("prefer"),
    }


def wants_broker(opts: dict[str, Any]) -> bool:
    return opts.get("site") == AUTO or bool(opts.get("sites"))


def choose_site(opts: dict[str, Any], build_request: Callable[[dict[str, Any]], Any]
                ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Options with the chosen site and partition filled in, and the plan's targets for failover."""
    from gpuhub.broker.api import broker_plan
    from gpuhub.cli.plan import plan_table

    request = build_request({**opts, "site_here": False})
    result = broker_plan(request, **broker_args(opts))
    note(plan_table(result))
    row = result.require()
    alloc = row.allocation
    note(f"gpuhub: chose {row.site}, partition {alloc.partition_key}: {row.reasons[0].removeprefix('chosen: ')}")
    targets, seen = [], set()
    for r in result.rows:
        if r.site not in seen:
            seen.add(r.site)
            targets.append({"site": r.site, "partition": r.allocation.partition_key,
                            "gpu_model": r.allocation.gpu_model})
    chosen = {**opts, "site": row.site, "partition": alloc.partition_key, "gpu_type": alloc.gpu_model,
              "gpu_mem": None}
    return chosen, targets


def start_failover(record: Any, targets: list[dict[str, Any]], after: float, ledger: Any) -> None:
    """Record the targets and start the detached watcher that moves the job when it is due."""
    ledger.start_failover(record.id, targets, after)
    if len(targets) < 2:
        note("gpuhub: --failover-after: no other site can run this job; it stays where it is")
        return
    import subprocess

    log = ledger.path.parent / f"failover-{record.id}.log"
    with open(log, "ab") as out:
        subprocess.Popen(
            [sys.executable, "-m", "gpuhub", "failover", str(record.id), "--watch"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, close_fds=True,
        )
    nxt = ", ".join(t["site"] for t in targets[1:])
    note(f"gpuhub: if still pending after {after:g} s, job {record.id} moves to the next of: {nxt} (log {log})")


def attempt_lines(records: list[Any], ledger: Any) -> list[str]:
    """One line per moved logical job among ``records``: its attempts in order."""
    firsts = []
    for rec in records:
        first = rec.attempt_of or rec.id
        if first not in firsts and (rec.attempt_of or ledger.failover(rec.id)):
            firsts.append(first)
    lines = []
    for first in firsts:
        attempts = ledger.attempts(first)
        if len(attempts) < 2:
            continue
        steps = " -> ".join(f"#{a.attempt} {a.ref} {a.state.value}" for a in attempts)
        failover = ledger.failover(first)
        tail = f" ({failover.done})" if failover and failover.done else ""
        lines.append(f"job {first} attempts: {steps}{tail}")
    return lines


def advance_due(ledger: Any) -> None:
    """Move any failover that is due (a lost watcher only delays a move)."""
    from gpuhub.broker.failover import advance

    if ledger.read_only:  # a move submits and cancels jobs: never without recording it
        return
    for job_id in ledger.active_failovers():
        try:
            advance(ledger, job_id)
        except Exception as exc:  # a site down now is retried next time
            note(f"gpuhub: failover of job {job_id}: {getattr(exc, 'message', None) or exc}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("job", type=JobRef())
@click.option("--watch", is_flag=True, help="Keep going until no more moves can happen.")
@click.option("--interval", type=BoundedFloat(0.5, 3600), default=10.0, show_default=True,
              help="Seconds between checks with --watch.")
def failover(job: str, watch: bool, interval: float) -> None:
    """Move a job submitted with --failover-after if it is due; say where it stands.

    \b
    Examples:
      gpuhub failover 42
      gpuhub failover last --watch
    """
    from gpuhub.broker import failover as fo
    from gpuhub.cli.jobs import _ledger
    from gpuhub.jobs import resolve

    ledger = _ledger("change")  # moving a job must be recorded; with no ledger there is no job to move
    record = resolve(job, ledger)
    job_id = record.attempt_of or record.id
    if ledger.failover(job_id) is None:
        raise click.UsageError(f"job {job_id} was not submitted with --failover-after")
    message = fo.watch(ledger, job_id, interval) if watch else fo.advance(ledger, job_id)
    click.echo(f"job {job_id}: {message}")
