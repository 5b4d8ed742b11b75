"""The prometheus_client collector: metric families built fresh from the store at each collect.

Building new families each time (never updating long-lived metric objects) is what the
Prometheus exporter guidelines ask of custom collectors: a label set that vanished from a
site (a drained partition emptied, a project with no job left) vanishes from the output too.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from gpuhub.exporter.families import FAMILIES
from gpuhub.exporter.poller import Store


class StoreCollector(Collector):
    def __init__(self, store: Store) -> None:
        self.store = store

    def describe(self) -> list[Metric]:
        # Names are not known before the first poll; returning nothing keeps registration from
        # calling collect() (and so from touching any site) at start.
        return []

    def collect(self) -> Iterator[Metric]:
        _, parts = self.store.snapshot()
        for family in FAMILIES:
            metric: GaugeMetricFamily | CounterMetricFamily
            if family.kind == "counter":
                metric = CounterMetricFamily(family.name, family.help, labels=family.labels)
            else:
                metric = GaugeMetricFamily(family.name, family.help, labels=family.labels)
            for part in parts:
                for labels, value in part.get(family.name, {}).items():
                    metric.add_metric(labels, value)
            if metric.samples:
                yield metric


def registry_for(store: Store) -> CollectorRegistry:
    """A registry holding only the store: no process metrics, which would change at every scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    return registry
