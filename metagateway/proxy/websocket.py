"""
WebSocket pass-through (:ref:`contract-websocket`, ``docs/proxy.rst``).

A request with ``Upgrade: websocket`` and ``Connection: upgrade`` on a
proxied route is checked like any other by
:class:`~metagateway.proxy.resource.GatewayProxyResource`, which then hands
it to :meth:`WebSockets.handshake`. The handshake goes upstream over a
connection of its own (never one from the keep-alive pool, and never
returned to it), with ``Upgrade``, ``Connection: Upgrade`` and the
``Sec-WebSocket-*`` headers. Twisted's HTTP client drops a ``101``, so the
answer's head is read here (:class:`UpstreamHandshake`):

- a ``101`` is passed back to the client as it came, and the two
  connections are joined (:class:`Join`): bytes flow both ways unchanged,
  each side's reading paused while the other cannot take more, until
  either side closes (then the other is closed), no byte has passed for
  the idle timeout, or a graceful stop ends it;
- any other answer is relayed as a normal answer, and the client's
  connection carries on as HTTP.

The request stays in flight while its connections are joined (a graceful
stop waits for it, then closes it at the end of the drain), and is
finished when the join ends: its access-log line then holds the join's
duration, the bytes each way (``in`` from the client, ``out`` to it) and
which side closed (:data:`CLOSE_SIDES`).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, cast
from urllib.parse import unquote_to_bytes

from zope.interface import implementer

from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import (
    IDelayedCall,
    IPushProducer,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import URI
from twisted.web.http import NO_BODY_CODES
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest, IResponse

from metagateway.errors import GatewayError, error_response, request_id_of
from metagateway.http.names import UPGRADE
from metagateway.http.request import when_done
from metagateway.http.twisted_internals import head_written, header_map, set_sent_length
from metagateway.notes import notes_of
from metagateway.observability.accesslog import note_upstream
from metagateway.proxy.balancer import Upstream, nothing_sent
from metagateway.proxy.headers import adopt_response_headers, connection_tokens
from metagateway.proxy.twisted_internals import chunked_decoder
from metagateway.proxy.upstream import UpstreamAgent

log = Logger()

#: How a join ended, and what its access-log line says of it in place of
#: the upstream's status (``upstream=``, JSON ``upstreamError``): the
#: client or the upstream closed its connection, no byte passed for the
#: idle timeout, or a graceful stop closed it.
CLOSE_SIDES = {
    "client": "ws-client-closed",
    "upstream": "ws-upstream-closed",
    "idle": "ws-idle",
    "stopped": "ws-stopped",
}

#: The longest answer head read from an upstream, in bytes.
MAX_HEAD = 65536

#: The query parameter a browser gives its token in.
ACCESS_TOKEN = b"access_token"


def is_websocket_upgrade(request: IRequest) -> bool:
    """
    Whether ``request`` asks to become a WebSocket: an HTTP/1.1 ``GET``
    without a body, with ``Upgrade: websocket`` and ``upgrade`` among its
    ``Connection`` tokens (both case-insensitive).
    """
    headers = request.requestHeaders
    upgrades = header_map(headers).get(UPGRADE)
    if not upgrades:
        # Nearly every request: one lookup, and no more work.
        return False
    if request.method != b"GET" or getattr(request, "clientproto", None) != (
        b"HTTP/1.1"
    ):
        return False
    if b"upgrade" not in connection_tokens(headers):
        return False
    if headers.hasHeader(b"transfer-encoding"):
        return False
    length = headers.getRawHeaders(b"content-length")
    if length and length[0].strip() not in (b"0", b""):
        return False
    return any(
        token.strip().lower() == b"websocket"
        for value in upgrades
        for token in value.split(b",")
    )


def take_access_token(uri: bytes) -> tuple[bytes, Optional[str]]:
    """
    Take the ``access_token`` query parameter out of a request target.

    :return: the target without any ``access_token`` parameter (the rest
        of the query byte for byte, in order; no ``?`` when nothing is
        left of it), and the first such parameter's value, percent-decoded,
        or ``None`` when there is none.
    """
    path, question, query = uri.partition(b"?")
    if not question or ACCESS_TOKEN not in query:
        return uri, None
    kept = []
    token: Optional[str] = None
    for part in query.split(b"&"):
        name, _, value = part.partition(b"=")
        if name == ACCESS_TOKEN:
            if token is None:
                raw = unquote_to_bytes(value.replace(b"+", b" "))
                token = raw.decode("utf-8", "replace")
            continue
        kept.append(part)
    if not kept:
        return path, token
    return path + b"?" + b"&".join(kept), token


@implementer(IPushProducer)
class _Reading:
    """
    The reading of one connection, as the producer of what is written to
    the other: while the other's send buffer is full, this one is not read.

    :param transport: the connection read.
    """

    def __init__(self, transport: ITransport) -> None:
        self.producer = IPushProducer(transport, None)

    def pauseProducing(self) -> None:
        if self.producer is not None:
            self.producer.pauseProducing()

    def resumeProducing(self) -> None:
        if self.producer is not None:
            self.producer.resumeProducing()

    def stopProducing(self) -> None:
        # The other connection is gone: the join closes this one itself.
        pass


class Join:
    """
    Two connections joined: what one sends is written to the other,
    unchanged, with backpressure both ways.

    :param sockets: the gateway's joins (counts and the idle timeout).
    :param client: the client's connection.
    :param upstream: the upstream's connection.
    :param ended: called once with this join when it ends.

    :ivar bytes_up: bytes from the client to the upstream.
    :ivar bytes_down: bytes from the upstream to the client.
    :ivar closed_by: how it ended (one of :data:`CLOSE_SIDES`), once it has.
    """

    def __init__(
        self,
        sockets: WebSockets,
        client: ITransport,
        upstream: ITransport,
        ended: Callable[[Join], object],
    ) -> None:
        self.sockets = sockets
        self.client = client
        self.upstream = upstream
        self.ended = ended
        self.bytes_up = 0
        self.bytes_down = 0
        self.closed_by: Optional[str] = None
        clock = sockets.clock
        self._seconds = clock.seconds
        self.started = self._last = clock.seconds()
        self._idle_call: Optional[IDelayedCall] = None
        if sockets.idle_timeout > 0:
            self._idle_call = clock.callLater(sockets.idle_timeout, self._idle_due)
        client.registerProducer(_Reading(upstream), True)  # type: ignore[attr-defined]
        upstream.registerProducer(_Reading(client), True)  # type: ignore[attr-defined]
        sockets.joined(self)

    # Bytes.

    def from_client(self, data: bytes) -> None:
        """
        The client sent ``data``: on to the upstream.
        """
        if self.closed_by is not None:
            return
        self.bytes_up += len(data)
        self.sockets.bytes_up += len(data)
        self._last = self._seconds()
        self.upstream.write(data)

    def from_upstream(self, data: bytes) -> None:
        """
        The upstream sent ``data``: on to the client.
        """
        if self.closed_by is not None:
            return
        self.bytes_down += len(data)
        self.sockets.bytes_down += len(data)
        self._last = self._seconds()
        self.client.write(data)

    # The ends.

    def client_lost(self) -> None:
        """
        The client's connection is gone: close the upstream's.
        """
        self._end("client", close_client=False)

    def upstream_lost(self) -> None:
        """
        The upstream's connection is gone: close the client's, once what
        the upstream sent is written.
        """
        self._end("upstream", close_upstream=False)

    def close(self, why: str = "stopped") -> None:
        """
        Close both connections (what each was sent is written first).

        :param why: one of :data:`CLOSE_SIDES`.
        """
        self._end(why)

    def _idle_due(self) -> None:
        self._idle_call = None
        if self.closed_by is not None:
            return
        timeout = self.sockets.idle_timeout
        rest = self._last + timeout - self._seconds()
        if rest > 0:
            self._idle_call = self.sockets.clock.callLater(rest, self._idle_due)
        else:
            self._end("idle")

    def _end(
        self, why: str, close_client: bool = True, close_upstream: bool = True
    ) -> None:
        if self.closed_by is not None:
            return
        self.closed_by = why
        call = self._idle_call
        if call is not None and call.active():
            call.cancel()
        self._idle_call = None
        self.upstream.unregisterProducer()  # type: ignore[attr-defined]
        if close_upstream:
            self.upstream.loseConnection()
        self.sockets.left(self)
        # Finishing the request closes the client's connection (its
        # channel takes the producer off).
        self.ended(self)
        if getattr(self.client, "producer", None) is not None:
            self.client.unregisterProducer()  # type: ignore[attr-defined]
        if close_client:
            self.client.loseConnection()


class WebSockets:
    """
    The gateway's WebSocket joins: how handshakes reach upstreams, the idle
    timeout, the joins open now, and their counts for the metrics.

    :param clock: the reactor (its clock times handshakes and idle joins).
    :param endpoints: the upstreams' endpoints (``endpointForURI``), the
        proxy's own: same TLS, same connect timeout. Each handshake
        connects anew. A route whose agent is an
        :class:`~metagateway.proxy.upstream.UpstreamAgent` connects with
        that agent's endpoints instead (its TLS may be the route's own).
    :param idle_timeout: seconds a join may pass no byte before it is
        closed; 0 for no limit.

    :ivar open: the joins open now.
    :ivar total: the joins made since the start.
    :ivar bytes_up: bytes passed from clients to upstreams.
    :ivar bytes_down: bytes passed from upstreams to clients.
    """

    def __init__(
        self, clock: IReactorTime, endpoints: Any, idle_timeout: float = 300.0
    ) -> None:
        self.clock = clock
        self.endpoints = endpoints
        self.idle_timeout = idle_timeout
        self.open: set[Join] = set()
        self.total = 0
        self.bytes_up = 0
        self.bytes_down = 0

    def joined(self, join: Join) -> None:
        """
        Count a join that begins.
        """
        self.open.add(join)
        self.total += 1

    def left(self, join: Join) -> None:
        """
        Forget a join that ended.
        """
        self.open.discard(join)

    def close_all(self) -> int:
        """
        Close every open join (a graceful stop, once the drain is over).

        :return: how many were closed.
        """
        joins = list(self.open)
        for join in joins:
            join.close("stopped")
        return len(joins)

    def samples(self, labels: str) -> list[str]:
        """
        The joins' metrics in the Prometheus text format (see
        ``Metrics.extra``).

        :param labels: labels every sample carries first, each as
            ``key="value",``, or ``""``.
        """
        plain = "{%s}" % (labels.rstrip(","),) if labels else ""
        return [
            "# HELP metagateway_websocket_open WebSocket connections joined now.",
            "# TYPE metagateway_websocket_open gauge",
            "metagateway_websocket_open%s %d" % (plain, len(self.open)),
            "# HELP metagateway_websocket_connections_total WebSocket "
            "connections joined since the start.",
            "# TYPE metagateway_websocket_connections_total counter",
            "metagateway_websocket_connections_total%s %d" % (plain, self.total),
            "# HELP metagateway_websocket_bytes_total Bytes passed through "
            "joined WebSocket connections, by direction.",
            "# TYPE metagateway_websocket_bytes_total counter",
            'metagateway_websocket_bytes_total{%sdirection="upstream"} %d'
            % (labels, self.bytes_up),
            'metagateway_websocket_bytes_total{%sdirection="client"} %d'
            % (labels, self.bytes_down),
        ]

    def handshake(
        self,
        proxy: Any,
        request: IRequest,
        url: bytes,
        headers: Headers,
        upstream: Upstream,
    ) -> None:
        """
        Send ``request``'s handshake to ``url`` over a new connection, and
        answer the client with what comes back (see the module).

        :param proxy: the route's proxy resource (its route, timeout and
            balancer).
        :param headers: the headers for the upstream
            (:func:`~metagateway.proxy.headers.upstream_headers`);
            ``Upgrade`` and ``Connection: Upgrade`` are added.
        :param upstream: the upstream of ``url``.
        """
        upgrade = request.requestHeaders.getRawHeaders(b"upgrade") or [b"websocket"]
        headers.setRawHeaders(b"Upgrade", upgrade)
        headers.setRawHeaders(b"Connection", [b"Upgrade"])
        UpstreamHandshake(self, proxy, request, url, headers, upstream).start()


def unavailable(route: str) -> GatewayError:
    """
    The answer when the upstream cannot be used: ``502 UPSTREAM_UNAVAILABLE``.
    """
    return GatewayError(502, "UPSTREAM_UNAVAILABLE", "Upstream unavailable", route)


def _origin_and_target(url: bytes) -> tuple[bytes, bytes]:
    """
    Split an absolute URL into its origin and its request target.
    """
    scheme, _, rest = url.partition(b"://")
    slash = rest.find(b"/")
    if slash < 0:
        return url, b"/"
    return scheme + b"://" + rest[:slash], rest[slash:]


class UpstreamHandshake(Protocol):
    """
    One handshake's connection to the upstream: it sends the request's
    head, reads the answer's, then joins the connections (``101``) or
    relays the answer.

    :param sockets: the gateway's joins.
    :param proxy: the route's proxy resource.
    :param request: the client's request.
    :param url: the upstream URL.
    :param headers: the headers sent upstream.
    :param upstream: the upstream of ``url``.
    """

    def __init__(
        self,
        sockets: WebSockets,
        proxy: Any,
        request: IRequest,
        url: bytes,
        headers: Headers,
        upstream: Upstream,
    ) -> None:
        self.sockets = sockets
        self.proxy = proxy
        self.request: Any = request
        self.url = url
        self.headers = headers
        self.upstream = upstream
        self.client_gone = False
        self.join: Optional[Join] = None
        self._head = b""
        self._connecting: Optional[Deferred[Any]] = None
        self._timer: Optional[IDelayedCall] = None
        self._timed_out = False
        # Relaying a refusal's body: bytes left (-1: until the close), or
        # the chunked decoder.
        self._relaying = False
        self._left = -1
        self._decoder: Any = None

    # Connecting.

    def start(self) -> None:
        """
        Connect to the upstream and send the handshake.
        """
        origin, _ = _origin_and_target(self.url)
        when_done(self.request, self._over)
        self.upstream.requests += 1
        endpoints = self.sockets.endpoints
        agent = getattr(self.proxy, "agent", None)
        if isinstance(agent, UpstreamAgent):
            # The route's agent: its TLS (a route's own upstream_ca and
            # upstream_client_cert, or the gateway's).
            endpoints = agent.endpoints
        try:
            endpoint = endpoints.endpointForURI(URI.fromBytes(origin))
        except Exception as e:
            self._fail(Failure(e))
            return
        timeout = self.proxy.timeout
        if timeout and timeout > 0:
            self._timer = self.sockets.clock.callLater(timeout, self._time_out)
        connecting = connectProtocol(endpoint, self)
        if self.transport is None and not connecting.called:
            self._connecting = connecting
        connecting.addErrback(self._connect_failed)

    def _connect_failed(self, failure: Failure) -> None:
        self._connecting = None
        if self.client_gone or self._timed_out:
            return
        self._fail(failure)

    def _time_out(self) -> None:
        self._timer = None
        self._timed_out = True
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
        elif self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]
        self._fail(Failure(TimeoutError()))

    def _stop_timer(self) -> None:
        timer = self._timer
        if timer is not None and timer.active():
            timer.cancel()
        self._timer = None

    def connectionMade(self) -> None:
        self._connecting = None
        if self.client_gone:
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        _, target = _origin_and_target(self.url)
        head = [b"GET ", target, b" HTTP/1.1\r\n"]
        for name, values in self.headers.getAllRawHeaders():
            for value in values:
                head.extend((name, b": ", value, b"\r\n"))
        head.append(b"\r\n")
        self.transport.write(b"".join(head))  # type: ignore[union-attr]

    # The client's side.

    def _over(self, result: Optional[Failure]) -> None:
        if result is None or self.join is not None:
            return
        # The client left before the answer: drop the upstream.
        self.client_gone = True
        self._stop_timer()
        if self._connecting is not None:
            self._connecting.cancel()
        elif self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    # The upstream's answer.

    def dataReceived(self, data: bytes) -> None:
        join = self.join
        if join is not None:
            join.from_upstream(data)
            return
        if self._relaying:
            self._relay(data)
            return
        if self.client_gone:
            return
        head = self._head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(head) > MAX_HEAD:
                self._bad_answer("an answer head over %d bytes" % (MAX_HEAD,))
            else:
                self._head = head
            return
        self._head = b""
        self._answered(head[:end], head[end + 4 :])

    def _answered(self, head: bytes, rest: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if (
            len(parts) < 2
            or not parts[0].startswith(b"HTTP/1.")
            or not parts[1].isdigit()
            or len(parts[1]) != 3
        ):
            self._bad_answer("a malformed status line")
            return
        code = int(parts[1])
        phrase = parts[2] if len(parts) > 2 else b""
        headers = Headers()
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                self._bad_answer("a malformed header line")
                return
            headers.addRawHeader(name, value.strip(b" \t"))
        if 100 <= code < 200 and code != 101:
            # An interim answer (``100 Continue``...): the real one follows.
            if rest:
                self.dataReceived(rest)
            return
        self._stop_timer()
        note_upstream(self.request, status=code)
        if code == 101:
            self._switch(head, rest)
        else:
            self._relay_answer(code, phrase, headers, rest)

    def _switch(self, head: bytes, rest: bytes) -> None:
        """
        The upstream switched protocols: pass its head on, and join.
        """
        request = self.request
        channel = request.channel
        client = getattr(channel, "transport", None)
        if client is None or not hasattr(channel, "hand_over"):
            # Not a connection that can be handed over: nothing is joined.
            self.transport.loseConnection()  # type: ignore[union-attr]
            self._answer_error(unavailable(self.proxy.route.name))
            return
        request.setResponseCode(101)
        side = _ClientSide()
        # The channel stops pacing the client's connection before the
        # join paces it (a transport takes one producer at a time).
        pending = channel.hand_over(side)
        join = Join(self.sockets, client, self.transport, self._joined_end)  # type: ignore[arg-type]
        self.join = side.join = join
        client.write(head + b"\r\n\r\n")
        head_written(request)
        log.debug(
            "WebSocket joined on route {route} (request {request_id})",
            route=self.proxy.route.name,
            request_id=request_id_of(request),
        )
        if rest:
            join.from_upstream(rest)
        if pending:
            join.from_client(pending)

    def _joined_end(self, join: Join) -> None:
        request = self.request
        notes = notes_of(request)
        notes.bytes_in = join.bytes_up
        notes.bytes_in_noted = True
        notes.closed_by = CLOSE_SIDES.get(join.closed_by or "", join.closed_by)
        set_sent_length(request, join.bytes_down)
        if not request.finished:
            request.finish()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_timer()
        join = self.join
        if join is not None:
            join.upstream_lost()
            return
        if self._relaying:
            self._relay_over(reason)
            return
        if self.client_gone or self._timed_out:
            return
        self._fail(reason)

    # Anything but a 101: relayed as a normal answer.

    def _relay_answer(
        self, code: int, phrase: bytes, headers: Headers, rest: bytes
    ) -> None:
        request = self.request
        lengths = headers.getRawHeaders(b"content-length")
        codings = headers.getRawHeaders(b"transfer-encoding")
        length: Optional[int] = None
        headers.removeHeader(b"content-length")
        if codings:
            if codings[-1].strip().lower() != b"chunked":
                self._bad_answer("an unknown transfer coding")
                return
            self._decoder = chunked_decoder(self._body, self._body_done)
        elif lengths:
            value = lengths[0].strip()
            if not value.isdigit() or any(v.strip() != value for v in lengths):
                self._bad_answer("a malformed Content-Length")
                return
            length = self._left = int(value)
        if code in NO_BODY_CODES:
            length, self._left, self._decoder = 0, 0, None
        request.setResponseCode(code, phrase)
        adopt_response_headers(cast(IResponse, _Answer(code, headers, length)), request)
        self._relaying = True
        if self._left == 0 and self._decoder is None:
            self._body_done(b"")
            return
        request.registerProducer(self.transport, True)
        if rest:
            self._relay(rest)

    def _relay(self, data: bytes) -> None:
        decoder = self._decoder
        if decoder is not None:
            try:
                decoder.dataReceived(data)
            except Exception:
                self._relay_over(Failure(ValueError("malformed chunked body")))
            return
        left = self._left
        if left >= 0:
            data = data[:left]
            self._left = left - len(data)
        self._body(data)
        if self._left == 0:
            self._body_done(b"")

    def _body(self, data: bytes) -> None:
        if data and not self.request.finished and not self.client_gone:
            self.request.write(data)

    def _body_done(self, extra: bytes) -> None:
        self._decoder = None
        self._left = 0
        if self.transport is not None:
            self.transport.loseConnection()
        self._finish_relay()

    def _relay_over(self, reason: Failure) -> None:
        """
        The upstream's connection ended while its answer's body was read.
        """
        if self.request.finished or self.client_gone:
            return
        if self._decoder is None and self._left < 0:
            # A body delimited by the close: complete.
            self._finish_relay()
            return
        log.warn(
            "Upstream {route} failed mid-body: {why} (request {request_id})",
            route=self.proxy.route.name,
            why=str(reason.value) or reason.value.__class__.__name__,
            request_id=request_id_of(self.request),
        )
        note_upstream(self.request, error="truncated")
        self._decoder = None
        self._left = 0
        if self.request.producer is not None:
            self.request.unregisterProducer()
        channel = getattr(self.request, "channel", None)
        if channel is not None:
            channel.loseConnection()

    def _finish_relay(self) -> None:
        request = self.request
        if request.finished or self.client_gone:
            return
        if request.producer is not None:
            request.unregisterProducer()
        request.finish()

    # Failures before any answer.

    def _bad_answer(self, what: str) -> None:
        log.warn(
            "Upstream {route} answered a WebSocket handshake with {what} "
            "(request {request_id})",
            route=self.proxy.route.name,
            what=what,
            request_id=request_id_of(self.request),
        )
        self._stop_timer()
        self._answer_error(unavailable(self.proxy.route.name))
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _fail(self, failure: Failure) -> None:
        self._stop_timer()
        route = self.proxy.route.name
        if self._timed_out:
            self.proxy.balancer.failed(self.upstream, "timed out")
            log.warn(
                "Upstream {route} timed out after {seconds}s (request {request_id})",
                route=route,
                seconds=self.proxy.timeout,
                request_id=request_id_of(self.request),
            )
            error = GatewayError(504, "UPSTREAM_TIMEOUT", "Upstream timed out", route)
        else:
            why = str(failure.value) or failure.value.__class__.__name__
            if nothing_sent(failure):
                self.proxy.balancer.failed(self.upstream, why)
            else:
                self.upstream.errors += 1
            log.warn(
                "Upstream {route} unavailable: {why} (request {request_id})",
                route=route,
                why=why,
                request_id=request_id_of(self.request),
            )
            error = unavailable(route)
        self._answer_error(error)

    def _answer_error(self, error: GatewayError) -> None:
        """
        Answer the client ``error``, unless it left or was answered.
        """
        request = self.request
        if self.client_gone or request.finished or request.startedWriting:
            return
        # Nothing more of the upstream is relayed.
        self.client_gone = True
        request.write(error_response(request, error))
        request.finish()


class _Answer:
    """
    An upstream's answer as :func:`adopt_response_headers` reads it.
    """

    def __init__(self, code: int, headers: Headers, length: Optional[int]) -> None:
        self.code = code
        self.headers = headers
        self.length = length


class _ClientSide:
    """
    The client's connection once handed over by its channel: bytes and the
    loss of the connection, to the join.
    """

    join: Join

    def dataReceived(self, data: bytes) -> None:
        """
        The client sent ``data``.
        """
        self.join.from_client(data)

    def connectionLost(self, reason: Failure) -> None:
        """
        The client's connection is gone.
        """
        self.join.client_lost()
