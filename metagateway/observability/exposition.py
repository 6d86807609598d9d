"""
The Prometheus exposition of one gateway's metrics, written by
``prometheus_client``: a custom collector turning the gateway's own
counters (:class:`~metagateway.observability.metrics.Metrics`) into metric
families at scrape time, in a registry of the gateway's own.

The request path keeps counting into plain dictionaries and lists, as
cheaply as before; only a scrape builds families. There is no global
registry: two gateways in one process count, and expose, separately.
"""

from __future__ import annotations

from typing import (
    Any,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Optional,
    Protocol,
    Sequence,
)

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from metagateway import __version__
from metagateway.state.stats import StateStats


class Histogram(Protocol):
    """
    What the collector reads of a histogram
    (:class:`metagateway.observability.metrics.Histogram`).
    """

    @property
    def bounds(self) -> tuple[float, ...]: ...

    @property
    def counts(self) -> list[int]: ...

    @property
    def sum(self) -> float: ...


class Metrics(Protocol):
    """
    What the collector reads of a gateway's counters
    (:class:`metagateway.observability.metrics.Metrics`, which imports this
    module to build its registry: a protocol here keeps the import one-way).
    """

    @property
    def worker(self) -> Optional[int]: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def requests(self) -> Mapping[tuple[str, str, str], int]: ...

    @property
    def latency(self) -> Mapping[str, Histogram]: ...

    @property
    def upstream_errors(self) -> Mapping[tuple[str, str], int]: ...

    @property
    def logins(self) -> Mapping[tuple[str, str], int]: ...

    @property
    def store_lookups(self) -> Mapping[str, int]: ...

    @property
    def store_latency(self) -> Histogram: ...

    @property
    def state(self) -> Optional[StateStats]: ...

    @property
    def extra(self) -> Sequence[Callable[[str], list[str]]]: ...


#: The content type of the exposition (text format 0.0.4).
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


def _bound(value: float) -> str:
    """
    A bucket bound as the ``le`` label writes it (``0.005``, ``1.0``).
    """
    return repr(float(value))


class GatewayCollector(Collector):
    """
    Yields the metric families of one gateway's
    :class:`~metagateway.observability.metrics.Metrics`, read at scrape
    time.

    :param metrics: the counters.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def _names(self, *names: str) -> list[str]:
        """
        The label names of a family: ``worker`` first when there is one.
        """
        if self.metrics.worker is None:
            return list(names)
        return ["worker", *names]

    def _values(self, *values: str) -> list[str]:
        """
        The label values of a sample, the worker index first when set.
        """
        worker = self.metrics.worker
        if worker is None:
            return list(values)
        return ["%d" % (worker,), *values]

    def _histogram(
        self,
        family: HistogramMetricFamily,
        histogram: Histogram,
        values: Sequence[str],
    ) -> None:
        """
        Add one histogram's cumulative buckets, sum and count to ``family``.
        """
        running = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip(histogram.bounds, histogram.counts):
            running += count
            buckets.append((_bound(bound), running))
        buckets.append(("+Inf", running + histogram.counts[-1]))
        family.add_metric(self._values(*values), buckets, histogram.sum)

    def collect(self) -> Iterator[Metric]:
        """
        Every family, in the order of the former hand-written exposition.
        """
        metrics = self.metrics
        info = GaugeMetricFamily(
            "metagateway_info", "The gateway's version.", labels=self._names("version")
        )
        info.add_metric(self._values(__version__), 1)
        yield info
        yield self._counter(
            "metagateway_requests",
            "Requests answered, by route, method and status class.",
            ("route", "method", "status"),
            metrics.requests.items(),
        )
        in_flight = GaugeMetricFamily(
            "metagateway_requests_in_flight",
            "Requests received and not yet answered.",
            labels=self._names(),
        )
        in_flight.add_metric(self._values(), metrics.in_flight)
        yield in_flight
        latency = HistogramMetricFamily(
            "metagateway_request_duration_seconds",
            "Time from receiving a request to the end of its answer, by route.",
            labels=self._names("route"),
        )
        for route, histogram in sorted(metrics.latency.items()):
            self._histogram(latency, histogram, (route,))
        yield latency
        yield self._counter(
            "metagateway_upstream_errors",
            "Upstream failures by route and kind "
            "(timeout, unavailable, missing_target, truncated).",
            ("route", "error"),
            metrics.upstream_errors.items(),
        )
        yield self._counter(
            "metagateway_logins",
            "Login attempts by kind (password, github) and outcome.",
            ("kind", "outcome"),
            metrics.logins.items(),
        )
        yield self._counter(
            "metagateway_credential_store_lookups",
            "Credential-store lookups by result (found, unknown, unavailable, error).",
            ("result",),
            [((result,), count) for result, count in metrics.store_lookups.items()],
        )
        store = HistogramMetricFamily(
            "metagateway_credential_store_lookup_seconds",
            "Credential-store lookup latency.",
            labels=self._names(),
        )
        self._histogram(store, metrics.store_latency, ())
        yield store
        state = metrics.state
        if state is not None:
            yield from self._state(state)
        worker = "" if metrics.worker is None else 'worker="%d",' % (metrics.worker,)
        for source in metrics.extra:
            yield from parse_families(source(worker))

    def _counter(
        self,
        name: str,
        help_text: str,
        label_names: Sequence[str],
        counts: Iterable[tuple[tuple[str, ...], int]],
    ) -> CounterMetricFamily:
        """
        A counter family (``name`` without ``_total``), one sample per
        ``(label values, count)``, sorted.
        """
        family = CounterMetricFamily(name, help_text, labels=self._names(*label_names))
        for key, count in sorted(counts):
            family.add_metric(self._values(*key), count)
        return family

    def _state(self, state: Any) -> Iterator[Metric]:
        """
        The shared state store's figures
        (:class:`~metagateway.state.stats.StateStats`).
        """
        names = self._names()
        values = self._values()
        for family, value in (
            (
                GaugeMetricFamily(
                    "metagateway_state_connected",
                    "Whether the shared state store is reachable (1) or not (0).",
                    labels=names,
                ),
                1 if state.connected else 0,
            ),
            (
                CounterMetricFamily(
                    "metagateway_state_reconnects",
                    "Times the link to the shared state store was made again.",
                    labels=names,
                ),
                state.reconnects,
            ),
            (
                CounterMetricFamily(
                    "metagateway_state_revocations_seen",
                    "Revocations received from the shared state store.",
                    labels=names,
                ),
                state.revocations_seen,
            ),
            (
                GaugeMetricFamily(
                    "metagateway_state_pubsub_lag_seconds",
                    "Delay of the last revocation message received, in seconds.",
                    labels=names,
                ),
                float(state.pubsub_lag),
            ),
        ):
            family.add_metric(values, value)
            yield family


def parse_families(lines: Sequence[str]) -> Iterator[Metric]:
    """
    The metric families of exposition ``lines`` that a part of the gateway
    still writes as text (``Metrics.extra``), parsed by
    ``prometheus_client``.
    """
    if lines:
        yield from text_string_to_metric_families("\n".join(lines) + "\n")


def gateway_registry(metrics: Metrics) -> CollectorRegistry:
    """
    A registry of its own holding one :class:`GatewayCollector` over
    ``metrics``.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(metrics))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """
    ``registry``'s metrics in the Prometheus text format.
    """
    return generate_latest(registry)
