"""
The public API for running a gateway: build one from a
:class:`~metagateway.config.GatewayConfig`, mount its resource, start its
service. The daemon goes through this same code path.
"""

from __future__ import annotations

import io
import re
from functools import partial
from typing import Any, Container, Optional

from treq.client import HTTPClient
from zope.interface import implementer

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.python.filepath import FilePath
from twisted.web._newclient import Request
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    FileBodyProducer,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
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
from twisted.web.resource import IResource

from metagateway.addresses import TrustedProxies
from metagateway.auth.app import AuthApp, client_address
from metagateway.auth.github import GitHubSignIn
from metagateway.auth.passwords import PasswordChecks
from metagateway.auth.throttle import LoginThrottle
from metagateway.auth.tokens import TokenAuthority
from metagateway.config import ConfigurationError, GatewayConfig
from metagateway.credentials.directory import DirectoryCredentialStore
from metagateway.credentials.interfaces import ICredentialStore
from metagateway.http.drain import InFlight
from metagateway.http.site import GatewayResource
from metagateway.observability.accesslog import AccessLog, RequestRecorder
from metagateway.observability.metrics import MeasuredCredentialStore, Metrics
from metagateway.proxy.resource import GatewayProxyResource
from metagateway.proxy.webhooks import WebhooksResource
from metagateway.routes import ROUTES
from metagateway.state.interfaces import ISecurityState
from metagateway.state.stats import StateStats
from metagateway.timers import SharedTimer

log = Logger()


def make_state(config: GatewayConfig, reactor: Any) -> ISecurityState:
    """
    The shared security state in the Redis store ``config.state`` names,
    with ``config``'s login limits. Start it (it is an ``IService``) to
    connect.
    """
    from metagateway.state.redis import RedisSecurityState

    assert config.state is not None
    return RedisSecurityState(
        config.state,
        reactor,
        per_user=config.login_failures_per_user,
        per_address=config.login_failures_per_address,
        window=config.login_window,
    )


#: Idle keep-alive connections kept per upstream host.
MAX_PERSISTENT_PER_HOST = 64


def make_store(
    config: GatewayConfig, reactor: Any, client: HTTPClient
) -> ICredentialStore:
    """
    The credential store ``config`` names: the accounts directory if given,
    else R2, behind a short record cache.

    :param reactor: the reactor (a clock for timeouts and the cache).
    :param client: the HTTP client for R2.
    :raises ConfigurationError: when ``config`` names no store.
    """
    store: ICredentialStore
    if config.accounts_dir:
        store = DirectoryCredentialStore(FilePath(config.accounts_dir))
    elif config.r2 is not None:
        from metagateway.credentials.r2 import R2CredentialStore

        store = R2CredentialStore(config.r2, client, reactor)
    else:
        raise ConfigurationError(
            "no credential store: set accounts_dir or r2, or pass a store"
        )
    if config.store_cache_ttl > 0 and not config.accounts_dir:
        from metagateway.credentials.cache import CachingCredentialStore

        store = CachingCredentialStore(store, reactor, config.store_cache_ttl)
    return store


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
    remembers them by scheme, host and port. The proxy only ever asks for
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
    :class:`~twisted.web._newclient.Request` built by its public
    constructor (which still checks the method and the target), exactly as
    the ``Agent`` does. Connections come from the same
    :class:`~twisted.web.client.HTTPConnectionPool`, so keep-alive, the
    retry of idempotent requests on a stale connection, and TLS (from the
    endpoints) are the ``Agent``'s.

    Anything else (no ``Host`` header, another scheme, user information in
    the URL, an unusual method) goes through a stock ``Agent`` on the same
    pool and endpoints, which behaves, and fails, as documented.

    :param reactor: the reactor.
    :param endpoints: makes (and caches) the upstreams' endpoints.
    :param pool: the persistent connection pool.
    """

    max_cached = 64

    def __init__(
        self, reactor: Any, endpoints: UpstreamEndpoints, pool: HTTPConnectionPool
    ) -> None:
        self.pool = pool
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
        persistent = self.pool.persistent

        def connected(protocol: Any) -> Deferred[IResponse]:
            return protocol.request(  # type: ignore[no-any-return]
                Request(method, target, headers, bodyProducer, persistent)
            )

        return self.pool.getConnection(key, endpoint).addCallback(connected)


class _QuietClientFactory(_HTTP11ClientFactory):
    """
    The pool's connection factory, without a log line per connection.
    """

    noisy = False


class GatewayService(Service):
    """
    Owns what a gateway keeps open: the upstream connection pool and the
    threads that check scrypt passwords.

    Add it to the host program's ``MultiService``. Stopping it drains: the
    requests in flight get up to ``drain_timeout`` seconds to finish (the
    listening ports, stopped beside it, take no new connections), then the
    pool's idle connections are closed.

    :param pool: the upstream connection pool.
    :param in_flight: the requests being answered; no drain if omitted.
    :param clock: times the drain.
    :param drain_timeout: the longest drain, in seconds.
    :param passwords: the password checks whose thread pool runs while the
        service does.
    :param pool_timer: the pool's clock, when it is a
        :class:`~metagateway.timers.SharedTimer`: its reactor timer is
        cancelled once the pool is closed.
    :param state: the shared state's connection, started and stopped with
        this service.
    """

    def __init__(
        self,
        pool: HTTPConnectionPool,
        in_flight: Optional[InFlight] = None,
        clock: Optional[Any] = None,
        drain_timeout: float = 30.0,
        passwords: Optional[PasswordChecks] = None,
        pool_timer: Optional[SharedTimer] = None,
        state: Optional[IService] = None,
    ) -> None:
        self.state = state
        self.pool = pool
        self.in_flight = in_flight
        self.clock = clock
        self.drain_timeout = drain_timeout
        self.passwords = passwords
        self.pool_timer = pool_timer

    def startService(self) -> None:
        """
        Start checking scrypt passwords off the reactor thread.
        """
        super().startService()
        if self.passwords is not None:
            self.passwords.start()
        if self.state is not None:
            self.state.startService()

    def stopService(self) -> Optional[Deferred[None]]:
        """
        Wait for the requests in flight (at most ``drain_timeout``), then
        close the pool's cached connections.
        """
        super().stopService()
        return Deferred.fromCoroutine(self._drain_and_close())

    async def _drain_and_close(self) -> None:
        in_flight = self.in_flight
        if in_flight is not None and self.clock is not None:
            if in_flight.count:
                log.info(
                    "Draining {count} request(s), for at most {seconds}s",
                    count=in_flight.count,
                    seconds=self.drain_timeout,
                )
            drained = await in_flight.drain(self.clock, self.drain_timeout)
            if not drained:
                log.warn(
                    "Drain period over; closing {count} request(s) in flight",
                    count=in_flight.count,
                )
        await self.pool.closeCachedConnections()
        if self.state is not None:
            stopping = self.state.stopService()
            if stopping is not None:
                await stopping
        if self.pool_timer is not None:
            self.pool_timer.stop()
        if self.passwords is not None:
            # Logins answered during the drain were checked on the pool;
            # this waits for the check under way, if any.
            self.passwords.stop()


#: The default access log: text events to the global log publisher (it
#: holds no state, so gateways may share it).
TEXT_ACCESS_LOG = AccessLog("text")


class Gateway:
    """
    One gateway: its resource tree and its service.

    :param config: the configuration.
    :param reactor: the reactor: TCP/SSL connections and the clock.
    :param store: the credential store; built from ``config`` if omitted.
    :param agent: the HTTP client for upstreams; a pooled ``Agent`` if
        omitted.
    :param http_client: the treq client for R2 and GitHub; built on the
        pool if omitted.
    :param cooperator: schedules the writes of request bodies (proxied, and
        the default ``http_client``'s); one driven by ``reactor`` if omitted
        (never Twisted's global one).
    :param access_log: where the access log goes; ``None`` writes none.
        By default, text events to the global log publisher.
    :param metrics: this gateway's metrics; a fresh :class:`Metrics` if
        omitted (never shared with another gateway unless passed).
    :param webhook_agent: the ``IAgent`` Notion webhooks are posted to their
        targets with; if omitted, a plain ``Agent`` on the gateway's pool,
        whether ``http_client`` is passed or not (webhooks never go through
        ``http_client``: treq's client adds ``Accept-Encoding: gzip`` and
        cookies to what the client sent). Pass an agent that sends the
        headers it is given unchanged and follows no redirects.
    :param state: the shared security state (revocations, login
        counters); by default the Redis store ``config.state`` names, else
        one held in this process. One that is also an ``IService`` is
        started and stopped with :attr:`service`.

    :raises ConfigurationError: when the secret is empty, a trusted proxy
        is not an address or network, or no store is passed and ``config``
        names none.

    :ivar resource: the root resource, to serve or mount under any path.
    :ivar service: the service owning the pool and the password-checking
        threads, to add to a ``MultiService``; until it is started, scrypt
        passwords are checked on the reactor thread.
    :ivar tokens: the token authority.
    :ivar metrics: the gateway's :class:`~metagateway.observability.metrics.Metrics`,
        for :class:`~metagateway.observability.metrics.MetricsSite`.
    """

    def __init__(
        self,
        config: GatewayConfig,
        reactor: Any,
        store: Optional[ICredentialStore] = None,
        agent: Optional[IAgent] = None,
        http_client: Optional[HTTPClient] = None,
        cooperator: Optional[Cooperator] = None,
        access_log: Optional[AccessLog] = TEXT_ACCESS_LOG,
        metrics: Optional[Metrics] = None,
        webhook_agent: Optional[IAgent] = None,
        state: Optional[ISecurityState] = None,
    ) -> None:
        if not config.jwt_secret:
            raise ConfigurationError("the JWT secret is empty")
        self.config = config
        self.reactor = reactor
        # The pool sets a timer each time a connection comes back to it
        # and cancels it when the connection is taken again, which is
        # every proxied request: its timers share one reactor timer.
        self.pool_timer = SharedTimer(
            reactor, HTTPConnectionPool.cachedConnectionTimeout
        )
        self.pool = HTTPConnectionPool(self.pool_timer, persistent=True)
        self.pool.maxPersistentPerHost = MAX_PERSISTENT_PER_HOST
        # Twisted's documented way to keep the pool from logging "Starting
        # factory" for every upstream connection.
        self.pool._factory = _QuietClientFactory
        if agent is None:
            agent = UpstreamAgent(
                reactor,
                UpstreamEndpoints(
                    reactor,
                    BrowserLikePolicyForHTTPS(),
                    config.upstream_timeout or None,
                ),
                self.pool,
            )
        self.agent = agent
        if cooperator is None:
            # Request-body writes run on this gateway's own reactor, never
            # on Twisted's global cooperator.
            cooperator = Cooperator(
                scheduler=lambda work: reactor.callLater(0, work)  # type: ignore[no-any-return]
            )
        self.cooperator = cooperator
        if http_client is None:
            http_client = HTTPClient(
                Agent(
                    reactor, contextFactory=BrowserLikePolicyForHTTPS(), pool=self.pool
                ),
                data_to_body_producer=lambda data: body_producer(cooperator, data),
            )
        self.http_client = http_client
        if store is None:
            store = make_store(config, reactor, http_client)
        self.store = store
        if state is None and config.state is not None:
            state = make_state(config, reactor)
        self.throttle = LoginThrottle(
            config.login_failures_per_user,
            config.login_failures_per_address,
            config.login_window,
            reactor.seconds,
            state=state,
        )
        self.state: ISecurityState = self.throttle.state
        self.tokens = TokenAuthority(
            config.jwt_secret,
            reactor.seconds,
            config.previous_secrets,
            config.clock_skew,
            revocations=self.state,
        )
        self.metrics = metrics if metrics is not None else Metrics()
        stats = getattr(self.state, "stats", None)
        if isinstance(stats, StateStats):
            self.metrics.state = stats
        self.passwords = PasswordChecks(reactor)
        # With none (the usual case) each request's "in" is a tuple's.
        trusted: Container[str] = ()
        if config.trusted_proxies:
            try:
                trusted = TrustedProxies(config.trusted_proxies)
            except ValueError as e:
                raise ConfigurationError("trusted_proxies: %s" % (e,)) from None
        self.auth = AuthApp(
            self.tokens,
            MeasuredCredentialStore(self.store, self.metrics, reactor.seconds),
            self.throttle,
            reactor,
            config.auth_max_body,
            trusted,
            GitHubSignIn(
                config.github,
                http_client,
                reactor,
                self.tokens,
                config.upstream_timeout or 30.0,
            ),
            self.passwords,
        )
        if webhook_agent is None:
            webhook_agent = Agent(
                reactor, contextFactory=BrowserLikePolicyForHTTPS(), pool=self.pool
            )
        self.webhooks = WebhooksResource(
            config.notion_webhook_secret,
            config.services,
            webhook_agent,
            reactor,
            self.cooperator,
            config.upstream_timeout or 30.0,
        )
        proxies = {
            route.name: GatewayProxyResource(
                route,
                config.services.get(route.name),
                self.agent,
                self.tokens,
                reactor,
                config.upstream_timeout,
                self.cooperator,
                config.max_body,
            )
            for route in ROUTES
        }
        self.recorder = RequestRecorder(
            self.metrics,
            reactor.seconds,
            access_log,
            partial(client_address, trusted_proxies=trusted),
        )
        self.in_flight = InFlight()
        self.resource: IResource = GatewayResource(
            self.auth.app.resource(),
            proxies,
            self.webhooks,
            self.recorder,
            in_flight=self.in_flight,
            own_max_body=config.auth_max_body,
        )
        self.service = GatewayService(
            self.pool,
            self.in_flight,
            reactor,
            config.drain_timeout,
            self.passwords,
            self.pool_timer,
            IService(self.state, None),
        )
