"""``gpuhub ledger``: check the ledger file, and rebuild it when it is damaged."""

from __future__ import annotations

from pathlib import Path

import click

from gpuhub.cli.output import emit_json
from gpuhub.errors import GpuhubError

ledger_option = click.option(
    "--ledger", "path", type=click.Path(path_type=Path), metavar="FILE",
    help="Ledger file [default: $GPUHUB_LEDGER or the user's ledger].")


class LedgerDamaged(GpuhubError):
    exit_code = 2


@click.group()
def ledger() -> None:
    """Check the ledger (where submitted jobs are recorded) and repair it.

    \b
    Examples:
      gpuhub ledger check
      gpuhub ledger repair
      gpuhub ledger check --ledger /shared/team/ledger.sqlite --json
    """


def _path(path: Path | None) -> Path:
    from gpuhub.ledger import ledger_path

    return (path or ledger_path()).expanduser()


@ledger.command("check")
@ledger_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def check_cmd(path: Path | None, as_json: bool) -> None:
    """Look for damage without changing anything: SQLite integrity, schema, every row readable.

    Exit code 0 when the ledger is sound, 2 when it needs `gpuhub ledger repair`.
    """
    from gpuhub.ledger_repair import MAX_LISTED, check

    target = _path(path)
    report = check(target)
    if as_json:
        emit_json(report.to_dict())
    elif report.ok:
        click.echo(f"ledger {target}: ok, {report.rows} job(s)" if target.exists() else
                   f"ledger {target}: none yet (created by the first submit)")
    else:
        for problem in report.problems[:MAX_LISTED]:
            click.echo(f"{target}: {problem}")
        if len(report.problems) > MAX_LISTED:
            click.echo(f"... and {len(report.problems) - MAX_LISTED} more")
    if not report.ok:
        raise LedgerDamaged(f"ledger {target} has {len(report.problems)} problem(s); run `gpuhub ledger repair` "
                            "(it keeps a backup of the file)")


@ledger.command("repair")
@ledger_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def repair_cmd(path: Path | None, as_json: bool) -> None:
    """Rebuild a damaged ledger from every row that can still be read.

    The damaged file is copied first (LEDGER.broken-DATE, next to it); the new ledger is built in
    a temporary file and swapped in at the end. A row with an unknown state becomes `unknown`, one
    whose request or plan is unreadable keeps an empty one; each says so in its reason. Stop other
    gpuhub commands using this ledger before repairing it.
    """
    from gpuhub.ledger_repair import repair

    target = _path(path)
    try:
        report = repair(target)
    except OSError as exc:
        raise GpuhubError(f"cannot repair {target}: {exc.strerror or exc}; nothing was changed") from None
    if as_json:
        emit_json(report.to_dict())
    elif report.backup is None:
        click.echo(f"ledger {target}: nothing to repair")
    else:
        click.echo(f"ledger {target}: rebuilt with {report.rows} job(s) ({report.fixed} fixed, "
                   f"{report.unreadable} unreadable); the damaged file is kept as {report.backup}")
