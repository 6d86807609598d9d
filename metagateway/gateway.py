"""
The public API for running a gateway: build one from a
:class:`~metagateway.config.GatewayConfig`, mount its resource, start its
service. The daemon goes through this same code path.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Container, Mapping, Optional

from treq.client import HTTPClient

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.iweb import IAgent
from twisted.web.resource import IResource

from metagateway.addresses import TrustedProxies
from metagateway.auth.app import AuthApp, client_address, endpoint_labels, own_endpoints
from metagateway.auth.assertion import AssertionKeyError, AssertionSigner
from metagateway.auth.github import GitHubSignIn
from metagateway.auth.passwords import PasswordChecks
from metagateway.auth.throttle import LoginThrottle
from metagateway.auth.tokens import TokenAuthority
from metagateway.config import ConfigurationError, GatewayConfig
from metagateway.cors import CorsPolicy
from metagateway.credentials.factory import credential_store
from metagateway.credentials.interfaces import ICredentialStore
from metagateway.http.drain import InFlight
from metagateway.http.site import GatewayResource
from metagateway.observability.accesslog import AccessLog, RequestRecorder
from metagateway.observability.metrics import MeasuredCredentialStore, Metrics
from metagateway.observability.otel import OpenTelemetryTracing, TracingRecorder
from metagateway.observability.reloads import ReloadStats
from metagateway.proxy.balancer import pool_samples
from metagateway.proxy.resource import GatewayProxyResource
from metagateway.proxy.twisted_internals import use_gateway_factory
from metagateway.proxy.upstream import (
    PoolPartition,
    UpstreamAgent,
    UpstreamEndpoints,
    body_producer,
    upstream_tls_policy,
)
from metagateway.proxy.webhooks import WebhooksResource
from metagateway.proxy.websocket import WebSockets
from metagateway.routes import Route
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
    else R2, behind a short record cache (see
    :func:`metagateway.credentials.factory.credential_store`).

    :param reactor: the reactor (a clock for timeouts and the cache).
    :param client: the HTTP client for R2.
    :raises ConfigurationError: when ``config`` names no store.
    """
    return credential_store(
        reactor,
        config.accounts_dir,
        config.r2,
        client,
        config.store_timeout,
        config.store_retries,
        config.store_cache_ttl,
    )


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
    :param websockets: the joined WebSockets, closed once the drain is
        over.
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
        websockets: Optional[WebSockets] = None,
    ) -> None:
        self.state = state
        self.websockets = websockets
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
        if self.websockets is not None and self.websockets.open:
            log.info(
                "Closing {count} joined WebSocket connection(s)",
                count=len(self.websockets.open),
            )
            self.websockets.close_all()
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
    :param tracing: the OpenTelemetry bridge spans go through
        (:func:`~metagateway.observability.otel.tracing_from_environ`);
        ``None`` records none (the ``traceparent`` is still passed on).

    :raises ConfigurationError: when the secret is empty, a trusted proxy
        is not an address or network, or no store is passed and ``config``
        names none.

    :ivar resource: the root resource, to serve or mount under any path.
    :ivar service: the service owning the pool and the password-checking
        threads, to add to a ``MultiService``; until it is started, scrypt
        passwords are checked on the reactor thread.
    :ivar tokens: the token authority.
    :ivar metrics: the gateway's :class:`~metagateway.observability.metrics.Metrics`,
        for :class:`~metagateway.observability.metricsite.MetricsSite`.
    :ivar reloads: the reloads' figures (also in :attr:`metrics`).
    :ivar assertions: signs the assertions upstreams get (:ref:`contract-assertions`),
        with the key of ``config.assertion_key_file``; ``None`` without
        one. Its ``reload()`` re-reads the file.
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
        tracing: Optional[OpenTelemetryTracing] = None,
    ) -> None:
        if not config.jwt_secret:
            raise ConfigurationError("the JWT secret is empty")
        self.config = config
        self.reactor = reactor
        self.assertions = _assertions(config, reactor)
        self.upstream_tls = upstream_tls_policy(
            config.upstream_ca, config.upstream_client_cert
        )
        self._connect(agent, cooperator, http_client)
        self.store = (
            store
            if store is not None
            else make_store(config, reactor, self.http_client)
        )
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
        routes = config.route_table()
        self.tokens = TokenAuthority(
            config.jwt_secret,
            reactor.seconds,
            config.previous_secrets,
            config.clock_skew,
            revocations=self.state,
            route_names=[route.name for route in routes],
        )
        self.metrics = metrics if metrics is not None else Metrics()
        self.reloads = ReloadStats()
        self.reloads.loaded(reactor.seconds(), config.config_digest)
        self._reload_hooks: list[Callable[[GatewayConfig], object]] = []
        if self.assertions is not None:
            # SIGHUP re-reads the assertion key too (:ref:`contract-assertions`); the
            # key it replaces stays in the JWKS for a minute.
            self.on_reload(self._reload_assertion_key)
        stats = getattr(self.state, "stats", None)
        if isinstance(stats, StateStats):
            self.metrics.state = stats
        self.passwords = PasswordChecks(reactor)
        trusted = _trusted_proxies(config)
        self.auth = self._auth_app(trusted)
        self.webhooks = self._webhooks(webhook_agent)
        self.tracing = tracing
        client = partial(client_address, trusted_proxies=trusted)
        self.recorder: RequestRecorder = (
            RequestRecorder(self.metrics, reactor.seconds, access_log, client)
            if tracing is None
            # Spans only when asked for: no per-request test otherwise.
            else TracingRecorder(
                self.metrics, reactor.seconds, access_log, client, tracing=tracing
            )
        )
        self.in_flight = InFlight()
        # WebSocket handshakes connect anew, with the proxy's TLS.
        self.websockets = WebSockets(
            reactor,
            UpstreamEndpoints(
                reactor, self.upstream_tls, config.upstream_timeout or None
            ),
            config.websocket_idle_timeout,
        )
        self.metrics.extra.append(self.websockets.samples)
        self.proxies = self._proxies(config, routes)
        self.root = GatewayResource(
            self.auth.app.resource(),
            self.proxies,
            self.webhooks,
            self.recorder,
            in_flight=self.in_flight,
            own_max_body=config.auth_max_body,
            own_endpoints=own_endpoints(self.auth.app),
            endpoint_labels=endpoint_labels(self.auth.app),
            routes=routes,
            cors=CorsPolicy(config.allow_origins),
        )
        self.resource: IResource = self.root
        self.metrics.extra.append(self.reloads.samples)
        self.metrics.extra.append(self._pool_samples)
        self.service = GatewayService(
            self.pool,
            self.in_flight,
            reactor,
            config.drain_timeout,
            self.passwords,
            self.pool_timer,
            IService(self.state, None),
            self.websockets,
        )

    def _connect(
        self,
        agent: Optional[IAgent],
        cooperator: Optional[Cooperator],
        http_client: Optional[HTTPClient],
    ) -> None:
        """
        Set up the upstream connection pool, and the agent, cooperator and
        treq client on it that were not passed.
        """
        reactor = self.reactor
        # The pool sets a timer each time a connection comes back to it
        # and cancels it when the connection is taken again, which is
        # every proxied request: its timers share one reactor timer.
        self.pool_timer = SharedTimer(
            reactor, HTTPConnectionPool.cachedConnectionTimeout
        )
        self.pool = HTTPConnectionPool(self.pool_timer, persistent=True)
        self.pool.maxPersistentPerHost = MAX_PERSISTENT_PER_HOST
        # Quiet connections (no "Starting factory" log line for each).
        use_gateway_factory(self.pool)
        #: Whether the gateway made its agent (or was given one).
        self._own_agent = agent is None
        if agent is None:
            agent = UpstreamAgent(
                reactor,
                UpstreamEndpoints(
                    reactor,
                    self.upstream_tls,
                    self.config.upstream_timeout or None,
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
                self._pooled_agent(),
                data_to_body_producer=partial(body_producer, cooperator),
            )
        self.http_client = http_client

    def _pooled_agent(self) -> IAgent:
        """
        A plain ``Agent`` on the gateway's pool, checking certificates as
        a browser does.
        """
        return Agent(
            self.reactor, contextFactory=BrowserLikePolicyForHTTPS(), pool=self.pool
        )

    def _auth_app(self, trusted: Container[str]) -> AuthApp:
        """
        The Klein app answering ``/auth`` and the ``/core`` session
        endpoints.
        """
        config, reactor = self.config, self.reactor
        return AuthApp(
            self.tokens,
            MeasuredCredentialStore(self.store, self.metrics, reactor.seconds),
            self.throttle,
            reactor,
            config.auth_max_body,
            trusted,
            GitHubSignIn(
                config.github,
                self.http_client,
                reactor,
                self.tokens,
                config.upstream_timeout or 30.0,
            ),
            self.passwords,
            self.assertions,
        )

    def _webhooks(self, webhook_agent: Optional[IAgent]) -> WebhooksResource:
        """
        ``/webhooks/``, posting with ``webhook_agent`` or a plain agent on
        the pool.
        """
        config = self.config
        return WebhooksResource(
            config.notion_webhook_secret,
            config.services,
            webhook_agent
            if webhook_agent is not None
            # The targets are the upstreams: their TLS is the proxy's.
            else Agent(self.reactor, contextFactory=self.upstream_tls, pool=self.pool),
            self.reactor,
            self.cooperator,
            config.upstream_timeout or 30.0,
        )

    def _proxies(
        self,
        config: GatewayConfig,
        routes: tuple[Route, ...],
        previous: Optional[Mapping[str, GatewayProxyResource]] = None,
    ) -> dict[str, GatewayProxyResource]:
        """
        One proxy resource per route, by route name; an upstream a
        ``previous`` proxy of the same route had keeps its figures and
        health.
        """
        proxies = {}
        agents: dict[tuple[Optional[str], Optional[str]], IAgent] = {}
        for route in routes:
            proxy = GatewayProxyResource(
                route,
                route.upstreams[0] if route.upstreams else None,
                self._route_agent(config, route, agents),
                self.tokens,
                self.reactor,
                config.upstream_timeout if route.timeout is None else route.timeout,
                self.cooperator,
                config.max_body if route.max_body is None else route.max_body,
                upstreams=route.upstreams,
                assertions=self.assertions,
                websockets=self.websockets,
            )
            old = (previous or {}).get(route.name)
            if old is not None:
                known = {u.url: u for u in old.balancer.upstreams}
                for upstream in proxy.balancer.upstreams:
                    before = known.get(upstream.url)
                    if before is not None:
                        upstream.requests = before.requests
                        upstream.errors = before.errors
                        upstream.down_until = before.down_until
            proxies[route.name] = proxy
        return proxies

    def _route_agent(
        self,
        config: GatewayConfig,
        route: Route,
        agents: dict[tuple[Optional[str], Optional[str]], IAgent],
    ) -> IAgent:
        """
        The agent ``route``'s proxy sends with: the gateway's, unless the
        route names its own ``upstream_ca`` or ``upstream_client_cert``
        (:ref:`contract-config-file`); then an :class:`UpstreamAgent` with a TLS
        policy made from them (and the gateway's setting for the one it
        does not name), its files read now, on a share of the pool whose
        connections no other TLS policy reuses. An agent given to the
        gateway (a test's) serves every route.

        :param agents: the agents made so far for this route table, by
            their files: routes naming the same files share one.
        :raises ConfigurationError: when a file cannot be used.
        """
        if not self._own_agent or (
            route.upstream_ca is None and route.upstream_client_cert is None
        ):
            return self.agent
        files = (
            route.upstream_ca or config.upstream_ca,
            route.upstream_client_cert or config.upstream_client_cert,
        )
        agent = agents.get(files)
        if agent is None:
            agent = agents[files] = UpstreamAgent(
                self.reactor,
                UpstreamEndpoints(
                    self.reactor,
                    upstream_tls_policy(*files),
                    config.upstream_timeout or None,
                ),
                PoolPartition(self.pool, ("tls",) + files),
            )
        return agent

    def _pool_samples(self, labels: str) -> list[str]:
        """
        The per-upstream metrics of the routes in force.
        """
        return pool_samples([proxy.balancer for proxy in self.proxies.values()], labels)

    def _reload_assertion_key(self, config: GatewayConfig) -> None:
        """
        Re-read the assertion key file; one log line when it changed.

        :raises AssertionKeyError: when the file cannot be used (logged by
            :meth:`reload`; the current key keeps signing).
        """
        assert self.assertions is not None
        if self.assertions.reload():
            log.info("Assertion key reloaded; the previous key stays published")

    def on_reload(self, callback: Callable[[GatewayConfig], object]) -> None:
        """
        Call ``callback`` with the new configuration after each
        :meth:`reload`, once the routes and secrets are swapped (to re-read
        another file, say). An exception it raises is logged, and the
        reload stands.
        """
        self._reload_hooks.append(callback)

    def reload(self, config: GatewayConfig) -> None:
        """
        Put ``config``'s routes, CORS origins and secrets in force
        (:ref:`contract-config-file`): requests that arrive from now on follow them;
        requests in flight finish as they started; no connection is
        dropped. A changed secret signs new tokens at once, and the one it
        replaces keeps verifying tokens until they expire. The other
        settings (listening endpoints, store, limits) stay as they were
        started. Then the callbacks of :meth:`on_reload` are called.

        :raises ConfigurationError: when the secret is empty; nothing is
            changed then.
        """
        if not config.jwt_secret:
            raise ConfigurationError("the JWT secret is empty")
        routes = config.route_table()
        cors = CorsPolicy(config.allow_origins)
        proxies = self._proxies(config, routes, self.proxies)
        self.tokens.rotate(
            config.jwt_secret,
            config.previous_secrets,
            [route.name for route in routes],
        )
        self.root.swap(routes, proxies, cors)
        self.proxies = proxies
        self.config = config
        self.reloads.observe("success")
        self.reloads.loaded(self.reactor.seconds(), config.config_digest)
        for callback in list(self._reload_hooks):
            try:
                callback(config)
            except Exception:
                log.failure("A reload callback failed")


def _assertions(config: GatewayConfig, reactor: Any) -> Optional[AssertionSigner]:
    """
    The assertion signer with ``config``'s key, if it names one.

    :raises ConfigurationError: when the key file cannot be used.
    """
    if config.assertion_key_file is None:
        return None
    try:
        return AssertionSigner.from_file(config.assertion_key_file, reactor.seconds)
    except AssertionKeyError as e:
        raise ConfigurationError(str(e)) from None


def _trusted_proxies(config: GatewayConfig) -> Container[str]:
    """
    The peers whose ``X-Forwarded-For`` is believed; with none (the usual
    case) each request's ``in`` is a tuple's.

    :raises ConfigurationError: for an entry that is neither an address
        nor a network.
    """
    if not config.trusted_proxies:
        return ()
    try:
        return TrustedProxies(config.trusted_proxies)
    except ValueError as e:
        raise ConfigurationError("trusted_proxies: %s" % (e,)) from None
