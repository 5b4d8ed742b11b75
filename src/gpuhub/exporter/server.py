"""The HTTP side: ``/metrics`` served from the store, rendered in the background.

The text of ``/metrics`` depends only on the store (no value is computed at scrape time), so
it is rendered after the store changes, once per format the scrapers ask for (Prometheus text
or OpenMetrics, gzip or not), by a thread of its own, and served as is in between. A scrape is
a dictionary lookup and a socket write, whatever the number of sites and jobs. HTTP/1.1
keep-alive lets a Prometheus reuse its connection. ``?name[]=...`` (restrict the output to
some families) is rendered at each request.
"""

from __future__ import annotations

import gzip
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import CollectorRegistry

from gpuhub.exporter.poller import Store

LANDING = b"""<html><head><title>gpuhub exporter</title></head><body>
<h1>gpuhub exporter</h1><p><a href="/metrics">Metrics</a></p></body></html>
"""


class Exposition:
    """Rendered ``/metrics`` bodies, one per format asked, kept up to date by a background thread.

    A scrape returns the body last rendered for its format and never waits for a render (only
    the very first scrape in a format renders, once). When the store changes, the renderer
    thread renders every format again, at most once per ``min_gap`` seconds: a scrape may lag a
    poll by that much, never by a poll's own duration.
    """

    MAX_VARIANTS = 8  # formats a scraper can ask for; more is someone playing with Accept headers

    def __init__(self, registry: CollectorRegistry, store: Store, min_gap: float = 1.0) -> None:
        self.registry = registry
        self.store = store
        self.min_gap = min_gap
        self.renders = 0
        self._variants: dict[tuple[str, bool], Callable[[CollectorRegistry], bytes]] = {}
        self._bodies: dict[tuple[str, bool], bytes] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def body(self, accept: str, gzipped: bool, names: list[str] | None = None) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        if names:
            data = encoder(_Only(self.registry, names))  # type: ignore[arg-type]
            return (gzip.compress(data, 6) if gzipped else data), content_type
        key = (content_type, gzipped)
        data = self._bodies.get(key)
        if data is None:
            with self._lock:
                data = self._bodies.get(key)
                if data is None:
                    if len(self._variants) >= self.MAX_VARIANTS:
                        self._variants.clear()
                        self._bodies.clear()
                    self._variants[key] = encoder
                    data = self._bodies[key] = self._render(encoder, gzipped)
        return data, content_type

    def _render(self, encoder: Callable[[CollectorRegistry], bytes], gzipped: bool) -> bytes:
        data = encoder(self.registry)
        self.renders += 1
        return gzip.compress(data, 6) if gzipped else data

    def refresh(self) -> None:
        """Render every format asked so far from the store as it is now."""
        with self._lock:
            for key, encoder in list(self._variants.items()):
                self._bodies[key] = self._render(encoder, key[1])

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._loop, name="gpuhub-exporter-render", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
        self.store.changed.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.store.changed.wait()
            if self._stop.is_set():
                return
            self.store.changed.clear()  # cleared before rendering: a change during the render renders again
            self.refresh()
            self._stop.wait(self.min_gap)


class _Only:
    """The registry's families named in ``names`` (a counter by its name with or without _total)."""

    def __init__(self, registry: CollectorRegistry, names: list[str]) -> None:
        self.registry = registry
        self.names = set(names)

    def collect(self) -> Iterator[Metric]:
        for metric in self.registry.collect():
            if metric.name in self.names or f"{metric.name}_total" in self.names:
                yield metric


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "gpuhub-exporter"
    timeout = 60  # an idle keep-alive connection is closed after this
    # Headers and body leave in two writes; with Nagle's algorithm the second waits for the
    # client's delayed ACK (40 ms on Linux) on every keep-alive request.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/metrics":
            names = parse_qs(url.query).get("name[]")
            gzipped = "gzip" in (self.headers.get("Accept-Encoding") or "")
            body, content_type = self.server.exposition.body(self.headers.get("Accept") or "", gzipped, names)  # type: ignore[attr-defined]
            self._send(200, body, content_type, gzipped)
        elif url.path == "/":
            self._send(200, LANDING, "text/html; charset=utf-8")
        elif url.path == "/-/healthy":
            self._send(200, b"OK\n", "text/plain; charset=utf-8")
        else:
            self._send(404, b"not found; metrics are at /metrics\n", "text/plain; charset=utf-8")

    def _send(self, status: int, body: bytes, content_type: str, gzipped: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if gzipped:
            self.send_header("Content-Encoding", "gzip")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # same signature as the method it silences
        pass  # one line per scrape would drown the poll errors that matter


class MetricsServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512

    def __init__(self, address: str, port: int, exposition: Exposition) -> None:
        if ":" in address:
            self.address_family = socket.AF_INET6
        self.exposition = exposition
        super().__init__((address, port), _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # the scraper went away or idled out: nothing to report
        super().handle_error(request, client_address)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="gpuhub-exporter-http", daemon=True)
        thread.start()
        return thread
