"""
Tests for :class:`metagateway.proxy.upstream.UpstreamEndpoints`, the proxy
``Agent``'s endpoint factory, and :class:`~metagateway.proxy.upstream.UpstreamAgent`,
the proxy's HTTP client.
"""

from __future__ import annotations

from typing import Any

from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IPolicyForHTTPS

from metagateway.proxy.upstream import UpstreamAgent, UpstreamEndpoints


@implementer(IPolicyForHTTPS)
class RecordingPolicy:
    """
    A TLS policy that records what it was asked for and hands out the real
    policy's connection creators.
    """

    def __init__(self) -> None:
        self.asked: list[tuple[bytes, int]] = []
        self.real = BrowserLikePolicyForHTTPS()

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        self.asked.append((hostname, port))
        return self.real.creatorForNetloc(hostname, port)


def uri(url: bytes) -> URI:
    return URI.fromBytes(url)


class UpstreamEndpointsTests(SynchronousTestCase):
    """
    The endpoints are the standard ones, built once per upstream.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.policy = RecordingPolicy()
        self.endpoints = UpstreamEndpoints(self.reactor, self.policy, 7.5)

    def test_interface(self) -> None:
        """
        It provides ``IAgentEndpointFactory``.
        """
        verifyObject(IAgentEndpointFactory, self.endpoints)

    def test_same_upstream_same_endpoint(self) -> None:
        """
        Requests to one scheme, host and port share one endpoint, whatever
        their path; another port gets another.
        """
        first = self.endpoints.endpointForURI(uri(b"http://127.0.0.1:8080/a"))
        again = self.endpoints.endpointForURI(uri(b"http://127.0.0.1:8080/b?q=1"))
        other = self.endpoints.endpointForURI(uri(b"http://127.0.0.1:8081/a"))
        self.assertIs(first, again)
        self.assertIsNot(first, other)

    def test_http_connects_with_timeout(self) -> None:
        """
        An ``http`` endpoint connects over TCP to the URI's host and port,
        with the configured connect timeout.
        """
        endpoint = self.endpoints.endpointForURI(uri(b"http://127.0.0.1:8080/x"))
        endpoint.connect(Factory.forProtocol(Protocol))
        [(host, port, _, timeout, _)] = self.reactor.tcpClients
        self.assertEqual((host, port, timeout), ("127.0.0.1", 8080, 7.5))
        self.assertEqual(self.policy.asked, [])

    def test_https_verified(self) -> None:
        """
        An ``https`` endpoint takes its TLS connection creator from the
        policy, for the URI's host and port, once per upstream, and
        connects with the same timeout.
        """
        url = uri(b"https://127.0.0.1:8443/x")
        endpoint = self.endpoints.endpointForURI(url)
        self.assertIs(endpoint, self.endpoints.endpointForURI(url))
        self.assertEqual(self.policy.asked, [(b"127.0.0.1", 8443)])
        endpoint.connect(Factory.forProtocol(Protocol))
        [(host, port, _, timeout, _)] = self.reactor.tcpClients
        self.assertEqual((host, port, timeout), ("127.0.0.1", 8443, 7.5))

    def test_addresses_not_resolved(self) -> None:
        """
        A host that is an IPv4 or IPv6 address gets a plain TCP endpoint
        (nothing to resolve); a name gets a ``HostnameEndpoint``.
        """
        four = self.endpoints.endpointForURI(uri(b"http://127.0.0.1:8080/"))
        six = self.endpoints.endpointForURI(uri(b"http://[::1]:8080/"))
        name = self.endpoints.endpointForURI(uri(b"http://localhost:8080/"))
        self.assertIsInstance(four, TCP4ClientEndpoint)
        self.assertIsInstance(six, TCP6ClientEndpoint)
        self.assertIsInstance(name, HostnameEndpoint)
        six.connect(Factory.forProtocol(Protocol))
        [(host, port, _, timeout, _)] = self.reactor.tcpClients
        self.assertEqual((host, port, timeout), ("::1", 8080, 7.5))

    def test_address_refused_at_once(self) -> None:
        """
        A refused connection to an address fails the connection attempt
        at once, with no time passing (``HostnameEndpoint`` waited out its
        0.3 s attempt delay first).
        """
        for url in (b"http://127.0.0.1:8080/", b"https://127.0.0.1:8443/"):
            reactor = MemoryReactorClock()
            endpoints = UpstreamEndpoints(reactor, self.policy, 7.5)
            attempt = endpoints.endpointForURI(uri(url)).connect(
                Factory.forProtocol(Protocol)
            )
            [(_, _, factory, _, _)] = reactor.tcpClients
            connector = reactor.connectors[0]
            factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
            self.failureResultOf(attempt, ConnectionRefusedError)
            self.assertEqual(reactor.seconds(), 0)

    def test_scheme_and_port_keyed(self) -> None:
        """
        ``http`` and ``https`` to the same host and port are different
        endpoints.
        """
        plain = self.endpoints.endpointForURI(uri(b"http://127.0.0.1:8443/"))
        tls = self.endpoints.endpointForURI(uri(b"https://127.0.0.1:8443/"))
        self.assertIsNot(plain, tls)

    def test_unsupported_scheme(self) -> None:
        """
        Another scheme is refused with ``SchemeNotSupported``, and nothing
        is remembered for it.
        """
        self.assertRaises(
            SchemeNotSupported,
            self.endpoints.endpointForURI,
            uri(b"ftp://127.0.0.1/x"),
        )
        self.assertRaises(
            SchemeNotSupported,
            self.endpoints.endpointForURI,
            uri(b"ftp://127.0.0.1/x"),
        )

    def test_non_ascii_host(self) -> None:
        """
        A host that is not ASCII is a ``ValueError``, as with Twisted's own
        factory.
        """
        self.assertRaises(
            ValueError,
            self.endpoints.endpointForURI,
            URI(b"http", b"h\xc3\xa9", b"h\xc3\xa9", 80, b"/", b"", b"", b""),
        )

    def test_bounded(self) -> None:
        """
        At most ``max_cached`` endpoints are remembered.
        """
        self.endpoints.max_cached = 3
        for port in range(8000, 8010):
            self.endpoints.endpointForURI(uri(b"http://127.0.0.1:%d/" % (port,)))
        self.assertLessEqual(len(self.endpoints._cache), 3)


class RecordingAgent:
    """
    Stands in for the stock ``Agent``: records what it was asked.
    """

    def __init__(self) -> None:
        self.asked: list[tuple[bytes, bytes]] = []

    def request(
        self, method: bytes, uri: bytes, headers: Any = None, body: Any = None
    ) -> Deferred[Any]:
        self.asked.append((method, uri))
        return succeed("fallback")


class RecordingProtocol:
    """
    Stands in for a pooled ``HTTP11ClientProtocol``.
    """

    def __init__(self) -> None:
        self.requests: list[Any] = []

    def request(self, request: Any) -> Deferred[Any]:
        self.requests.append(request)
        return succeed("answered")


class RecordingPool:
    """
    Stands in for the ``HTTPConnectionPool``: hands out one protocol.
    """

    persistent = True

    def __init__(self) -> None:
        self.protocol = RecordingProtocol()
        self.asked: list[tuple[Any, Any]] = []

    def getConnection(self, key: Any, endpoint: Any) -> Deferred[Any]:
        self.asked.append((key, endpoint))
        return succeed(self.protocol)


def with_host(host: bytes = b"up:8080") -> Headers:
    return Headers({b"Host": [host], b"X-Test": [b"1"]})


class UpstreamAgentTests(SynchronousTestCase):
    """
    The proxy's client sends requests to its upstreams through the pool
    without the stock ``Agent``'s per-request parsing, and leaves anything
    unusual to the stock ``Agent``.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.endpoints = UpstreamEndpoints(self.reactor, BrowserLikePolicyForHTTPS())
        self.pool = RecordingPool()
        self.agent = UpstreamAgent(self.reactor, self.endpoints, self.pool)  # type: ignore[arg-type]
        self.fallback = RecordingAgent()
        self.agent.fallback = self.fallback  # type: ignore[assignment]

    def test_interface(self) -> None:
        """
        It provides ``IAgent``.
        """
        verifyObject(IAgent, self.agent)

    def test_pooled_request(self) -> None:
        """
        The pool is asked for a connection keyed by scheme, host and port,
        to the upstream's endpoint; the request sent on it has the method,
        the path and query as given, the same headers and body, and is
        persistent.
        """
        headers = with_host()
        body = object()
        answer = self.successResultOf(
            self.agent.request(b"PUT", b"http://up:8080/a/b?c=d&e", headers, body)  # type: ignore[arg-type]
        )
        self.assertEqual(answer, "answered")
        [(key, endpoint)] = self.pool.asked
        self.assertEqual(key, (b"http", b"up", 8080))
        self.assertIs(endpoint, self.endpoints.endpointForURI(uri(b"http://up:8080/")))
        [sent] = self.pool.protocol.requests
        self.assertEqual(
            (sent.method, sent.uri, sent.headers, sent.bodyProducer, sent.persistent),
            (b"PUT", b"/a/b?c=d&e", headers, body, True),
        )
        self.assertEqual(self.fallback.asked, [])

    def test_default_ports(self) -> None:
        """
        Without a port, the scheme's default is the key's.
        """
        self.agent.request(b"GET", b"https://up/x", with_host(b"up"))
        self.agent.request(b"GET", b"http://up/x", with_host(b"up"))
        self.assertEqual(
            [key for key, _ in self.pool.asked],
            [(b"https", b"up", 443), (b"http", b"up", 80)],
        )

    def test_origin_remembered(self) -> None:
        """
        An origin's endpoint is looked up once; at most ``max_cached``
        origins are remembered.
        """
        asked = []
        real = self.endpoints.endpointForURI

        def counting(parsed: URI) -> Any:
            asked.append(parsed.port)
            return real(parsed)

        self.endpoints.endpointForURI = counting  # type: ignore[assignment, method-assign]
        self.agent.request(b"GET", b"http://up:1/a", with_host())
        self.agent.request(b"GET", b"http://up:1/b?x", with_host())
        self.assertEqual(asked, [1])
        self.agent.max_cached = 2
        for port in range(2, 9):
            self.agent.request(b"GET", b"http://up:%d/" % (port,), with_host())
        self.assertLessEqual(len(self.agent._origins), 2)

    def test_unusual_requests_go_to_the_stock_agent(self) -> None:
        """
        No ``Host`` header, no headers, user information, another scheme, no
        path, a target with a space, or a method that is not a token: the
        stock ``Agent`` takes the request.
        """
        cases = [
            (b"GET", b"http://up:8080/x", Headers()),
            (b"GET", b"http://up:8080/x", None),
            (b"GET", b"http://user:pw@up:8080/x", with_host()),
            (b"GET", b"ftp://up:8080/x", with_host()),
            (b"GET", b"http://up:8080", with_host()),
            (b"GET", b"http://up:8080/a b", with_host()),
            (b"GE T", b"http://up:8080/x", with_host()),
            (b"GET\r\nX: y", b"http://up:8080/x", with_host()),
        ]
        for method, url, headers in cases:
            self.assertEqual(
                self.successResultOf(self.agent.request(method, url, headers)),
                "fallback",
            )
        self.assertEqual(self.fallback.asked, [(m, u) for m, u, _ in cases])
        self.assertEqual(self.pool.asked, [])


class UpstreamAgentWireTests(SynchronousTestCase):
    """
    Through a real pool, the request reaches the wire as the stock
    ``Agent`` would write it, and the connection is reused.
    """

    def test_bytes_on_the_wire(self) -> None:
        """
        The request line carries the path and query; the headers are the
        ones given; the answer is parsed; the connection goes back to the
        pool and serves the next request.
        """
        reactor = MemoryReactorClock()
        pool = HTTPConnectionPool(reactor, persistent=True)
        agent = UpstreamAgent(
            reactor, UpstreamEndpoints(reactor, BrowserLikePolicyForHTTPS()), pool
        )
        answered = agent.request(
            b"GET", b"http://127.0.0.1:8080/p/q?r=s", with_host(b"127.0.0.1:8080")
        )
        [(host, port, factory, _, _)] = reactor.tcpClients
        self.assertEqual((host, port), ("127.0.0.1", 8080))
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        written = transport.value()
        self.assertTrue(written.startswith(b"GET /p/q?r=s HTTP/1.1\r\n"), written)
        self.assertIn(b"\r\nHost: 127.0.0.1:8080\r\n", written)
        self.assertIn(b"\r\nX-Test: 1\r\n", written)
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        response = self.successResultOf(answered)
        self.assertEqual(response.code, 200)
        transport.clear()
        agent.request(b"GET", b"http://127.0.0.1:8080/again", with_host())
        self.assertEqual(len(reactor.tcpClients), 1)
        self.assertTrue(transport.value().startswith(b"GET /again HTTP/1.1\r\n"))
