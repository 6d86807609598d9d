"""
Tests for :mod:`metagateway.observability.exposition`: ``prometheus_client``
writes the same metric families, with the same values, as the gateway's
former hand-written exposition.
"""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from twisted.trial.unittest import SynchronousTestCase

from metagateway.gateway import Gateway
from metagateway.observability.exposition import (
    GatewayCollector,
    exposition,
    gateway_registry,
)
from metagateway.observability.metrics import Metrics
from metagateway.state.stats import StateStats
from metagateway.testing import GatewayHarness, make_config
from tests.unit.handwritten_exposition import handwritten


def families(text: bytes) -> dict[str, tuple[str, str, list[Any]]]:
    """
    ``text`` parsed by ``prometheus_client``: each family's type, help and
    samples (name, labels, value), sorted, by family name.
    """
    parsed: dict[str, tuple[str, str, list[Any]]] = {}
    for family in text_string_to_metric_families(text.decode("utf-8")):
        samples = sorted(
            (sample.name, sorted(sample.labels.items()), sample.value)
            for sample in family.samples
        )
        assert family.name not in parsed, family.name
        parsed[family.name] = (family.type, family.documentation, samples)
    return parsed


def busy_metrics(worker: Any = None) -> Metrics:
    """
    Metrics with something in every family, awkward label values included.
    """
    metrics = Metrics(worker)
    metrics.observe_request("KV", b"GET", 504, 0.003, error="UPSTREAM_TIMEOUT")
    metrics.observe_request('a"b\\c\nd', b"BREW", 200, 0.5)
    metrics.observe_request("BUILD", b"POST", 201, 75.0)
    metrics.observe_request("BUILD", b"POST", 502, 0.1, upstream_error="truncated")
    metrics.observe_login("password", 200, None)
    metrics.observe_login("password", 401, "INVALID_CREDENTIALS")
    metrics.observe_login("github", 499, None)
    metrics.observe_store_lookup(0.02, "found")
    metrics.observe_store_lookup(20.0, "unavailable")
    metrics.in_flight = 3
    metrics.state = StateStats(True, 2, 7, 0.125)
    metrics.extra.append(
        lambda labels: [
            "# HELP metagateway_extra_total An extra family.",
            "# TYPE metagateway_extra_total counter",
            'metagateway_extra_total{%skind="x"} 4' % (labels,),
        ]
    )
    return metrics


class SameFamiliesTests(SynchronousTestCase):
    """
    The collector's exposition and the hand-written one hold the same
    families: names, types, help texts, samples and values.
    """

    def assert_same(self, metrics: Metrics) -> None:
        """
        Compare the two expositions of ``metrics`` family by family.
        """
        before = families(handwritten(metrics))
        after = families(exposition(gateway_registry(metrics)))
        self.assertEqual(sorted(before), sorted(after))
        for name in before:
            self.assertEqual(before[name], after[name], name)

    def test_empty(self) -> None:
        """
        A fresh gateway's metrics.
        """
        self.assert_same(Metrics())

    def test_busy(self) -> None:
        """
        Every family with samples, in one process.
        """
        self.assert_same(busy_metrics())

    def test_worker(self) -> None:
        """
        Every family with samples, in a worker (its ``worker`` label).
        """
        self.assert_same(busy_metrics(worker=2))

    def test_whole_gateway(self) -> None:
        """
        A gateway's metrics after real requests, with its reload and pool
        figures.
        """
        harness = GatewayHarness()
        harness.login(self)
        harness.request(self, "GET", "/kv/x")
        harness.request(self, "GET", "/nowhere")
        self.assert_same(harness.gateway.metrics)

    def test_gateways_apart(self) -> None:
        """
        Each gateway has its own registry: two count separately.
        """
        reactor = GatewayHarness().clock
        first = Gateway(make_config(), reactor, access_log=None)
        second = Gateway(make_config(), reactor, access_log=None)
        first.metrics.observe_request("KV", b"GET", 200, 0.01)
        one = families(exposition(gateway_registry(first.metrics)))
        other = families(exposition(gateway_registry(second.metrics)))
        self.assertNotEqual(
            one["metagateway_requests"][2], other["metagateway_requests"][2]
        )

    def test_collector(self) -> None:
        """
        The collector reads the counters at each scrape, not once.
        """
        metrics = Metrics()
        registry = gateway_registry(metrics)
        before = families(exposition(registry))
        metrics.observe_request("KV", b"GET", 200, 0.01)
        after = families(exposition(registry))
        self.assertEqual(before["metagateway_requests"][2], [])
        self.assertEqual(len(after["metagateway_requests"][2]), 1)

    def test_own_registry(self) -> None:
        """
        The collector goes into a registry of the gateway's own, never the
        process's global one.
        """
        from prometheus_client import REGISTRY

        metrics = Metrics()
        metrics.observe_request("UNIQUE_ROUTE", b"GET", 200, 0.01)
        gateway_registry(metrics)
        self.assertNotIn(b"UNIQUE_ROUTE", exposition(REGISTRY))
        self.assertIsInstance(GatewayCollector(metrics).collect().__next__(), object)


class ReferenceTests(SynchronousTestCase):
    """
    The reference is the former exposition.
    """

    def test_reference(self) -> None:
        """
        :func:`handwritten` writes, byte for byte, what
        ``Metrics.exposition`` wrote by hand (``tests/unit/test_metrics.py``'s
        ``WHOLE_TEXT`` pins it), and ``Metrics.exposition`` now writes the
        same families.
        """
        from tests.unit.test_metrics import WHOLE_TEXT

        metrics = Metrics(2)
        metrics.observe_request("KV", b"GET", 504, 0.003, error="UPSTREAM_TIMEOUT")
        metrics.observe_request('a"b', b"BREW", 200, 0.5)
        metrics.observe_login("password", 200, None)
        metrics.observe_store_lookup(0.02, "found")
        metrics.in_flight = 1
        from metagateway import __version__

        self.assertEqual(
            handwritten(metrics).decode("utf-8"),
            WHOLE_TEXT.replace("VERSION", __version__),
        )
        self.assertEqual(
            families(handwritten(busy_metrics(3))),
            families(busy_metrics(3).exposition()),
        )
