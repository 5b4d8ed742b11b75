"""``gpuhub exporter``: serve Prometheus metrics for GPU sites from a background-polled cache."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import click

from gpuhub import registry
from gpuhub.cli.output import note
from gpuhub.cli.params import BoundedFloat
from gpuhub.errors import ConfigError, GpuhubError
from gpuhub.limits import MAX_INTERVAL, MAX_TIMEOUT
from gpuhub.site import Site


def _configured_sites() -> list[Site]:
    """Sites with a file outside the shipped examples: the ones someone set up on this machine."""
    sites = []
    for name in registry.site_names():
        try:
            sources = registry.site_sources(name)
            if all(src.layer == "shipped" for src in sources):
                continue
            sites.append(registry.build_site(name, sources))
        except ConfigError as exc:
            note(f"warning: site {name} skipped: {exc.message}")
    return sites


def _select(names: str | None) -> list[Site]:
    if names:
        wanted = [n.strip() for n in names.split(",") if n.strip()]
        return [registry.load_site(n) for n in dict.fromkeys(wanted)]
    sites = _configured_sites()
    if not sites:
        raise ConfigError("no site configured for the exporter: pass --sites NAME[,NAME...] (see `gpuhub sites list`)")
    return sites


@click.command()
@click.option("--port", default=9845, show_default=True, type=click.IntRange(0, 65535), help="0 = any free port.")
@click.option("--address", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 = all).")
@click.option(
    "--interval",
    default=60.0,
    show_default=True,
    type=BoundedFloat(0.1, MAX_INTERVAL),
    help="Seconds between polls of a site.",
)
@click.option(
    "--timeout",
    default=30.0,
    show_default=True,
    type=BoundedFloat(0.1, MAX_TIMEOUT),
    help="Seconds a poll may take before the site counts as down.",
)
@click.option(
    "--sites",
    "site_names",
    metavar="A,B",
    help="Sites to poll [default: every site set up outside the shipped examples].",
)
@click.option("--user-labels", is_flag=True, help="Also export per-user metrics (user names become labels).")
@click.option(
    "--ledger",
    type=click.Path(dir_okay=False, path_type=Path),
    help="gpuhub ledger to read counters from [default: $GPUHUB_LEDGER or the user's ledger].",
)
@click.option("--no-ledger", is_flag=True, help="Do not read the ledger (no submission or GPU-second counters).")
def exporter(
    port: int,
    address: str,
    interval: float,
    timeout: float,
    site_names: str | None,
    user_labels: bool,
    ledger: Path | None,
    no_ledger: bool,
) -> None:
    """Serve Prometheus metrics for the configured sites.

    Each site is polled in the background (Slurm: one sinfo and one squeue; HTCondor:
    condor_status and condor_q; lab servers: nvidia-smi) every --interval seconds; a scrape
    only reads the last results, so a slow or hanging site never slows Prometheus down and
    shows as gpuhub_site_up 0. docs/monitoring.md lists every metric.

    \b
    Examples:
      gpuhub exporter --sites jean-zay,cc-in2p3
      gpuhub exporter --address 0.0.0.0 --port 9845 --interval 30 --timeout 20
    """
    from gpuhub.exporter.app import Exporter  # prometheus_client is only imported here
    from gpuhub.ledger import ledger_path
    from gpuhub.transport import close_all

    sites = _select(site_names)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("gpuhub.exporter").setLevel(logging.INFO)
    ledger_file = None if no_ledger else (ledger or ledger_path())
    try:
        app = Exporter(
            sites,
            address=address,
            port=port,
            interval=interval,
            timeout=timeout,
            user_labels=user_labels,
            ledger=ledger_file,
        )
    except OSError as exc:
        raise GpuhubError(f"cannot listen on {address}:{port}: {exc.strerror or exc}") from None

    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    note(f"serving {app.url} for {len(sites)} site(s): {', '.join(s.name for s in sites)}")
    app.start()
    try:
        while not done.wait(3600):
            pass
    finally:
        app.stop()
        # A transport stuck connecting to a hanging site would block its close: do not wait for it.
        closer = threading.Thread(target=close_all, daemon=True)
        closer.start()
        closer.join(5)
