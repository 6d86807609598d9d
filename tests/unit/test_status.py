"""
Tests for :mod:`metagateway.observability.status`: ``/status.json`` and the
``/status`` page on the metrics endpoint.
"""

from __future__ import annotations

import json
import re
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from metagateway import __version__
from metagateway.config import GatewayConfig
from metagateway.observability.metricsite import MetricsResource
from metagateway.observability.status import (
    SAMPLE_SECONDS,
    GatewayStatus,
    StatusSampler,
    render_page,
)
from metagateway.routes import Route
from metagateway.state.stats import StateStats
from metagateway.testing import GatewayHarness, StubTreq, make_config


def pooled_config() -> GatewayConfig:
    """
    A configuration whose ``BUILD`` route has two upstreams.
    """
    return make_config(
        routes=(
            Route(
                b"build",
                "BUILD",
                upstreams=("http://build-1.test", "http://build-2.test"),
            ),
            Route(b"kv", "KV", upstreams=("http://kv.test",), token="optional"),
        )
    )


class StatusTests(SynchronousTestCase):
    """
    What ``/status.json`` and ``/status`` tell.
    """

    def setUp(self) -> None:
        self.harness = GatewayHarness(pooled_config())
        gateway = self.harness.gateway
        self.status = GatewayStatus(
            gateway.metrics,
            self.harness.clock.seconds,
            lambda: gateway.proxies,
            gateway.reloads,
            lambda: "/etc/metagateway.toml",
            ["tcp:8080"],
        )
        self.client = StubTreq(MetricsResource(gateway.metrics, self.status))

    def get(self, path: str) -> tuple[Any, bytes]:
        """
        ``GET`` ``path`` on the metrics endpoint.
        """
        response = self.successResultOf(self.client.get("http://metrics.test" + path))
        return response, self.successResultOf(response.content())

    def document(self) -> dict[str, Any]:
        """
        The ``/status.json`` document.
        """
        response, body = self.get("/status.json")
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [b"application/json"]
        )
        document: dict[str, Any] = json.loads(body)
        return document

    def test_document(self) -> None:
        """
        The document names the version, uptime, listeners, routes with
        their upstreams and health, the configuration and the state.
        """
        self.harness.clock.advance(42)
        document = self.document()
        self.assertEqual(document["version"], __version__)
        self.assertEqual(document["uptime"], 42)
        self.assertEqual(document["listeners"], ["tcp:8080"])
        self.assertEqual(document["config"]["file"], "/etc/metagateway.toml")
        self.assertEqual(document["config"]["reloads"], {"success": 0, "error": 0})
        self.assertEqual(document["state"], {"shared": False})
        self.assertEqual((document["worker"], document["workers"]), (None, 1))
        routes = {route["name"]: route for route in document["routes"]}
        self.assertEqual(sorted(routes), ["BUILD", "KV"])
        self.assertEqual(routes["BUILD"]["prefix"], "/build")
        self.assertEqual(
            [(u["url"], u["healthy"]) for u in routes["BUILD"]["upstreams"]],
            [("http://build-1.test", True), ("http://build-2.test", True)],
        )

    def test_health_shown(self) -> None:
        """
        An upstream left out shows as unhealthy, with how long it stays out.
        """
        balancer = self.harness.gateway.proxies["BUILD"].balancer
        balancer.failed(balancer.upstreams[0], "refused")
        document = self.document()
        [build] = [r for r in document["routes"] if r["name"] == "BUILD"]
        first, second = build["upstreams"]
        self.assertFalse(first["healthy"])
        self.assertEqual(first["downFor"], 10)
        self.assertTrue(second["healthy"])
        self.assertTrue(build["healthy"])

    def test_rates(self) -> None:
        """
        Requests, error shares, login failures and 429s per second over the
        last minute; in-flight requests as they are.
        """
        metrics = self.harness.gateway.metrics
        clock = self.harness.clock
        self.status.sample()
        for _ in range(30):
            metrics.observe_request("KV", b"GET", 200, 0.01)
        for _ in range(20):
            metrics.observe_request("KV", b"GET", 502, 0.01)
        for _ in range(10):
            metrics.observe_request("AUTH", b"POST", 401, 0.01)
            metrics.observe_login("password", 401, "INVALID_CREDENTIALS")
        metrics.observe_login("password", 429, "TOO_MANY_ATTEMPTS")
        metrics.in_flight = 4
        clock.advance(30)
        last = self.document()["lastMinute"]
        self.assertEqual(last["seconds"], 30)
        self.assertEqual(last["requestsPerSecond"], 2.0)
        self.assertEqual(last["errors5xxRatio"], round(20 / 60, 4))
        self.assertEqual(last["errors4xxRatio"], round(10 / 60, 4))
        self.assertEqual(last["loginFailuresPerSecond"], round(10 / 30, 3))
        self.assertEqual(last["throttledPerSecond"], round(1 / 30, 3))
        self.assertEqual(self.document()["inFlight"], 4)

    def test_window(self) -> None:
        """
        Only the last minute counts: requests of long ago drop out.
        """
        metrics = self.harness.gateway.metrics
        clock = self.harness.clock
        for _ in range(600):
            metrics.observe_request("KV", b"GET", 200, 0.01)
        for _ in range(30):
            clock.advance(SAMPLE_SECONDS)
            self.status.sample()
        last = self.document()["lastMinute"]
        self.assertEqual(last["requestsPerSecond"], 0)
        self.assertLessEqual(last["seconds"], 60)
        self.assertEqual(self.document()["totals"]["requests"], 600)

    def test_sampler(self) -> None:
        """
        The sampler samples every few seconds on the given clock, and stops.
        """
        metrics = self.harness.gateway.metrics
        sampler = StatusSampler(self.status, self.harness.clock)
        sampler.startService()
        for _ in range(12):
            metrics.observe_request("KV", b"GET", 200, 0.01)
            self.harness.clock.advance(SAMPLE_SECONDS)
        # Sampled along the way: the first minute's requests are all seen,
        # over the whole window.
        last = self.status.rates()
        self.assertEqual(last["seconds"], 60)
        self.assertEqual(last["requests"], round(12 / 60, 3))
        sampler.stopService()
        before = len(self.harness.clock.getDelayedCalls())
        self.harness.clock.advance(SAMPLE_SECONDS * 3)
        self.assertEqual(len(self.harness.clock.getDelayedCalls()), before)

    def test_shared_state(self) -> None:
        """
        A shared state store's connection shows.
        """
        self.harness.gateway.metrics.state = StateStats(False, 3, 1, 0.0)
        self.assertEqual(
            self.document()["state"],
            {"shared": True, "connected": False, "reconnects": 3, "revocationsSeen": 1},
        )

    def test_page(self) -> None:
        """
        ``/status`` is one HTML page reloading itself, with no external
        asset (no script, stylesheet, image or frame from elsewhere, and a
        policy forbidding them), and the figures of ``/status.json``.
        """
        metrics = self.harness.gateway.metrics
        for _ in range(12):
            metrics.observe_request("KV", b"GET", 200, 0.01)
        self.harness.clock.advance(6)
        response, body = self.get("/status")
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"),
            [b"text/html; charset=utf-8"],
        )
        [policy] = response.headers.getRawHeaders(b"content-security-policy")
        self.assertIn(b"default-src 'none'", policy)
        page = body.decode("utf-8")
        self.assertIn('<meta http-equiv="refresh" content="3">', page)
        self.assertNotRegex(page, r"<script|<link|<img|<iframe|src=|url\(|@import")
        self.assertIn('<b id="requests-per-second">2.00</b>', page)
        self.assertIn("http://build-2.test", page)
        self.assertIn("/etc/metagateway.toml", page)

    def test_page_escapes(self) -> None:
        """
        Every value on the page is escaped.
        """
        document = self.document()
        document["routes"][0]["name"] = "<script>x</script>"
        document["listeners"] = ['"><img src=x>']
        page = render_page(document)
        self.assertNotIn("<script>", page)
        self.assertNotIn("<img", page)

    def test_other_paths(self) -> None:
        """
        Other paths and methods are the JSON ``404``; ``/metrics`` stays.
        """
        for path in ("/status.html", "/status.json/x", "/"):
            response, body = self.get(path)
            self.assertEqual(response.code, 404, path)
            self.assertEqual(json.loads(body)["code"], "NOT_FOUND")
        response = self.successResultOf(
            self.client.post("http://metrics.test/status.json")
        )
        self.assertEqual(response.code, 404)
        response, body = self.get("/metrics")
        self.assertEqual(response.code, 200)
        self.assertTrue(re.search(rb"^metagateway_info", body, re.M))

    def test_without_status(self) -> None:
        """
        A metrics resource without a status answers ``/status`` ``404``.
        """
        client = StubTreq(MetricsResource(self.harness.gateway.metrics))
        response = self.successResultOf(client.get("http://metrics.test/status"))
        self.assertEqual(response.code, 404)
