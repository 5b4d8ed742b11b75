"""The ``gpuhub`` command. Only wiring lives here; subcommands load on demand so that
``gpuhub --help`` never imports pydantic, Jinja2 or paramiko."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, NoReturn

import click

from gpuhub import __version__
from gpuhub.limits import ssh_persist_seconds

# name -> (module:attribute, one-line help shown by `gpuhub --help` without importing it)
COMMANDS: dict[str, tuple[str, str]] = {
    "sites": ("gpuhub.cli.sites:sites", "List, show, validate and describe site configurations."),
    "render": ("gpuhub.cli.jobs:render", "Print the exact job script and submit command for a site."),
    "submit": ("gpuhub.cli.jobs:submit", "Submit a job to a site (or --site auto) and record it."),
    "plan": ("gpuhub.cli.plan:plan", "Rank the sites that can run a job and say which one and why."),
    "gpus": ("gpuhub.cli.gpus:gpus", "Free and allocated GPUs per site and model; on lab servers, who holds each."),
    "failover": ("gpuhub.cli.broker_opts:failover", "Move a --failover-after job that is due; say where it stands."),
    "status": ("gpuhub.cli.jobs:status", "Ask the sites for the state of jobs."),
    "jobs": ("gpuhub.cli.jobs:jobs", "List recorded jobs (no site contacted)."),
    "logs": ("gpuhub.cli.jobs:logs", "Print or follow a job's log."),
    "cancel": ("gpuhub.cli.jobs:cancel", "Cancel jobs."),
    "ledger": ("gpuhub.cli.ledger:ledger", "Check the ledger of submitted jobs and repair it."),
    "usage": ("gpuhub.cli.usage:usage", "Collect GPU-hour accounting and report it."),
    "exporter": ("gpuhub.cli.exporter:exporter", "Serve Prometheus metrics for the configured sites."),
    "connections": ("gpuhub.cli.connections:connections", "List or close the SSH connections kept between commands."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS:
            module, _, attr = COMMANDS[cmd_name][0].partition(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, cmd_name)

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """Every error is one line on stderr: usage errors name the option and point at --help,
        and an unexpected exception is reported, not dumped (GPUHUB_DEBUG=1 shows the traceback)."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        # The command line uses no pydantic plugin, and looking for them reads the metadata of
        # every installed package: a good part of the start-up time of `render`.
        os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
        program = not args and kwargs.get("args") is None  # the gpuhub program, not a caller's main([...])
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as exc:
            hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
            click.echo(f"Error: {_one_line(exc.format_message())}{hint}", err=True)
            _exit(exc.exit_code, program)
        except click.ClickException as exc:
            click.echo(f"Error: {_one_line(exc.format_message())}", err=True)
            _exit(exc.exit_code, program)
        except click.Abort:
            click.echo("Aborted!", err=True)
            _exit(1, program)
        except SystemExit as exc:
            _exit(exc.code, program)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            if os.environ.get("GPUHUB_DEBUG"):
                raise
            click.echo(f"Error: internal error: {type(exc).__name__}: {_one_line(str(exc))[:300]} "
                       "(GPUHUB_DEBUG=1 shows where; please report it)", err=True)
            _exit(1, program)
        _exit(rv if isinstance(rv, int) else 0, program)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in sorted(COMMANDS)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="gpuhub")
def main() -> None:
    """Describe a GPU job once, run it on any site.

    \b
    Examples:
      gpuhub sites list
      gpuhub sites show jean-zay
      gpuhub render --site jean-zay --project abc --gpu-type a100 --gpus 8 --time 10h -- python train.py
    """
    # A wrong value stops every command, not only those that connect; a right one costs no import.
    raw = os.environ.get("GPUHUB_SSH_PERSIST", "")
    if raw.strip() and ssh_persist_seconds(raw) is None:
        from gpuhub.transport.persist import persist_seconds

        persist_seconds(None)  # the error: one line naming the variable and what it takes


def _exit(code: int | str | None, program: bool) -> NoReturn:
    """End the command. The gpuhub program skips the interpreter's teardown (clearing every
    module, a last garbage collection: about a seventh of a `gpuhub render`): what gpuhub keeps is
    on disk already, written atomically or in the ledger, which a kill -9 at any moment leaves
    consistent, and gpuhub registers nothing to run at exit. Called from code, it raises SystemExit."""
    if not program:
        sys.exit(code)
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe (gpuhub ... | head): nothing more to say
        pass
    os._exit(code or 0)


def _one_line(message: str) -> str:
    """Multi-line messages (several site-file problems) stay as they are; control characters do not."""
    from gpuhub.cli.output import printable

    return "\n".join(printable(line) for line in message.splitlines())
