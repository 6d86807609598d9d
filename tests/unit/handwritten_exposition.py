"""
The gateway's former hand-written Prometheus exposition of its
:class:`~metagateway.observability.metrics.Metrics`, kept as the reference
``tests/unit/test_exposition.py`` compares ``prometheus_client``'s output
with, family by family.
"""

from __future__ import annotations

from typing import Iterable, Optional

from metagateway import __version__
from metagateway.observability.metrics import Histogram, Metrics


def _number(value: float) -> str:
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _braces(labels: str) -> str:
    return "{%s}" % (labels.rstrip(","),) if labels else ""


def _histogram_lines(histogram: Histogram, name: str, labels: str) -> Iterable[str]:
    running = 0
    for bound, count in zip(histogram.bounds, histogram.counts):
        running += count
        yield '%s_bucket{%sle="%s"} %d' % (name, labels, _number(bound), running)
    running += histogram.counts[-1]
    yield '%s_bucket{%sle="+Inf"} %d' % (name, labels, running)
    braces = _braces(labels)
    yield "%s_sum%s %s" % (name, braces, _number(histogram.sum))
    yield "%s_count%s %d" % (name, braces, histogram.count)


class _Exposition:
    """
    The lines of one exposition, each sample with the worker label first.
    """

    def __init__(self, worker: Optional[int]) -> None:
        self.worker = "" if worker is None else 'worker="%d",' % (worker,)
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append("# HELP %s %s" % (name, help_text))
        self.lines.append("# TYPE %s %s" % (name, kind))

    def labels(self, **values: str) -> str:
        return self.worker + "".join(
            '%s="%s",' % (key, _escape(value)) for key, value in values.items()
        )

    def sample(self, name: str, value: int, **labels: str) -> None:
        self.lines.append("%s%s %d" % (name, _braces(self.labels(**labels)), value))

    def counter(
        self,
        name: str,
        help_text: str,
        counts: Iterable[tuple[tuple[str, ...], int]],
        label_names: tuple[str, ...],
    ) -> None:
        self.family(name, "counter", help_text)
        for key, count in sorted(counts):
            self.sample(name, count, **dict(zip(label_names, key)))

    def histogram(self, name: str, histogram: Histogram, **labels: str) -> None:
        self.lines.extend(_histogram_lines(histogram, name, self.labels(**labels)))


def handwritten(metrics: Metrics) -> bytes:
    """
    ``metrics`` in the Prometheus text format, as the gateway wrote it by
    hand before ``prometheus_client`` did.
    """
    out = _Exposition(metrics.worker)
    out.family("metagateway_info", "gauge", "The gateway's version.")
    out.sample("metagateway_info", 1, version=__version__)
    out.counter(
        "metagateway_requests_total",
        "Requests answered, by route, method and status class.",
        metrics.requests.items(),
        ("route", "method", "status"),
    )
    out.family(
        "metagateway_requests_in_flight",
        "gauge",
        "Requests received and not yet answered.",
    )
    out.sample("metagateway_requests_in_flight", metrics.in_flight)
    out.family(
        "metagateway_request_duration_seconds",
        "histogram",
        "Time from receiving a request to the end of its answer, by route.",
    )
    for route, histogram in sorted(metrics.latency.items()):
        out.histogram("metagateway_request_duration_seconds", histogram, route=route)
    out.counter(
        "metagateway_upstream_errors_total",
        "Upstream failures by route and kind "
        "(timeout, unavailable, missing_target, truncated).",
        metrics.upstream_errors.items(),
        ("route", "error"),
    )
    out.counter(
        "metagateway_logins_total",
        "Login attempts by kind (password, github) and outcome.",
        metrics.logins.items(),
        ("kind", "outcome"),
    )
    out.counter(
        "metagateway_credential_store_lookups_total",
        "Credential-store lookups by result (found, unknown, unavailable, error).",
        [((result,), count) for result, count in metrics.store_lookups.items()],
        ("result",),
    )
    out.family(
        "metagateway_credential_store_lookup_seconds",
        "histogram",
        "Credential-store lookup latency.",
    )
    out.histogram("metagateway_credential_store_lookup_seconds", metrics.store_latency)
    if metrics.state is not None:
        out.lines.extend(metrics.state.samples(_braces(out.worker)))
    for source in metrics.extra:
        out.lines.extend(source(out.worker))
    return ("\n".join(out.lines) + "\n").encode("utf-8")
