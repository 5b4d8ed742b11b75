"""The exporter put together: store, pollers, collector and HTTP server."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from gpuhub.exporter.collector import registry_for
from gpuhub.exporter.poller import LedgerPoller, SitePoller, Store, build_info
from gpuhub.exporter.server import Exposition, MetricsServer
from gpuhub.site import Site
from gpuhub.transport.base import Transport

SWITCH_INTERVAL = 0.0005  # seconds


class Exporter:
    def __init__(
        self,
        sites: Sequence[Site],
        *,
        address: str = "127.0.0.1",
        port: int = 9845,
        interval: float = 60.0,
        timeout: float = 30.0,
        user_labels: bool = False,
        ledger: Path | None = None,
        transport_factory: Callable[[Site], Transport] | None = None,
    ) -> None:
        self.store = Store()
        build_info(self.store)
        extra = {"transport_factory": transport_factory} if transport_factory else {}
        self.pollers = [
            SitePoller(site, self.store, interval=interval, timeout=timeout, user_labels=user_labels, **extra)
            for site in sites
        ]
        self.ledger = LedgerPoller(ledger, self.store, interval) if ledger is not None else None
        self.registry = registry_for(self.store)
        self.exposition = Exposition(self.registry, self.store)
        self.server = MetricsServer(address, port, self.exposition)
        self._switch_interval = sys.getswitchinterval()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/metrics"

    def start(self) -> None:
        # Rendering a big exposition is pure Python and holds the GIL; the default 5 ms switch
        # interval would let one render hold a scrape back for tens of milliseconds.
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL)
        for poller in self.pollers:
            poller.start()
        if self.ledger is not None:
            self.ledger.start()
        self.exposition.start()
        self.server.start()

    def stop(self) -> None:
        self.exposition.stop()
        self.server.shutdown()
        self.server.server_close()
        for poller in self.pollers:
            poller.stop()
        if self.ledger is not None:
            self.ledger.stop()
        sys.setswitchinterval(self._switch_interval)
