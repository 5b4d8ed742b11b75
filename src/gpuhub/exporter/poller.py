"""The store scrapes read, and the background pollers that fill it.

Each site has its own poller thread, interval and timeout. A poll runs in a short-lived
worker thread that the poller waits for at most ``timeout`` seconds: a site whose login node
accepts the connection and never answers is reported down after ``timeout`` even when no
lower-level timeout fires. The poller never starts a second poll of a site while one is
stuck; each interval it stays stuck counts as another failed poll.

After a failed poll the site's GPU and job values from its last good poll stay for up to
:data:`STALE_POLLS` failed polls (a failed poll or two is normal on a busy login node), then
are withdrawn; ``gpuhub_site_up`` says 0 from the first failure.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from gpuhub import __version__
from gpuhub.exporter.readings import SiteReading
from gpuhub.exporter.samples import GpuModels, Samples, site_samples
from gpuhub.exporter.usage import read_ledger
from gpuhub.site import Site
from gpuhub.transport.base import Transport

log = logging.getLogger("gpuhub.exporter")

STALE_POLLS = 2
Reader = Callable[[Transport, float], SiteReading]  # (transport, monotonic deadline) -> reading


class Store:
    """Samples by source (``site:NAME``, ``ledger``...), and a version bumped at every change.

    Renders take :meth:`snapshot`; since nothing in it depends on the time of the scrape, an
    exposition rendered from one version stays right until the version changes. ``changed``
    is set at every change.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: dict[str, Samples] = {}
        self._version = 0
        self.changed = threading.Event()

    def put(self, key: str, samples: Samples) -> None:
        with self._lock:
            if self._parts.get(key) == samples:
                return
            self._parts[key] = samples
            self._version += 1
        self.changed.set()

    @property
    def version(self) -> int:
        return self._version

    def snapshot(self) -> tuple[int, list[Samples]]:
        with self._lock:
            return self._version, list(self._parts.values())


def reader_for(site: Site) -> Reader:
    """The live GPU probe of the site's backend."""
    from gpuhub.backends import backend_for

    backend = backend_for(site.scheduler)
    return lambda transport, deadline: backend.read_gpus(site, transport, deadline)


def _default_transport(site: Site) -> Transport:
    from gpuhub.transport import transport_for

    return transport_for(site)


def _message(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return text.splitlines()[0] if text else type(exc).__name__


class _Background:
    """start/stop/join of a daemon thread running ``_loop`` until ``_stop`` is set."""

    _stop: threading.Event
    _thread: threading.Thread | None

    def _thread_name(self) -> str:
        raise NotImplementedError

    def _loop(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self._thread_name(), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


class SitePoller(_Background):
    def __init__(
        self,
        site: Site,
        store: Store,
        *,
        interval: float = 60.0,
        timeout: float = 30.0,
        user_labels: bool = False,
        transport_factory: Callable[[Site], Transport] = _default_transport,
        reader: Reader | None = None,
    ) -> None:
        self.site = site
        self.store = store
        self.interval = interval
        self.timeout = timeout
        self.user_labels = user_labels
        self.transport_factory = transport_factory
        self.reader = reader or reader_for(site)
        self.models = GpuModels(site)
        self.key = f"site:{site.name}"
        self.up = False
        self.failures = 0  # consecutive
        self.errors_total = 0
        self.polls = 0
        self.last_error: str | None = None
        self.last_duration = 0.0
        self.last_success: float | None = None
        self._data: Samples = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def _thread_name(self) -> str:
        return f"gpuhub-poll-{self.site.name}"

    def _loop(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            self.poll_once()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - began)))

    # --- one poll -------------------------------------------------------------------------------

    def poll_once(self) -> None:
        box: list[Samples | BaseException] = []
        started = time.monotonic()
        worker = threading.Thread(
            target=self._attempt, args=(box, started + self.timeout), name=f"gpuhub-read-{self.site.name}", daemon=True
        )
        worker.start()
        worker.join(self.timeout)
        if not worker.is_alive():
            outcome = box[0] if box else RuntimeError("the poll ended without a result")
            duration = time.monotonic() - started
            if isinstance(outcome, BaseException):
                self._failed(_message(outcome), duration)
            else:
                self._succeeded(outcome, duration)
            return
        self._failed(f"no answer within {self.timeout:g} s", self.timeout)
        # Never two polls of one site at once: wait for the stuck one (its late answer is dropped).
        while not self._stop.is_set():
            deadline = time.monotonic() + self.interval
            while worker.is_alive() and not self._stop.is_set() and time.monotonic() < deadline:
                worker.join(min(0.5, max(0.0, deadline - time.monotonic())))
            if not worker.is_alive() or self._stop.is_set():
                return
            self._failed(f"still no answer after {time.monotonic() - started:.0f} s", self.timeout)

    def _attempt(self, box: list[Samples | BaseException], deadline: float) -> None:
        try:
            reading = self.reader(self.transport_factory(self.site), deadline)
            box.append(site_samples(self.site.name, reading, self.models, self.user_labels))
        except Exception as exc:  # any failure of a poll is the site being down, never the exporter's end
            box.append(exc)

    def _succeeded(self, data: Samples, duration: float) -> None:
        if not self.up and self.polls:
            log.warning("site %s answers again", self.site.name)
        self.polls += 1
        self.up, self.failures, self.last_error = True, 0, None
        self.last_duration = duration
        self.last_success = time.time()
        self._data = data
        self._publish()

    def _failed(self, why: str, duration: float) -> None:
        if self.up or not self.polls:
            log.warning("site %s is down: %s", self.site.name, why)
        self.polls += 1
        self.up = False
        self.failures += 1
        self.errors_total += 1
        self.last_error = why
        self.last_duration = duration
        if self.failures > STALE_POLLS:
            self._data = {}
        self._publish()

    def _publish(self) -> None:
        name = self.site.name
        out: Samples = {family: dict(values) for family, values in self._data.items()}
        out["gpuhub_site_up"] = {(name, self.site.scheduler): 1.0 if self.up else 0.0}
        out["gpuhub_site_poll_duration_seconds"] = {(name,): round(self.last_duration, 6)}
        out["gpuhub_site_poll_errors_total"] = {(name,): float(self.errors_total)}
        if self.last_success is not None:
            out["gpuhub_site_last_success_timestamp_seconds"] = {(name,): round(self.last_success, 3)}
        self.store.put(self.key, out)


class LedgerPoller(_Background):
    """Reads the ledger's counters every ``interval``; on a failed read the last counters stay."""

    key = "ledger"

    def __init__(self, path: Path, store: Store, interval: float = 60.0) -> None:
        self.path = path
        self.store = store
        self.interval = interval
        self.up = False
        self.error: str | None = None
        self._counters: Samples = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _thread_name(self) -> str:
        return "gpuhub-poll-ledger"

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self.interval)

    def poll_once(self) -> None:
        try:
            self._counters = read_ledger(self.path)
            self.up, self.error = True, None
        except Exception as exc:  # a missing or locked ledger must not stop the site metrics
            why = _message(exc)
            if why != self.error:
                log.warning("cannot read the ledger %s: %s", self.path, why)
            self.up, self.error = False, why
        out: Samples = {family: dict(values) for family, values in self._counters.items()}
        out["gpuhub_ledger_up"] = {(): 1.0 if self.up else 0.0}
        self.store.put(self.key, out)


def build_info(store: Store) -> None:
    store.put("build", {"gpuhub_build_info": {(__version__,): 1.0}})
