"""
The proxy's HTTP client: endpoints built once per upstream, and a lean
``Agent`` for the gateway's own upstreams on the shared connection pool.
"""

from __future__ import annotations

import io
import re
from typing import Any, Optional, cast

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL.crypto import Error as OpenSSLCryptoError
from OpenSSL.SSL import Error as OpenSSLError
from zope.interface import implementer

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.error import VerifyError
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IStreamClientEndpoint,
)
from twisted.internet.ssl import (
    Certificate,
    PrivateCertificate,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.internet.task import Cooperator
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    FileBodyProducer,
    HTTPConnectionPool,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import (
    IAgent,
    IAgentEndpointFactory,
    IBodyProducer,
    IPolicyForHTTPS,
    IResponse,
)

from metagateway.config import ConfigurationError
from metagateway.proxy.twisted_internals import pool_request


def body_producer(cooperator: Cooperator, data: Any) -> IBodyProducer:
    """
    treq's conversion of a request's ``data`` to a body (its
    ``data_to_body_producer``), with bytes and files written by
    ``cooperator`` instead of Twisted's global one.
    """
    if isinstance(data, bytes):
        data = io.BytesIO(data)
    if hasattr(data, "read"):
        return FileBodyProducer(data, cooperator=cooperator)
    return IBodyProducer(data)


def _read_pem(path: str, name: str) -> bytes:
    """
    The bytes of a PEM file.

    :raises ConfigurationError: naming ``name`` and the file when it
        cannot be read.
    """
    try:
        with open(path, "rb") as f:
            return f.read(4 * 1024 * 1024)
    except OSError as e:
        raise ConfigurationError(
            "%s (%s): cannot be read: %s" % (name, path, e.strerror or e)
        ) from None


def load_trust_root(path: str) -> Any:
    """
    The certificates of the PEM bundle ``path`` as a trust root: an
    upstream's certificate must chain to one of them.

    :raises ConfigurationError: one line naming the option, the file and
        the reason.
    """
    name = "--upstream-ca / METAGATEWAY_UPSTREAM_CA"
    data = _read_pem(path, name)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigurationError(
            "%s (%s): no PEM certificate in it" % (name, path)
        ) from None
    return trustRootFromCertificates(
        [Certificate.loadPEM(c.public_bytes(Encoding.PEM)) for c in certificates]
    )


def load_client_certificate(path: str) -> PrivateCertificate:
    """
    The client certificate and its key, both in the PEM file ``path``.

    :raises ConfigurationError: one line naming the option, the file and
        the reason.
    """
    name = "--upstream-client-cert / METAGATEWAY_UPSTREAM_CLIENT_CERT"
    data = _read_pem(path, name)
    if b"PRIVATE KEY-----" not in data or b"CERTIFICATE-----" not in data:
        raise ConfigurationError(
            "%s (%s): needs a PEM certificate and its private key in one file"
            % (name, path)
        )
    try:
        certificate: PrivateCertificate = PrivateCertificate.loadPEM(data)
    except VerifyError:
        raise ConfigurationError(
            "%s (%s): the private key is not the certificate's" % (name, path)
        ) from None
    except (OpenSSLCryptoError, OpenSSLError, ValueError) as e:
        raise ConfigurationError(
            "%s (%s): unusable certificate or key: %s" % (name, path, e)
        ) from None
    return certificate


@implementer(IPolicyForHTTPS)
class UpstreamTLSPolicy:
    """
    How the proxy checks ``https://`` upstreams: as a browser does (the
    chain to a trust root, and the host name), against ``trust_root``
    (``--upstream-ca``) or the system's roots, presenting
    ``client_certificate`` (``--upstream-client-cert``) when the upstream
    asks for one (mutual TLS).

    :param trust_root: the roots (an ``IOpenSSLTrustRoot``, which Twisted
        does not export publicly); the platform's if ``None``.
    :param client_certificate: the certificate and key presented, if any.
    """

    def __init__(
        self,
        trust_root: Optional[Any] = None,
        client_certificate: Optional[PrivateCertificate] = None,
    ) -> None:
        self.trust_root = trust_root
        self.client_certificate = client_certificate

    def creatorForNetloc(
        self, hostname: bytes, port: int
    ) -> IOpenSSLClientConnectionCreator:
        """
        The TLS settings for a connection to ``hostname``.
        """
        kwargs: dict[str, Any] = {}
        if self.trust_root is not None:
            kwargs["trustRoot"] = self.trust_root
        if self.client_certificate is not None:
            kwargs["clientCertificate"] = self.client_certificate
        return optionsForClientTLS(hostname.decode("ascii"), **kwargs)


def upstream_tls_policy(
    ca_path: Optional[str], client_cert_path: Optional[str]
) -> IPolicyForHTTPS:
    """
    The TLS policy for upstreams: a browser's without ``--upstream-ca`` and
    ``--upstream-client-cert``, else an :class:`UpstreamTLSPolicy` with
    the files read now.

    :raises ConfigurationError: when a file cannot be read or used.
    """
    if ca_path is None and client_cert_path is None:
        return BrowserLikePolicyForHTTPS()
    return UpstreamTLSPolicy(
        load_trust_root(ca_path) if ca_path is not None else None,
        load_client_certificate(client_cert_path)
        if client_cert_path is not None
        else None,
    )


class PoolPartition:
    """
    A share of an :class:`~twisted.web.client.HTTPConnectionPool` whose
    connections are kept apart from the rest of the pool's: every key is
    tagged, so a connection opened under one TLS policy (a route's own
    ``upstream_ca`` and ``upstream_client_cert``) is never reused for a
    request under another, though both go to the same ``https://`` host.
    Connections are still the pool's: kept alive, timed out and closed
    with it. Pass it as an ``Agent``'s (or :class:`UpstreamAgent`'s)
    ``pool``.

    :param pool: the shared pool.
    :param tag: what sets this share's connections apart (equal tags share
        connections).
    """

    def __init__(self, pool: HTTPConnectionPool, tag: Any) -> None:
        self.pool = pool
        self.tag = tag

    @property
    def persistent(self) -> bool:
        """
        Whether the pool keeps connections alive.
        """
        return bool(self.pool.persistent)

    def getConnection(self, key: Any, endpoint: IStreamClientEndpoint) -> Any:
        """
        A connection to ``key`` made under this share's tag (see
        ``HTTPConnectionPool.getConnection``).
        """
        return self.pool.getConnection((self.tag, key), endpoint)

    def closeCachedConnections(self) -> Deferred[None]:
        """
        Close the whole pool's idle connections.
        """
        return self.pool.closeCachedConnections()  # type: ignore[no-any-return]


@implementer(IAgentEndpointFactory)
class UpstreamEndpoints:
    """
    The proxy ``Agent``'s endpoints, built once per upstream rather than
    once per request.

    The ``Agent`` asks for an endpoint on every request, even when its pool
    has a connection to reuse, and its standard factory builds a new
    ``HostnameEndpoint`` each time (encoding the host name through IDNA).
    This one builds the same endpoints (TCP for ``http``; TCP and TLS, with
    ``policy``'s verification, for ``https``; the same connect timeout) and
    remembers them by scheme, host and port. A host that is an IPv4 or IPv6
    address gets a plain ``TCP4ClientEndpoint`` or ``TCP6ClientEndpoint``:
    nothing to resolve, so a refused connection is reported at once rather
    than after ``HostnameEndpoint``'s attempt delay. The proxy only ever asks for
    its configured upstreams; at most :attr:`max_cached` are kept.

    :param reactor: the reactor the endpoints connect with.
    :param policy: the TLS policy, such as ``BrowserLikePolicyForHTTPS()``.
    :param connect_timeout: seconds to wait for a connection; ``None`` for
        the endpoint's default.
    """

    max_cached = 64

    def __init__(
        self,
        reactor: Any,
        policy: IPolicyForHTTPS,
        connect_timeout: Optional[float] = None,
    ) -> None:
        self.reactor = reactor
        self.policy = policy
        self.connect_timeout = connect_timeout
        self._cache: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        """
        The endpoint for ``uri``'s scheme, host and port.

        :raises SchemeNotSupported: for a scheme other than ``http`` or
            ``https``.
        :raises ValueError: for a host that is not ASCII.
        """
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._cache.get(key)
        if endpoint is None:
            endpoint = self._build(uri)
            if len(self._cache) >= self.max_cached:
                self._cache.clear()
            self._cache[key] = endpoint
        return endpoint

    def _build(self, uri: Any) -> IStreamClientEndpoint:
        try:
            host = uri.host.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(
                "The host of the URI (%r) is not ASCII" % (uri.host,)
            ) from None
        kwargs: dict[str, Any] = {}
        if self.connect_timeout is not None:
            kwargs["timeout"] = self.connect_timeout
        endpoint: IStreamClientEndpoint
        # An address needs no name resolution: HostnameEndpoint would still
        # resolve it, and wait out its attempt delay (0.3 s) before it
        # reports a refused connection.
        if isIPAddress(host):
            endpoint = TCP4ClientEndpoint(self.reactor, host, uri.port, **kwargs)
        elif isIPv6Address(host):
            endpoint = TCP6ClientEndpoint(self.reactor, host, uri.port, **kwargs)
        else:
            endpoint = HostnameEndpoint(self.reactor, host, uri.port, **kwargs)
        if uri.scheme == b"http":
            return endpoint
        if uri.scheme == b"https":
            creator = self.policy.creatorForNetloc(uri.host, uri.port)
            return wrapClientTLS(creator, endpoint)
        raise SchemeNotSupported("Unsupported scheme: %r" % (uri.scheme,))


#: A request method as HTTP defines it (a token, RFC 9110 §9.1).
_METHOD = re.compile(rb"\A[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")

#: An absolute ``http`` or ``https`` URL as the proxy builds them: the
#: origin (no user information), then a path of visible ASCII.
_POOLED_URL = re.compile(rb"\A(https?://[^/?#@\s]+)(/[\x21-\x7e]*)\Z")


@implementer(IAgent)
class UpstreamAgent:
    """
    The proxy's HTTP client: a lean :class:`~twisted.web.client.Agent` for
    the gateway's own upstreams.

    For every request the stock ``Agent`` parses the URL (``urlparse``,
    several copies), validates it, looks up its endpoint and rebuilds the
    request target from the parsed parts. The proxy sends every request to
    a handful of origins, with a ``Host`` header already set: this agent
    splits the origin off the URL with one regular expression, remembers
    each origin's pool key and endpoint, and hands the pool's connection a
    request built by its public constructor (which still checks the method
    and the target), exactly as the ``Agent`` does
    (:func:`~metagateway.proxy.twisted_internals.pool_request`).
    Connections come from the same
    :class:`~twisted.web.client.HTTPConnectionPool`, so keep-alive, the
    retry of idempotent requests on a stale connection, and TLS (from the
    endpoints) are the ``Agent``'s.

    Anything else (no ``Host`` header, another scheme, user information in
    the URL, an unusual method) goes through a stock ``Agent`` on the same
    pool and endpoints, which behaves, and fails, as documented.

    :param reactor: the reactor.
    :param endpoints: makes (and caches) the upstreams' endpoints.
    :param pool: the persistent connection pool (or a
        :class:`PoolPartition` of it).
    """

    max_cached = 64

    def __init__(
        self,
        reactor: Any,
        endpoints: UpstreamEndpoints,
        pool: HTTPConnectionPool | PoolPartition,
    ) -> None:
        # A PoolPartition offers what pool_request and the Agent use of a
        # pool: getConnection and persistent.
        self.pool = cast(HTTPConnectionPool, pool)
        self.endpoints = endpoints
        self.fallback: IAgent = Agent.usingEndpointFactory(
            reactor, endpoints, pool=pool
        )
        self._origins: dict[bytes, tuple[tuple[bytes, bytes, int], Any]] = {}

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Optional[Headers] = None,
        bodyProducer: Optional[IBodyProducer] = None,
    ) -> Deferred[IResponse]:
        """
        Send ``method`` ``uri`` upstream (see ``IAgent.request``).
        """
        match = _POOLED_URL.match(uri)
        if (
            match is None
            or headers is None
            or not headers.hasHeader(b"host")
            or not _METHOD.match(method)
        ):
            return self.fallback.request(method, uri, headers, bodyProducer)
        origin, target = match.groups()
        known = self._origins.get(origin)
        if known is None:
            try:
                parsed = URI.fromBytes(origin)
                endpoint = self.endpoints.endpointForURI(parsed)
            except (ValueError, SchemeNotSupported):
                # The stock Agent fails such a URL as documented.
                return self.fallback.request(method, uri, headers, bodyProducer)
            known = ((parsed.scheme, parsed.host, parsed.port), endpoint)
            if len(self._origins) >= self.max_cached:
                self._origins.clear()
            self._origins[origin] = known
        key, endpoint = known
        return pool_request(
            self.pool, key, endpoint, method, target, headers, bodyProducer
        )
