"""
Tests for :class:`metagateway.gateway.UpstreamEndpoints`, the proxy
``Agent``'s endpoint factory.
"""

from __future__ import annotations

from typing import Any

from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI, BrowserLikePolicyForHTTPS
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS

from metagateway.gateway import UpstreamEndpoints


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
