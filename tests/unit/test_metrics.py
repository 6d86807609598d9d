"""
Tests for :mod:`metagateway.observability.metrics`: what is counted, the Prometheus text
exposition, the measured credential store, and the ``/metrics`` resource.
"""

from __future__ import annotations

import json
import re
from typing import Any

from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from metagateway import __version__
from metagateway.auth.passwords import make_record
from metagateway.credentials.interfaces import (
    AccountRecord,
    ICredentialStore,
    StoreUnavailable,
    UnknownAccount,
)
from metagateway.credentials.memory import MemoryCredentialStore
from metagateway.observability.exposition import CONTENT_TYPE
from metagateway.observability.metrics import (
    LATENCY_BUCKETS,
    Histogram,
    MeasuredCredentialStore,
    Metrics,
    method_label,
    status_class,
)
from metagateway.observability.metricsite import MetricsResource
from metagateway.testing import (
    PASSWORD,
    USERNAME,
    ChannelHarness,
    FakeResponse,
    GatewayHarness,
    StubTreq,
    make_config,
)
from tests.unit.test_exposition import families

#: One sample line of the text format: name, optional labels, value.
SAMPLE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? '
    r"(-?[0-9.e+-]+|\+Inf|NaN)$"
)


#: One ``key="value"`` label of a sample.
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def canonical(key: str) -> str:
    """
    A sample's ``name{labels}`` with its labels sorted by name (as
    ``prometheus_client`` writes them), so that tests may name them in any
    order.
    """
    name, brace, labels = key.partition("{")
    if not brace:
        return key
    pairs = sorted(LABEL.findall(labels))
    return "%s{%s}" % (name, ",".join('%s="%s"' % pair for pair in pairs))


class Samples(dict[str, float]):
    """
    An exposition's samples by ``name{labels}``, looked up with the labels
    in any order.
    """

    def __getitem__(self, key: str) -> float:
        return super().__getitem__(canonical(key))

    def __contains__(self, key: object) -> bool:
        return super().__contains__(canonical(str(key)))


def samples(exposition: bytes) -> Samples:
    """
    Parse an exposition into ``{'name{labels}': value}``, checking every
    line's syntax and that each family is announced before its samples.
    """
    text = exposition.decode("utf-8")
    assert text.endswith("\n")
    announced: set[str] = set()
    found = Samples()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            announced.add(line.split()[2])
            continue
        if line.startswith("# HELP "):
            continue
        assert SAMPLE.match(line), line
        key, _, value = line.rpartition(" ")
        name = key.split("{")[0]
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in announced or family in announced, line
        found[canonical(key)] = float(value)
    return found


def get(path: bytes) -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: gateway.test\r\n\r\n"


class LabelTests(SynchronousTestCase):
    """
    Label values stay few whatever clients send.
    """

    def test_methods(self) -> None:
        """
        The usual methods are their own label; anything else is ``OTHER``.
        """
        self.assertEqual(method_label(b"GET"), "GET")
        self.assertEqual(method_label(b"DELETE"), "DELETE")
        self.assertEqual(method_label(b"BREW"), "OTHER")

    def test_status_classes(self) -> None:
        """
        Statuses are counted by class.
        """
        self.assertEqual(
            [status_class(s) for s in (101, 204, 302, 404, 504, 99, 600)],
            ["1xx", "2xx", "3xx", "4xx", "5xx", "other", "other"],
        )


class HistogramTests(SynchronousTestCase):
    """
    The histogram's buckets.
    """

    def test_cumulative(self) -> None:
        """
        Each observation counts in the first bucket whose bound holds it
        (bounds inclusive), else in the last (``+Inf``); the sum and
        count follow. The exposition makes them cumulative.
        """
        histogram = Histogram((0.1, 1.0))
        for value in (0.05, 0.1, 0.5, 7.0):
            histogram.observe(value)
        self.assertEqual(histogram.counts, [2, 1, 1])
        self.assertEqual((histogram.sum, histogram.count), (7.65, 4))

    def test_exposed_cumulative(self) -> None:
        """
        Exposed, buckets are cumulative and end in ``+Inf``.
        """
        metrics = Metrics()
        for value in (0.0005, 0.003, 99.0):
            metrics.observe_request("KV", b"GET", 200, value)
        found = samples(metrics.exposition())
        prefix = 'metagateway_request_duration_seconds_bucket{route="KV",le='
        self.assertEqual(found[prefix + '"0.001"}'], 1)
        self.assertEqual(found[prefix + '"0.005"}'], 2)
        self.assertEqual(found[prefix + '"60.0"}'], 2)
        self.assertEqual(found[prefix + '"+Inf"}'], 3)
        self.assertEqual(
            found['metagateway_request_duration_seconds_count{route="KV"}'], 3
        )


class RequestMetricsTests(SynchronousTestCase):
    """
    Requests through a gateway are counted by route, method and status
    class, timed per route, and the ones in flight are gauged.
    """

    def setUp(self) -> None:
        self.harness = ChannelHarness(upstream_timeout=5.0)
        self.metrics = self.harness.gateway.metrics

    def test_counted(self) -> None:
        """
        Each request counts once under its route, method and status class.
        """
        self.harness.send(get(b"/health"))
        self.harness.send(get(b"/health"))
        self.harness.send(get(b"/nowhere"))
        self.harness.send(b"BREW /kv/pot HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
        self.harness.agent.calls[0].answer(
            FakeResponse(418, Headers(), length=0)
        ).finish()
        self.assertEqual(
            self.metrics.requests,
            {
                ("HEALTH", "GET", "2xx"): 2,
                ("CORE", "GET", "4xx"): 1,
                ("KV", "OTHER", "4xx"): 1,
            },
        )
        found = samples(self.metrics.exposition())
        self.assertEqual(
            found[
                'metagateway_requests_total{route="HEALTH",method="GET",status="2xx"}'
            ],
            2,
        )

    def test_latency(self) -> None:
        """
        The time from the request to the end of its answer is observed in
        its route's histogram.
        """
        self.harness.send(get(b"/kv/a"))
        self.harness.clock.advance(0.3)
        self.harness.agent.calls[0].answer(
            FakeResponse(200, Headers(), length=0)
        ).finish()
        found = samples(self.metrics.exposition())
        prefix = 'metagateway_request_duration_seconds_bucket{route="KV",le='
        self.assertEqual(found[prefix + '"0.25"}'], 0)
        self.assertEqual(found[prefix + '"0.5"}'], 1)
        self.assertEqual(found[prefix + '"+Inf"}'], 1)
        self.assertAlmostEqual(
            found['metagateway_request_duration_seconds_sum{route="KV"}'], 0.3
        )
        self.assertEqual(
            found['metagateway_request_duration_seconds_count{route="KV"}'], 1
        )
        self.assertEqual(
            len(
                [
                    k
                    for k in found
                    if k.startswith("metagateway_request_duration_seconds_bucket{")
                    and 'route="KV"' in k
                ]
            ),
            len(LATENCY_BUCKETS) + 1,
        )

    def test_in_flight(self) -> None:
        """
        A request waiting for its upstream is in flight until answered.
        """
        self.harness.send(get(b"/kv/a"))
        self.assertEqual(self.metrics.in_flight, 1)
        found = samples(self.metrics.exposition())
        self.assertEqual(found["metagateway_requests_in_flight"], 1)
        self.harness.agent.calls[0].answer(
            FakeResponse(200, Headers(), length=0)
        ).finish()
        self.assertEqual(self.metrics.in_flight, 0)

    def test_upstream_errors(self) -> None:
        """
        Upstream timeouts, refusals and missing targets are counted by
        route and kind.
        """
        self.harness.send(get(b"/kv/a"))
        self.harness.clock.advance(6)
        self.harness.send(get(b"/kv/b"))
        self.harness.agent.calls[1].fail(ConnectionRefusedError())
        other = ChannelHarness(services={"KV": "http://kv.test"})
        other.send(get(b"/hq/x"))
        self.assertEqual(
            self.metrics.upstream_errors,
            {("KV", "timeout"): 1, ("KV", "unavailable"): 1},
        )
        self.assertEqual(
            other.gateway.metrics.upstream_errors, {("BASE", "missing_target"): 1}
        )
        found = samples(self.metrics.exposition())
        self.assertEqual(
            found['metagateway_upstream_errors_total{route="KV",error="timeout"}'], 1
        )

    def test_gateways_apart(self) -> None:
        """
        Two gateways in one process count apart.
        """
        other = ChannelHarness()
        self.harness.send(get(b"/health"))
        self.assertEqual(other.gateway.metrics.requests, {})
        self.assertIsNot(other.gateway.metrics, self.metrics)


@implementer(ICredentialStore)
class SlowStore:
    """
    A store whose lookups the test answers.
    """

    def __init__(self) -> None:
        self.pending: list[Deferred[AccountRecord]] = []

    def lookup(self, username: str) -> Deferred[AccountRecord]:
        d: Deferred[AccountRecord] = Deferred()
        self.pending.append(d)
        return d


@implementer(ICredentialStore)
class BrokenStore:
    """
    A store that cannot answer.
    """

    def lookup(self, username: str) -> Deferred[AccountRecord]:
        return fail(StoreUnavailable("down"))


class LoginMetricsTests(SynchronousTestCase):
    """
    Logins are counted by outcome.
    """

    def login(
        self, harness: GatewayHarness, password: str, path: str = "/auth/login"
    ) -> int:
        response, _ = harness.request(
            self,
            "POST",
            path,
            data=json.dumps({"username": USERNAME, "password": password}).encode(),
        )
        return int(response.code)

    def test_outcomes(self) -> None:
        """
        Successes, wrong passwords, malformed requests and throttled
        attempts each have their outcome.
        """
        harness = GatewayHarness(make_config(login_failures_per_user=2))
        self.assertEqual(self.login(harness, PASSWORD), 200)
        self.assertEqual(self.login(harness, PASSWORD, "/core/auth/login"), 200)
        self.assertEqual(self.login(harness, "wrong"), 401)
        self.assertEqual(self.login(harness, "wrong"), 401)
        self.assertEqual(self.login(harness, "wrong"), 429)
        harness.request(self, "POST", "/auth/login", data=b"{}")
        self.assertEqual(
            harness.gateway.metrics.logins,
            {
                ("password", "success"): 2,
                ("password", "invalid_credentials"): 2,
                ("password", "throttled"): 1,
                ("password", "invalid_request"): 1,
            },
        )
        found = samples(harness.gateway.metrics.exposition())
        self.assertEqual(
            found['metagateway_logins_total{kind="password",outcome="success"}'], 2
        )

    def test_store_unavailable(self) -> None:
        """
        A store that cannot answer: the login's outcome is
        ``store_unavailable`` and the lookup's result ``unavailable``.
        """
        harness = GatewayHarness(store=BrokenStore())
        self.assertEqual(self.login(harness, PASSWORD), 503)
        metrics = harness.gateway.metrics
        self.assertEqual(metrics.logins, {("password", "store_unavailable"): 1})
        self.assertEqual(metrics.store_lookups, {"unavailable": 1})
        self.flushLoggedErrors()

    def test_github(self) -> None:
        """
        A GitHub sign-in without configuration counts as ``not_configured``.
        """
        harness = GatewayHarness()
        harness.request(self, "POST", "/core/auth/github", data=b'{"code": "x"}')
        self.assertEqual(
            harness.gateway.metrics.logins, {("github", "not_configured"): 1}
        )

    def test_guest_not_a_login(self) -> None:
        """
        Guest tokens are not logins.
        """
        harness = GatewayHarness()
        harness.request(self, "POST", "/auth/guest", data=b"{}")
        self.assertEqual(harness.gateway.metrics.logins, {})


class MeasuredStoreTests(SynchronousTestCase):
    """
    :class:`MeasuredCredentialStore` counts and times lookups.
    """

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.metrics = Metrics()
        self.record = make_record(USERNAME, PASSWORD)

    def test_interface(self) -> None:
        """
        It is a credential store.
        """
        store = MeasuredCredentialStore(
            MemoryCredentialStore(), self.metrics, self.clock.seconds
        )
        self.assertTrue(verifyObject(ICredentialStore, store))

    def test_results(self) -> None:
        """
        Lookups are counted by result, and answered as the measured store
        answers them.
        """
        store = MeasuredCredentialStore(
            MemoryCredentialStore([self.record]), self.metrics, self.clock.seconds
        )
        self.assertEqual(self.successResultOf(store.lookup(USERNAME)), self.record)
        self.failureResultOf(store.lookup("nobody"), UnknownAccount)
        broken = MeasuredCredentialStore(
            BrokenStore(), self.metrics, self.clock.seconds
        )
        self.failureResultOf(broken.lookup(USERNAME), StoreUnavailable)
        self.assertEqual(
            self.metrics.store_lookups, {"found": 1, "unknown": 1, "unavailable": 1}
        )

    def test_latency(self) -> None:
        """
        A lookup's time goes into the store latency histogram.
        """
        slow = SlowStore()
        store = MeasuredCredentialStore(slow, self.metrics, self.clock.seconds)
        d = store.lookup(USERNAME)
        self.clock.advance(0.2)
        slow.pending[0].callback(self.record)
        self.successResultOf(d)
        found = samples(self.metrics.exposition())
        prefix = "metagateway_credential_store_lookup_seconds"
        self.assertEqual(found[prefix + '_bucket{le="0.1"}'], 0)
        self.assertEqual(found[prefix + '_bucket{le="0.25"}'], 1)
        self.assertAlmostEqual(found[prefix + "_sum"], 0.2)
        self.assertEqual(found[prefix + "_count"], 1)

    def test_raises(self) -> None:
        """
        A store that raises instead of failing its Deferred counts as an
        ``error`` and the exception goes on.
        """

        @implementer(ICredentialStore)
        class Raising:
            def lookup(self, username: str) -> Any:
                raise RuntimeError("bug")

        store = MeasuredCredentialStore(Raising(), self.metrics, self.clock.seconds)
        self.assertRaises(RuntimeError, store.lookup, USERNAME)
        self.assertEqual(self.metrics.store_lookups, {"error": 1})


#: What the hand-written exposition wrote for ``ExpositionTests.test_whole_text``'s
#: counters (``tests/unit/handwritten_exposition.py`` still writes it).
WHOLE_TEXT = """\
# HELP metagateway_info The gateway's version.
# TYPE metagateway_info gauge
metagateway_info{worker="2",version="VERSION"} 1
# HELP metagateway_requests_total Requests answered, by route, method and status class.
# TYPE metagateway_requests_total counter
metagateway_requests_total{worker="2",route="KV",method="GET",status="5xx"} 1
metagateway_requests_total{worker="2",route="a\\"b",method="OTHER",status="2xx"} 1
# HELP metagateway_requests_in_flight Requests received and not yet answered.
# TYPE metagateway_requests_in_flight gauge
metagateway_requests_in_flight{worker="2"} 1
# HELP metagateway_request_duration_seconds Time from receiving a request to the end of its answer, by route.
# TYPE metagateway_request_duration_seconds histogram
metagateway_request_duration_seconds_bucket{worker="2",route="KV",le="0.001"} 0
metagateway_request_duration_seconds_bucket{worker="2",route="KV",le="0.0025"} 0
metagateway_request_duration_seconds_bucket{worker="2",route="KV",le="0.005"} 1
metagateway_request_duration_seconds_bucket{worker="2",route="KV",le="0.01"} 1
metagateway_request_duration_seconds_bucket{worker="2",route="KV",le="0.025"} 1
metagateway_request_duration_seconds_bucket{worker="2",route="KV",le="0.05"} 1
metagateway_request_duration_seconds_bucket{worker="2",route="KV",le="0.1"} 1
metagateway_request_duration_seconds_bucket{worker="2",route="KV",le="0.25"} 1
metagateway_request_duration_seconds_bucket{worker="2",route="KV",le="0.5"} 1
metagateway_request_duration_seconds_bucket{worker="2",route="KV",le="1.0"} 1
metagateway_request_duration_seconds_bucket{worker="2",route="KV",le="2.5"} 1
metagateway_request_duration_seconds_bucket{worker="2",route="KV",le="5.0"} 1
metagateway_request_duration_seconds_bucket{worker="2",route="KV",le="10.0"} 1
metagateway_request_duration_seconds_bucket{worker="2",route="KV",le="30.0"} 1
metagateway_request_duration_seconds_bucket{worker="2",route="KV",le="60.0"} 1
metagateway_request_duration_seconds_bucket{worker="2",route="KV",le="+Inf"} 1
metagateway_request_duration_seconds_sum{worker="2",route="KV"} 0.003
metagateway_request_duration_seconds_count{worker="2",route="KV"} 1
metagateway_request_duration_seconds_bucket{worker="2",route="a\\"b",le="0.001"} 0
metagateway_request_duration_seconds_bucket{worker="2",route="a\\"b",le="0.0025"} 0
metagateway_request_duration_seconds_bucket{worker="2",route="a\\"b",le="0.005"} 0
metagateway_request_duration_seconds_bucket{worker="2",route="a\\"b",le="0.01"} 0
metagateway_request_duration_seconds_bucket{worker="2",route="a\\"b",le="0.025"} 0
metagateway_request_duration_seconds_bucket{worker="2",route="a\\"b",le="0.05"} 0
metagateway_request_duration_seconds_bucket{worker="2",route="a\\"b",le="0.1"} 0
metagateway_request_duration_seconds_bucket{worker="2",route="a\\"b",le="0.25"} 0
metagateway_request_duration_seconds_bucket{worker="2",route="a\\"b",le="0.5"} 1
metagateway_request_duration_seconds_bucket{worker="2",route="a\\"b",le="1.0"} 1
metagateway_request_duration_seconds_bucket{worker="2",route="a\\"b",le="2.5"} 1
metagateway_request_duration_seconds_bucket{worker="2",route="a\\"b",le="5.0"} 1
metagateway_request_duration_seconds_bucket{worker="2",route="a\\"b",le="10.0"} 1
metagateway_request_duration_seconds_bucket{worker="2",route="a\\"b",le="30.0"} 1
metagateway_request_duration_seconds_bucket{worker="2",route="a\\"b",le="60.0"} 1
metagateway_request_duration_seconds_bucket{worker="2",route="a\\"b",le="+Inf"} 1
metagateway_request_duration_seconds_sum{worker="2",route="a\\"b"} 0.5
metagateway_request_duration_seconds_count{worker="2",route="a\\"b"} 1
# HELP metagateway_upstream_errors_total Upstream failures by route and kind (timeout, unavailable, missing_target, truncated).
# TYPE metagateway_upstream_errors_total counter
metagateway_upstream_errors_total{worker="2",route="KV",error="timeout"} 1
# HELP metagateway_logins_total Login attempts by kind (password, github) and outcome.
# TYPE metagateway_logins_total counter
metagateway_logins_total{worker="2",kind="password",outcome="success"} 1
# HELP metagateway_credential_store_lookups_total Credential-store lookups by result (found, unknown, unavailable, error).
# TYPE metagateway_credential_store_lookups_total counter
metagateway_credential_store_lookups_total{worker="2",result="found"} 1
# HELP metagateway_credential_store_lookup_seconds Credential-store lookup latency.
# TYPE metagateway_credential_store_lookup_seconds histogram
metagateway_credential_store_lookup_seconds_bucket{worker="2",le="0.001"} 0
metagateway_credential_store_lookup_seconds_bucket{worker="2",le="0.005"} 0
metagateway_credential_store_lookup_seconds_bucket{worker="2",le="0.01"} 0
metagateway_credential_store_lookup_seconds_bucket{worker="2",le="0.025"} 1
metagateway_credential_store_lookup_seconds_bucket{worker="2",le="0.05"} 1
metagateway_credential_store_lookup_seconds_bucket{worker="2",le="0.1"} 1
metagateway_credential_store_lookup_seconds_bucket{worker="2",le="0.25"} 1
metagateway_credential_store_lookup_seconds_bucket{worker="2",le="0.5"} 1
metagateway_credential_store_lookup_seconds_bucket{worker="2",le="1.0"} 1
metagateway_credential_store_lookup_seconds_bucket{worker="2",le="2.5"} 1
metagateway_credential_store_lookup_seconds_bucket{worker="2",le="5.0"} 1
metagateway_credential_store_lookup_seconds_bucket{worker="2",le="10.0"} 1
metagateway_credential_store_lookup_seconds_bucket{worker="2",le="+Inf"} 1
metagateway_credential_store_lookup_seconds_sum{worker="2"} 0.02
metagateway_credential_store_lookup_seconds_count{worker="2"} 1
"""


class ExpositionTests(SynchronousTestCase):
    """
    The text format.
    """

    def test_empty(self) -> None:
        """
        A fresh gateway's exposition is valid and announces every family.
        """
        text = Metrics().exposition().decode("utf-8")
        samples(text.encode("utf-8"))
        for family, kind in [
            ("metagateway_info", "gauge"),
            ("metagateway_requests_total", "counter"),
            ("metagateway_requests_in_flight", "gauge"),
            ("metagateway_request_duration_seconds", "histogram"),
            ("metagateway_upstream_errors_total", "counter"),
            ("metagateway_logins_total", "counter"),
            ("metagateway_credential_store_lookups_total", "counter"),
            ("metagateway_credential_store_lookup_seconds", "histogram"),
        ]:
            self.assertIn("# TYPE %s %s\n" % (family, kind), text)

    def test_worker_label(self) -> None:
        """
        A worker's samples carry its ``worker`` label.
        """
        metrics = Metrics(worker=3)
        metrics.observe_request("KV", b"GET", 200, 0.01)
        found = samples(metrics.exposition())
        self.assertEqual(found['metagateway_requests_in_flight{worker="3"}'], 0)
        self.assertEqual(
            found[
                'metagateway_requests_total{worker="3",route="KV",method="GET",status="2xx"}'
            ],
            1,
        )
        self.assertIn(
            'metagateway_credential_store_lookup_seconds_count{worker="3"}', found
        )

    def test_escaping(self) -> None:
        """
        Label values are escaped.
        """
        metrics = Metrics()
        metrics.observe_request('a"b\\c\nd', b"GET", 200, 0.01)
        text = metrics.exposition().decode("utf-8")
        self.assertIn('route="a\\"b\\\\c\\nd"', text)
        samples(text.encode("utf-8"))

    def test_whole_text(self) -> None:
        """
        The exposition of a worker's counters holds what the former
        hand-written text did (:data:`WHOLE_TEXT`, byte for byte what the
        gateway wrote before ``prometheus_client``): every family with its
        help and type, every sample with its labels and value.
        """
        metrics = Metrics(2)
        metrics.observe_request("KV", b"GET", 504, 0.003, error="UPSTREAM_TIMEOUT")
        metrics.observe_request('a"b', b"BREW", 200, 0.5)
        metrics.observe_login("password", 200, None)
        metrics.observe_store_lookup(0.02, "found")
        metrics.in_flight = 1
        expected = WHOLE_TEXT.replace("VERSION", __version__).encode("utf-8")
        self.assertEqual(families(metrics.exposition()), families(expected))
        # Same samples and values, as prometheus_client writes them.
        self.assertEqual(samples(metrics.exposition()), samples(expected))


class ResourceTests(SynchronousTestCase):
    """
    :class:`MetricsResource` answers scrapes.
    """

    def setUp(self) -> None:
        self.metrics = Metrics()
        self.metrics.observe_request("KV", b"GET", 200, 0.01)
        self.client = StubTreq(MetricsResource(self.metrics))

    def test_scrape(self) -> None:
        """
        ``GET /metrics`` answers the exposition as Prometheus text.
        """
        response = self.successResultOf(self.client.get("http://metrics.test/metrics"))
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [CONTENT_TYPE]
        )
        body = self.successResultOf(response.content())
        self.assertEqual(body, self.metrics.exposition())

    def test_other_paths(self) -> None:
        """
        Any other path, or another method, is the JSON ``404``.
        """
        for method, path in [("GET", "/"), ("GET", "/metrics/x"), ("POST", "/metrics")]:
            response = self.successResultOf(
                self.client.request(method, "http://metrics.test" + path)
            )
            self.assertEqual(response.code, 404)
            document = json.loads(self.successResultOf(response.content()))
            self.assertEqual(document["code"], "NOT_FOUND")

    def test_public_port(self) -> None:
        """
        The gateway's own resource has no ``/metrics``: a JSON ``404``.
        """
        harness = GatewayHarness()
        response, body = harness.request(self, "GET", "/metrics")
        self.assertEqual(response.code, 404)
        self.assertEqual(json.loads(body)["code"], "NOT_FOUND")
