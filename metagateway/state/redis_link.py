"""
The connections of the Redis state (:mod:`metagateway.state.redis`): one
for commands and one the revocations channel is read from, each made with
the injected reactor and made again after a backoff whenever it fails or
is lost, and :class:`RedisConnection`, the service that owns both, logs in
on each, and says when both are up.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import txredisapi

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.defer import TimeoutError as TimeoutError_
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure

from metagateway.config import StateSettings
from metagateway.state.interfaces import StateUnavailable
from metagateway.state.stats import StateStats

# The namespace of the whole Redis state, connections included.
log = Logger(namespace="metagateway.state.redis")

#: Reconnection delays: the first, and the cap it doubles up to.
FIRST_DELAY = 0.25
MAX_DELAY = 4.0

#: Seconds to wait for a connection, and for a reply.
CONNECT_TIMEOUT = 3.0
REPLY_TIMEOUT = 3.0


class _LinkProtocol(txredisapi.BaseRedisProtocol):  # type: ignore[misc]
    """
    A connection of a :class:`RedisLink`: its timers run on the link's
    reactor, and the link hears when it ends.
    """

    def __init__(self, link: RedisLink) -> None:
        super().__init__(
            charset="utf-8", replyTimeout=link.reply_timeout, convertNumbers=False
        )
        self.link = link
        # txredisapi's timers use the global reactor unless told otherwise.
        self.callLater = link.reactor.callLater

    def connectionLost(self, why: Failure) -> None:
        super().connectionLost(why)
        self.link.lost(self)


class _Commands(_LinkProtocol):
    """
    The connection commands go over.
    """


class _Events(_LinkProtocol, txredisapi.SubscriberProtocol):  # type: ignore[misc]
    """
    The connection the revocations channel is read from.
    """

    def replyReceived(self, reply: Any) -> None:
        # txredisapi's own compares each reply with both str and bytes,
        # which ``python -b`` warns about; replies are str here (charset).
        if isinstance(reply, list) and len(reply) >= 3:
            kind = reply[-3]
            if kind == "message":
                self.link.owner.message_received(reply[-1])
                return
            if kind in ("subscribe", "unsubscribe") and not self.replyQueue.waiting:
                return
            self.replyQueue.put(reply[-3:])
            return
        self.replyQueue.put(reply)


class _LinkFactory(Factory):
    """
    Builds the one protocol of a connection attempt.
    """

    noisy = False

    def __init__(self, build: Callable[[], Protocol]) -> None:
        self.build = build

    def buildProtocol(self, addr: Any) -> Protocol:
        return self.build()


class RedisLink:
    """
    One connection to Redis, made again after a backoff whenever it fails
    or is lost, until stopped.

    :param owner: the connection service told when the link is ready or lost.
    :param name: ``commands`` or ``events``.
    :param kind: the protocol class.
    :param endpoint: where to connect.
    :param prepare: run on each new connection before it counts as ready
        (``AUTH``, ``SELECT``, ``SUBSCRIBE``); a failure drops it.
    """

    def __init__(
        self,
        owner: RedisConnection,
        name: str,
        kind: Callable[[RedisLink], Any],
        endpoint: IStreamClientEndpoint,
        prepare: Callable[[Any], Deferred[Any]],
    ) -> None:
        self.owner = owner
        self.name = name
        self.kind = kind
        self.endpoint = endpoint
        self.prepare = prepare
        self.reactor = owner.reactor
        self.reply_timeout = owner.reply_timeout
        self.protocol: Optional[Any] = None
        self.ready = False
        self.stopped = True
        self.delay = FIRST_DELAY
        self._attempt: Optional[Deferred[Any]] = None
        self._retry: Optional[IDelayedCall] = None
        self._lost: list[Deferred[None]] = []

    def start(self) -> None:
        """
        Connect, and keep connecting.
        """
        self.stopped = False
        self.connect()

    def connect(self) -> None:
        """
        One connection attempt.
        """
        self._retry = None
        if self.stopped:
            return
        attempt = self.endpoint.connect(_LinkFactory(lambda: self.kind(self)))
        self._attempt = attempt
        attempt.addCallbacks(self._connected, self._failed)

    def _connected(self, protocol: Any) -> None:
        self._attempt = None
        self.protocol = protocol
        if self.stopped:
            protocol.transport.loseConnection()
            return
        self.prepare(protocol).addCallbacks(
            lambda _: self._prepared(protocol), lambda f: self._unprepared(protocol, f)
        )

    def _prepared(self, protocol: Any) -> None:
        if protocol is not self.protocol or self.stopped:
            return
        self.ready = True
        self.delay = FIRST_DELAY
        self.owner.link_ready(self)

    def _unprepared(self, protocol: Any, failure: Failure) -> None:
        self.owner.link_failed(self, failure)
        transport = getattr(protocol, "transport", None)
        if transport is not None:
            transport.abortConnection()

    def _failed(self, failure: Failure) -> None:
        self._attempt = None
        if self.stopped:
            return
        self.owner.link_failed(self, failure)
        self._schedule()

    def lost(self, protocol: Any) -> None:
        """
        ``protocol``'s connection ended.
        """
        if protocol is not self.protocol:
            return
        self.protocol = None
        was_ready, self.ready = self.ready, False
        waiting, self._lost = self._lost, []
        for d in waiting:
            d.callback(None)
        if self.stopped:
            return
        if was_ready:
            self.owner.link_lost(self)
        self._schedule()

    def _schedule(self) -> None:
        if self.stopped or self._retry is not None:
            return
        self._retry = self.reactor.callLater(self.delay, self.connect)
        self.delay = min(MAX_DELAY, self.delay * 2)

    def stop(self) -> Deferred[None]:
        """
        Stop connecting and close the connection.

        :return: fires once it is closed.
        """
        self.stopped = True
        self.ready = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._attempt is not None:
            attempt, self._attempt = self._attempt, None
            attempt.addErrback(lambda _: None)
            attempt.cancel()
        protocol = self.protocol
        if protocol is None or protocol.transport is None:
            self.protocol = None
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._lost.append(done)
        protocol.transport.loseConnection()
        return done


class RedisConnection(Service):
    """
    The two connections to one Redis, made (and made again) while the
    service runs; the Redis state builds on it.

    Until the commands connection is up, :meth:`wait_connected` waits;
    when both are up (and logged in, and the events connection
    subscribed to ``channel``), :meth:`connected` is called, once per
    time they come up. Losses and failures are logged once each, not per
    attempt.

    :param settings: where Redis is, and how to log in.
    :param reactor: connects and times.
    :param channel: the channel the events connection subscribes to.
    :param stats: where the connection's figures are kept (for metrics).
    :param endpoint: where to connect; built from ``settings`` if omitted.
    :param reply_timeout: seconds to wait for each reply.
    """

    def __init__(
        self,
        settings: StateSettings,
        reactor: Any,
        channel: str,
        stats: StateStats,
        endpoint: Optional[IStreamClientEndpoint] = None,
        reply_timeout: float = REPLY_TIMEOUT,
    ) -> None:
        self.settings = settings
        self.reactor = reactor
        self.channel = channel
        self.stats = stats
        self.reply_timeout = reply_timeout
        if endpoint is None:
            endpoint = HostnameEndpoint(
                reactor, settings.host, settings.port, timeout=CONNECT_TIMEOUT
            )
            if settings.tls:
                endpoint = wrapClientTLS(optionsForClientTLS(settings.host), endpoint)
        self.commands = RedisLink(self, "commands", _Commands, endpoint, self._prepare)
        self.events = RedisLink(self, "events", _Events, endpoint, self._subscribe)
        self._complained = False
        self._since_ready = 0
        self._waiters: list[Deferred[None]] = []
        self._last_error = ""

    def connected(self) -> None:
        """
        Both connections are up, after being down: nothing here (the
        state reloads its mirror).
        """

    def message_received(self, message: Any) -> None:
        """
        A message arrived on the channel: nothing here (the state applies
        it).
        """

    # -- the service

    def startService(self) -> None:
        """
        Start connecting (and keep at it).
        """
        super().startService()
        self.commands.start()
        self.events.start()

    def stopService(self) -> Deferred[None]:
        """
        Close both connections.
        """
        super().stopService()
        closing = [self.commands.stop(), self.events.stop()]
        self.stats.connected = False
        return DeferredList(closing, consumeErrors=True).addCallback(lambda _: None)

    def wait_connected(self, timeout: float) -> Deferred[None]:
        """
        Fire once commands can be sent (at once if they can now), or fail
        with :class:`StateUnavailable` after ``timeout`` seconds.
        """
        if self.commands.ready:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)

        def timed_out(failure: Failure, timeout: float) -> Failure:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            if failure.check(TimeoutError_):
                why = " (%s)" % (self._last_error,) if self._last_error else ""
                return Failure(
                    StateUnavailable(
                        "%s unreachable for %g s%s"
                        % (self.settings.display(), timeout, why)
                    )
                )
            return failure

        waiter.addTimeout(timeout, self.reactor)
        waiter.addErrback(timed_out, timeout)
        return waiter

    # -- connection events

    def _prepare(self, protocol: Any) -> Deferred[Any]:
        return Deferred.fromCoroutine(self._login(protocol))

    async def _login(self, protocol: Any) -> None:
        if self.settings.password is not None:
            if self.settings.username:
                await protocol.execute_command(
                    "AUTH", self.settings.username, self.settings.password
                )
            else:
                await protocol.execute_command("AUTH", self.settings.password)
        if self.settings.db:
            await protocol.execute_command("SELECT", self.settings.db)

    def _subscribe(self, protocol: Any) -> Deferred[Any]:
        async def subscribe() -> None:
            await self._login(protocol)
            await protocol.subscribe(self.channel)

        return Deferred.fromCoroutine(subscribe())

    def link_ready(self, link: RedisLink) -> None:
        """
        ``link`` is connected (and subscribed, for the events link).
        """
        if self.commands.ready:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)
        if self.commands.ready and self.events.ready:
            self.stats.connected = True
            if self._complained or self._since_ready:
                log.info(
                    "Shared state store {url} reachable again",
                    url=self.settings.display(),
                )
            else:
                log.info(
                    "Shared state store {url} connected", url=self.settings.display()
                )
            self._complained = False
            self._since_ready += 1
            if self._since_ready > 1:
                self.stats.reconnects += 1
            self.connected()

    def link_lost(self, link: RedisLink) -> None:
        """
        ``link``'s connection ended; it is being made again.
        """
        if self.stats.connected:
            self.stats.connected = False
            log.warn(
                "Shared state store {url} lost; logins answer 503 until it is back",
                url=self.settings.display(),
            )
            self._complained = True

    def link_failed(self, link: RedisLink, failure: Failure) -> None:
        """
        A connection attempt of ``link`` failed; it is tried again later.
        """
        self.stats.connected = False
        self._last_error = failure.getErrorMessage() or repr(failure.value)
        if not self._complained:
            self._complained = True
            log.warn(
                "Shared state store {url} unreachable ({why}); logins answer 503 "
                "until it is reachable, retrying",
                url=self.settings.display(),
                why=self._last_error,
            )
