"""Job commands. ``render`` is the submit path stopped before anything is sent."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import click

from gpuhub.cli.broker_opts import (
    advance_due,
    attempt_lines,
    broker_options,
    choose_site,
    failover_option,
    start_failover,
    wants_broker,
)
from gpuhub.cli.job_opts import build_request, job_options
from gpuhub.cli.output import complete_site, emit_json, note
from gpuhub.cli.params import BoundedFloat, JobRef
from gpuhub.limits import MAX_INTERVAL, MAX_LIST_LIMIT


class JobCommand(click.Command):
    """``render``/``submit``: an unknown option after the program's name belongs to the program."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        given = list(args)  # the parser consumes its list
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            if "--" not in given:
                exc.message = f"{exc.message.rstrip('.')}; {self._dashdash_hint(ctx, given, exc.option_name)}"
            raise

    def _dashdash_hint(self, ctx: click.Context, args: list[str], bad: str) -> str:
        """Where ``--`` goes: before the first word that is neither an option nor an option's value."""
        takes_value = {o for p in self.params if isinstance(p, click.Option) and not p.is_flag for o in p.opts}
        end = args.index(bad) if bad in args else len(args)
        for i, word in enumerate(args[:end]):
            if not word.startswith("-") and not (i and args[i - 1] in takes_value):
                fixed = ["gpuhub", ctx.info_name or "submit", *args[:i], "--", *args[i:]]
                return f"if it is an option of the program to run, put the program after '--': {shlex.join(fixed)}"
        return f"options of the program to run go after '--': gpuhub {ctx.info_name} [OPTIONS] -- PROGRAM [ARGS]"



def rendered(opts: dict[str, Any]) -> Any:
    """Site + request -> RenderedJob, through :func:`gpuhub.prepare.prepare`, the path submit takes.

    It carries a fresh token, as a submission does, so the files shown are those submit sends
    (only the token's value differs from one run to the next). With ``--site auto`` the site is
    chosen first, as submit would."""
    from gpuhub.cli.broker_opts import choose_site, wants_broker
    from gpuhub.prepare import new_token, prepare
    from gpuhub.registry import load_site

    if wants_broker(opts):
        opts, _ = choose_site(opts, build_request)
    site = load_site(opts["site"])
    request = build_request({**opts, "site_here": site.connection is None})
    return prepare(site, request, new_token())


@click.command(cls=JobCommand, context_settings={"help_option_names": ["-h", "--help"]})
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
    job = rendered(opts)
    if output_dir:
        _write_files(output_dir, job.files)
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
         f"{alloc.summary()['time_limit'] or 'no time limit'}")
    for reason in alloc.reasons:
        note(f"gpuhub:   {reason}")
    used_unverified = [p for p in site.unverified if p.split(".")[:2] == ["partitions", alloc.partition_key]
                       or not p.startswith("partitions.")]
    if used_unverified:
        note(f"gpuhub: unverified site values in play: {', '.join(used_unverified)}")
    note(f"gpuhub: submit command ({where}): {job.submit_command()}")


def _write_files(output_dir: Path, files: dict[str, str]) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            target = output_dir / name
            tmp = target.with_suffix(target.suffix + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, target)  # never leave a half-written script behind
    except OSError as exc:
        raise click.BadParameter(f"cannot write into {output_dir}: {exc.strerror or exc}",
                                 param_hint="--output-dir") from None


# --- commands that send and follow jobs --------------------------------------------------------


def _ledger(mode: str = "write") -> Any:
    """The ledger: ``write`` for commands that record jobs, ``change`` for those that change recorded
    jobs (with no ledger yet there is none to change, and none is created), ``read`` for those that
    only show them, ``auto`` for status (on a read-only ledger it polls and shows, and saves nothing)."""
    from gpuhub.ledger import Ledger, ledger_path

    if mode == "change":
        mode = "write" if ledger_path().exists() else "read"
    ledger = Ledger(mode=mode)
    if ledger.read_only and mode == "auto":
        note(f"gpuhub: ledger {ledger.path} is read-only: states are shown, not saved, and no failover moves")
    return ledger


def _age(ts: float | None) -> str:
    import time

    if not ts:
        return "-"
    secs = int(time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{secs}s"


def _staged(opts: dict[str, Any], local_dir: Path, send: bool, follow_symlinks: bool = False) -> dict[str, Any]:
    """Upload ``local_dir`` to the site (a dry run only checks it); the job runs there by default."""
    from gpuhub.registry import load_site
    from gpuhub.staging import check_local, remote_dir_for, stage

    site = load_site(opts["site"])
    if site.connection is None:  # the job runs on this machine: nothing to upload
        remote = str(local_dir.resolve())
    elif send:
        from gpuhub.transport import transport_for

        result = stage(transport_for(site), local_dir, follow_symlinks=follow_symlinks)
        remote = f"~/{result.remote_dir}"
        note(f"gpuhub: staged {local_dir} to {site.name}:{remote}: {result.sent} file(s) sent "
             f"({result.bytes_sent} bytes), {result.skipped} unchanged, {result.seconds:.2f} s")
    else:
        check_local(local_dir, follow_symlinks)
        remote = f"~/{remote_dir_for(local_dir)}"
    return {**opts, "workdir": opts.get("workdir") or remote}


def _job_rows(records: list[Any]) -> str:
    from gpuhub.cli.output import table

    rows = [
        (r.id, r.site, r.scheduler_id or "-", r.name[:24], r.state.value, r.plan.get("gpus"),
         _age(r.submitted_at), (r.reason or r.nodes or "")[:50])
        for r in records
    ]
    return table(["id", "site", "sched id", "name", "state", "gpus", "age", "reason/nodes"], rows)


@click.command(cls=JobCommand, context_settings={"help_option_names": ["-h", "--help"]})
@job_options
@click.option("--dry-run", is_flag=True, help="Print what would be sent (same as `gpuhub render`) and stop.")
@click.option("--wait", "-w", is_flag=True,
              help="Wait for the job to end; exit with its exit code (0 only if it completed) and show the end "
                   "of its error log if it failed.")
@click.option("--json", "as_json", is_flag=True, help="Print the recorded job as JSON.")
@click.option("--stage", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Upload this local directory first (changed files only) and run the job in it.")
@click.option("--follow-symlinks", is_flag=True,
              help="With --stage: send what symbolic links outside the directory point to (refused otherwise).")
@broker_options
@failover_option
def submit(dry_run: bool, wait: bool, as_json: bool, stage: Path | None, follow_symlinks: bool, **opts: Any) -> None:
    """Submit a job to a site and record it in the ledger.

    \b
    Examples:
      gpuhub submit -- python3 examples/hello_gpu.py
      gpuhub submit --site jean-zay -P abc --gpu-type a100 --gpus 8 -t 10h -- python train.py
      gpuhub submit --site ruche --gpus 1 --array 0-49%10 -- python sweep.py
      gpuhub submit --site local --wait -- python3 -c 'print(42)'
      gpuhub submit --site ruche --stage . --gpus 1 -- python train.py
      gpuhub submit --site auto --gpu-type any --gpus 2 -t 4h --failover-after 30m -- python train.py
    """
    after = opts.pop("failover_after", None)
    targets: list[dict[str, Any]] = []
    if after is not None and not wants_broker(opts):
        raise click.UsageError("--failover-after needs --site auto or --sites A,B,...: it moves along a plan")
    if wants_broker(opts) and not dry_run:
        opts, targets = choose_site(opts, build_request)
    if stage is not None:
        opts = _staged(opts, stage, send=not dry_run, follow_symlinks=follow_symlinks)
    if dry_run:
        ctx = click.get_current_context()
        ctx.invoke(render, as_json=as_json, output_dir=None, **opts)
        return
    from gpuhub import jobs as jobs_api
    from gpuhub.registry import load_site

    site = load_site(opts["site"])
    request = build_request({**opts, "site_here": site.connection is None})
    ledger = _ledger()
    job = jobs_api.submit(request, site=site, ledger=ledger)
    rec = job.record
    if after is not None:
        start_failover(rec, targets, after, ledger)
    if not as_json:
        click.echo(f"submitted job {rec.id} ({rec.ref}) to {rec.site}")
        if not wait:
            note(f"gpuhub: follow it with `gpuhub status {rec.id}` and `gpuhub logs {rec.id} -f`")
    for line in job.notes:
        note(f"gpuhub: {line}")
    if wait:
        state = job.wait()
        rec = job.record
        if not as_json:
            click.echo(f"job {rec.id} {state.value}{_exit_suffix(rec)}")
            if state.value != "completed":
                _show_stderr_tail(rec, jobs_api)
    if as_json:
        emit_json(rec.to_dict())
    if wait and rec.state.value != "completed":
        # The job's own exit status, as if it had run here (1 when the site gives none).
        code = rec.exit_status
        raise SystemExit(code if code and 0 < code < 256 else 1)


def _exit_suffix(rec: Any) -> str:
    code = rec.exit_status
    return "" if code is None else f" (exit {code})"


def _show_stderr_tail(rec: Any, jobs_api: Any, lines: int = 10) -> None:
    """The last lines of a failed job's error log, so the cause shows without another command."""
    try:
        text = jobs_api.read_log(rec, stderr=True)
    except click.ClickException as exc:
        note(f"gpuhub: no error log to show ({exc.message})")
        return
    tail = text.rstrip("\n").splitlines()[-lines:]
    if not tail:
        note(f"gpuhub: the error log of job {rec.id} is empty; `gpuhub logs {rec.id}` shows its output")
        return
    note(f"gpuhub: last lines of its error log ({rec.log_err}):")
    for line in tail:
        note(f"  {line}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("refs", nargs=-1, metavar="[JOB]...", type=JobRef())
@click.option("--watch", "-W", is_flag=True, help="Refresh until every job has ended (Ctrl-C to stop).")
@click.option("--interval", default=5.0, show_default=True, type=BoundedFloat(0.1, MAX_INTERVAL),
              help="Seconds between refreshes with --watch.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(refs: tuple[str, ...], watch: bool, interval: float, as_json: bool) -> None:
    """Ask the sites for the state of jobs (one scheduler call per site).

    JOB is a gpuhub id (42), SITE:SCHEDULER_ID (jean-zay:123456) or `last`. With no JOB: every
    unfinished job of the ledger.

    \b
    Examples:
      gpuhub status
      gpuhub status 42 43 --json
      gpuhub status --watch
    """
    import time

    from gpuhub import jobs as jobs_api

    ledger = _ledger("auto")
    advance_due(ledger)
    records = [jobs_api.resolve(r, ledger) for r in refs] if refs else ledger.jobs(active_only=True)
    while True:
        records, errors = jobs_api.refresh(records, ledger)
        for message in errors:
            note(f"gpuhub: could not poll {message}")
        if as_json:
            emit_json([r.to_dict() for r in records])
        elif records:
            click.echo(_job_rows(records))
            for line in attempt_lines(records, ledger):
                click.echo(line)
        else:
            click.echo("no unfinished jobs (`gpuhub jobs` lists all)")
        if not watch or all(r.state.finished for r in records):
            break
        time.sleep(interval)
        advance_due(ledger)
        records = list({a.id: a for a in (ledger.attempts(r.attempt_of or r.id)[-1] for r in records)}.values())
        click.echo()
    if errors and not records:
        raise SystemExit(1)


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--site", "-s", shell_complete=complete_site, help="Only jobs of this site.")
@click.option("--active", is_flag=True, help="Only unfinished jobs.")
@click.option("--limit", "-n", default=50, show_default=True, type=click.IntRange(0, MAX_LIST_LIMIT),
              help="Most recent N jobs (0 = all).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (docs/json-output.md).")
@click.pass_context
def jobs(ctx: click.Context, site: str | None, active: bool, limit: int, as_json: bool) -> None:
    """List recorded jobs, newest first, as last seen (no site is contacted).

    \b
    Examples:
      gpuhub jobs
      gpuhub jobs --site jean-zay --active
      gpuhub jobs --json -n 0 | jq '.[] | select(.state=="failed") | .id'
      gpuhub jobs forget 12 13
      gpuhub jobs prune --older-than 30d --dry-run
    """
    if ctx.invoked_subcommand:
        return
    records = _ledger("read").jobs(site=site, active_only=active, limit=limit or None)
    if as_json:
        emit_json([r.to_dict() for r in records])
    elif records:
        click.echo(_job_rows(records))
    else:
        click.echo("no jobs recorded yet")


def _removable(record: Any, force: bool) -> bool:
    from gpuhub.ledger import is_ghost

    return force or record.state.finished or is_ghost(record)


def _report_removed(records: list[Any], verb: str, dry_run: bool, as_json: bool) -> None:
    if as_json:
        emit_json([r.to_dict() for r in records])
        return
    for r in records:
        click.echo(f"{'would remove' if dry_run else 'removed'} job {r.id} ({r.ref}, {r.state.value}, {r.name})")
    summary = f"{len(records)} job(s) would be {verb} (dry run: nothing changed)" if dry_run else \
        f"{len(records)} job(s) {verb}"
    click.echo(summary)


@jobs.command("forget")
@click.argument("refs", nargs=-1, required=True, metavar="JOB...", type=JobRef())
@click.option("--force", is_flag=True, help="Also jobs that may still be running (they are not cancelled).")
@click.option("--dry-run", is_flag=True, help="Show what would be removed and change nothing.")
@click.option("--json", "as_json", is_flag=True, help="The removed records as JSON.")
def forget(refs: tuple[str, ...], force: bool, dry_run: bool, as_json: bool) -> None:
    """Remove jobs from the ledger (nothing is sent to any site).

    Finished jobs and ghosts (unknown to their site, or whose submission never got
    through) go at once; a job that may still run needs --force, and is then no longer
    followed by gpuhub: cancel it first if it should stop.

    \b
    Examples:
      gpuhub jobs forget 12
      gpuhub jobs forget 12 13 jean-zay:123456 --dry-run
      gpuhub jobs forget last --force
    """
    from gpuhub import jobs as jobs_api

    ledger = _ledger("change")
    records = list({r.id: r for r in (jobs_api.resolve(ref, ledger) for ref in refs)}.values())
    active = [r for r in records if not _removable(r, force)]
    if active:
        listed = ", ".join(f"{r.id} ({r.state.value})" for r in active)
        raise click.UsageError(f"job(s) {listed} may still be running on their site; `gpuhub cancel` them, "
                               "check with `gpuhub status`, or give --force to forget them anyway")
    removed = records if dry_run else ledger.forget(r.id for r in records)
    _report_removed(removed, "forgotten", dry_run, as_json)


def _age_option(ctx: click.Context, param: click.Parameter, value: str) -> float:
    from gpuhub.units import parse_walltime

    if value.strip() == "0":
        return 0.0
    try:
        seconds = parse_walltime(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc).replace("walltime", "age"), ctx=ctx, param=param) from None
    if seconds > 100 * 365 * 86400:
        raise click.BadParameter(f"{value!r} is over 100 years", ctx=ctx, param=param)
    return float(seconds)


@jobs.command("prune")
@click.option("--older-than", default="30d", show_default=True, callback=_age_option, metavar="AGE",
              help="Only jobs last seen at least this long ago: 12h, 30d, 1d12h; 0 = any age.")
@click.option("--site", "-s", shell_complete=complete_site, help="Only jobs of this site.")
@click.option("--force", is_flag=True, help="Also jobs that may still be running (they are not cancelled).")
@click.option("--dry-run", is_flag=True, help="Show what would be removed and change nothing.")
@click.option("--json", "as_json", is_flag=True, help="The removed records as JSON.")
def prune(older_than: float, site: str | None, force: bool, dry_run: bool, as_json: bool) -> None:
    """Remove old finished and ghost jobs from the ledger (nothing is sent to any site).

    A job's age counts from when gpuhub last saw it change. Jobs that may still run
    stay unless --force. GPU hours of the local site are read from the ledger: run
    `gpuhub usage collect` first if they matter.

    \b
    Examples:
      gpuhub jobs prune --dry-run
      gpuhub jobs prune --older-than 0 --site local
      gpuhub jobs prune --older-than 7d --json
    """
    import time

    ledger = _ledger("change")
    cutoff = time.time() - older_than
    records = [r for r in ledger.jobs(site=site) if r.updated_at <= cutoff and _removable(r, force)]
    removed = records if dry_run else ledger.forget(r.id for r in records)
    _report_removed(removed, "pruned", dry_run, as_json)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("ref", metavar="JOB", type=JobRef())
@click.option("--follow", "-f", is_flag=True,
              help="Keep printing as the log grows, until the job has ended (Ctrl-C to stop sooner).")
@click.option("--stderr", "-e", "use_stderr", is_flag=True, help="The error log instead of the output log.")
def logs(ref: str, follow: bool, use_stderr: bool) -> None:
    """Print a job's output (or error) log.

    \b
    Examples:
      gpuhub logs 42
      gpuhub logs jean-zay:123456 --stderr
      gpuhub logs 42 -f
    """
    from gpuhub import jobs as jobs_api

    ledger = _ledger("auto")
    record = jobs_api.resolve(ref, ledger)
    if not follow:
        click.echo(jobs_api.read_log(record, use_stderr), nl=False)
        return
    lines = jobs_api.follow_log(record, use_stderr, ledger)
    try:
        for line in lines:
            click.echo(line, nl=False)
    except KeyboardInterrupt:
        pass
    finally:
        lines.close()  # type: ignore[attr-defined]
    final = ledger.get(record.id)
    if final.state.finished:
        note(f"gpuhub: job {final.id} {final.state.value}" + _exit_suffix(final))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("refs", nargs=-1, required=True, metavar="JOB...", type=JobRef())
def cancel(refs: tuple[str, ...]) -> None:
    """Cancel jobs (one scheduler call per site).

    \b
    Examples:
      gpuhub cancel 42
      gpuhub cancel 42 43 jean-zay:123456
    """
    from gpuhub import jobs as jobs_api

    ledger = _ledger("change")
    records = [jobs_api.resolve(r, ledger) for r in refs]
    jobs_api.cancel(records, ledger)
    for rec in records:
        fresh = ledger.get(rec.id)
        click.echo(f"job {fresh.id} ({fresh.ref}): {fresh.state.value}")
