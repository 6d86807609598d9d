"""
Request bodies that stream: a client's body handed to the upstream as it
arrives, with flow control both ways; and the channel and request that make
it possible (Twisted's own hold the whole body before the resource sees the
request).

:class:`StreamingBody` sits between the gateway's request (which feeds it
each piece of body the client sends) and the ``Agent`` (which consumes it as
an :class:`~twisted.web.iweb.IBodyProducer`). While the upstream cannot take
more, or before it has started to take any, reading from the client is
paused; it resumes when the upstream asks for more. At most one network read
(about 64 KiB) is held here at a time, whatever the body's size.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any, Callable, Optional
from urllib.parse import unquote_to_bytes

from zope.interface import implementer

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
    IHalfCloseableDescriptor,
    IPushProducer,
    ISSLTransport,
)
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from twisted.web.server import Request

from metagateway.errors import (
    JSON_HEADERS,
    REASON_PHRASES,
    GatewayError,
    error_response,
    internal_error,
    new_request_id,
    payload_too_large,
)
from metagateway.http.drain import is_draining
from metagateway.observability.accesslog import note_refused

log = Logger()

CONNECTION_DONE = Failure(ConnectionDone())


class BodyTooLarge(Exception):
    """
    The client sent more body than the configured limit.
    """


class BodyAbandoned(Exception):
    """
    The request was answered before its body was complete; the rest of the
    body is dropped and never reaches the upstream.
    """


class BodyListener:
    """
    What a :class:`StreamingBody` tells the one relaying it; every method
    does nothing here, subclasses pick what they need.
    """

    def upstream_waiting(self) -> None:
        """
        The upstream is holding the body up: it paused it, or has the whole
        of it and owes an answer.
        """

    def upstream_reading(self) -> None:
        """
        The upstream takes body again; any wait is now the client's.
        """

    def body_too_large(self) -> None:
        """
        The body went past its limit; nothing more will be fed upstream.
        """


@implementer(IBodyProducer)
class StreamingBody:
    """
    A request body produced for the upstream while the client is still
    sending it.

    The request side calls :meth:`feed` with each piece of body, then
    :meth:`end` (all received) or :meth:`fail` (the client went away, or
    the framing broke). The ``Agent`` calls :meth:`startProducing`, and the
    upstream connection pauses and resumes it.

    :param length: the declared ``Content-Length``, or ``None`` for a
        chunked body.
    :param pause_client: stops reading from the client.
    :param resume_client: resumes reading from the client.
    :param limit: the largest body accepted, in bytes; 0 for no limit.

    :ivar received: bytes fed so far.
    :ivar complete: whether the client has sent the whole body.
    :ivar listener: told when the upstream holds the body up, and when the
        body goes past its limit.
    """

    def __init__(
        self,
        length: Optional[int],
        pause_client: Callable[[], None],
        resume_client: Callable[[], None],
        limit: int = 0,
    ) -> None:
        self.length = UNKNOWN_LENGTH if length is None else length
        self.limit = limit
        self.received = 0
        self.complete = False
        self.listener = BodyListener()
        self._pause_client = pause_client
        self._resume_client = resume_client
        self._consumer: Optional[IConsumer] = None
        self._pending: list[bytes] = []
        self._producing: Optional[Deferred[None]] = None
        self._upstream_paused = False
        self._stopped = False
        self._failure: Optional[Failure] = None
        # Nothing takes the body until the Agent has a connection.
        self._pause_client()

    @property
    def stopped(self) -> bool:
        """
        Whether the body is no longer wanted: the upstream stopped it, it
        failed or went past its limit, or it was abandoned.
        """
        return self._stopped or self._failure is not None

    # The request's side.

    def feed(self, data: bytes) -> None:
        """
        One more piece of the client's body.

        Dropped once the body is no longer wanted. Past the limit, the
        listener is told and the body fails with :class:`BodyTooLarge`.
        """
        if self.stopped:
            return
        self.received += len(data)
        if self.limit and self.received > self.limit:
            self._pending = []
            self.listener.body_too_large()
            self.fail(Failure(BodyTooLarge(self.limit)))
            return
        if self._consumer is not None:
            self._consumer.write(data)
        else:
            self._pending.append(data)
        if self._consumer is None or self._upstream_paused:
            # Someone else (the channel, when the client reads slowly) may
            # have resumed reading; hold the client again.
            self._pause_client()

    def end(self) -> None:
        """
        The client has sent the whole body.
        """
        if self.complete:
            return
        self.complete = True
        if self.stopped:
            return
        if self._producing is not None and not self._producing.called:
            self.listener.upstream_waiting()
            self._producing.callback(None)

    def fail(self, reason: Failure) -> None:
        """
        The body cannot be completed: the upstream must never see it as
        whole. Fails the Deferred :meth:`startProducing` returned, so the
        ``Agent`` drops the upstream connection.
        """
        if self.stopped:
            return
        self._failure = reason
        self._pending = []
        producing = self._producing
        if producing is not None and not producing.called:
            producing.errback(reason)

    def abandon(self) -> None:
        """
        The answer has been given without the rest of the body (an error,
        or an upstream that answered early); drop whatever comes.
        """
        if not self.complete:
            self.fail(Failure(BodyAbandoned()))

    # IBodyProducer: the Agent's side.

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        """
        Start writing the body to ``consumer``: what has arrived already,
        then each piece as it arrives.

        :return: a Deferred firing with ``None`` once the whole body is
            written, or failing if the body cannot be completed.
        """
        producing: Deferred[None] = Deferred(self._cancelled)
        self._producing = producing
        if self._failure is not None:
            producing.errback(self._failure)
            return producing
        self._consumer = consumer
        pending, self._pending = self._pending, []
        for data in pending:
            consumer.write(data)
        if self.complete:
            self.listener.upstream_waiting()
            producing.callback(None)
        else:
            self.listener.upstream_reading()
            if not self._upstream_paused:
                self._resume_client()
        return producing

    def pauseProducing(self) -> None:
        """
        The upstream's send buffer is full: stop reading from the client.
        """
        self._upstream_paused = True
        self._pause_client()
        if not self.stopped:
            self.listener.upstream_waiting()

    def resumeProducing(self) -> None:
        """
        The upstream takes more: read from the client again.
        """
        self._upstream_paused = False
        if self.stopped or self.complete or self._consumer is None:
            return
        self.listener.upstream_reading()
        self._resume_client()

    def stopProducing(self) -> None:
        """
        The upstream wants no more of the body (its connection closed, or
        the request was cancelled); the Deferred never fires.
        """
        self._stopped = True
        self._consumer = None
        self._pending = []

    def _cancelled(self, producing: Deferred[None]) -> None:
        self.stopProducing()


def framing_error(headers: Headers) -> Optional[GatewayError]:
    """
    Refuse a body whose framing could be read two ways.

    Twisted's channel already refuses a ``Content-Length`` beside a
    ``Transfer-Encoding``, repeated framing headers and unknown codings; it
    lets ``Transfer-Encoding: identity`` through, which some servers read
    differently. Only a lone ``chunked`` is accepted here.

    :return: the ``400`` to answer, or ``None`` when the framing is sound.
    """
    codings = headers.getRawHeaders(b"transfer-encoding")
    if codings is None:
        return None
    if len(codings) != 1 or codings[0].strip().lower() != b"chunked":
        return bad_request("Unsupported Transfer-Encoding")
    if headers.hasHeader(b"content-length"):
        return bad_request("Both Content-Length and Transfer-Encoding")
    return None


def bad_request(message: str = "Malformed request") -> GatewayError:
    """
    The answer to a request that cannot be parsed safely.
    """
    return GatewayError(400, "BAD_REQUEST", message, "CORE")


#: Seconds a client has to send a whole request head (request line and
#: headers, up to the blank line), from its first byte; ``0`` for no limit.
HEAD_TIMEOUT = 30.0


class GatewayChannel(HTTPChannel):
    """
    An HTTP/1.1 channel that lets its request act once the headers are in,
    and answers hostile input in the contract's JSON.

    Beyond Twisted's own parser, it:

    - limits the request head to :attr:`max_header_bytes` (request line,
      headers and line ends) and :attr:`max_headers` header lines:
      ``431 HEADERS_TOO_LARGE`` (``414 URI_TOO_LONG`` for the request line);
    - gives a client :attr:`head_timeout` seconds to send a request head,
      from its first byte (for bytes sent behind an earlier request, from
      the end of that request) to the blank line ending it, however it
      trickles in: past that, ``408 REQUEST_TIMEOUT``. A kept-alive
      connection with nothing of a next request is left to the idle
      timeout, and bodies are not covered;
    - answers every request Twisted refuses as malformed with a JSON
      ``400 BAD_REQUEST`` instead of a bare one, and so a request head
      whose lines end in a bare LF or CR (which Twisted's parser would wait
      on forever), and an HTTP/1.1 request without a ``Host`` header or any
      request with more than one (RFC 9112, section 3.2);
    - after a refusal, or an answer given before the request's body was all
      in, closes the connection gracefully: the answer is flushed, the
      sending side shut, and what the client still sends is read and dropped
      for at most :attr:`linger_seconds` (closing at once would reset the
      connection and could destroy the answer before the client reads it).

    :ivar request_line: ``(method, target, version)`` of the request whose
        head is being read, while it is.
    :ivar receiving_body: whether the current request's body is still
        arriving.
    """

    max_header_bytes = 16384
    max_headers = 100
    linger_seconds = 5.0
    head_timeout = HEAD_TIMEOUT

    def __init__(self) -> None:
        super().__init__()
        self.request_line: Optional[tuple[bytes, bytes, bytes]] = None
        self.receiving_body = False
        self._head_bytes = 0
        self._head_lines = 0
        # Whether the head being read is timed: _head_call is due when its
        # time is up. One call per connection, pushed back for each head
        # that takes more than one read; never touched by a head that
        # arrives whole.
        self._head_timed = False
        self._head_call: Optional[IDelayedCall] = None
        self._reading = False
        self._discarding = False
        self._linger_on_close = False
        self._linger_call: Optional[IDelayedCall] = None
        self._held = False

    def connectionMade(self) -> None:
        # Twisted's own limits stay as a backstop behind ours.
        self.MAX_LENGTH = self.max_header_bytes
        self.totalHeadersSize = max(self.max_header_bytes, 1)
        self.maxHeaders = max(self.max_headers, 1)
        super().connectionMade()
        self._secure = bool(super().isSecure())

    #: Whether the connection is TLS, once it is made.
    _secure: Optional[bool] = None
    _host: Optional[IAddress] = None
    _peer: Optional[IAddress] = None

    def getHost(self) -> IAddress:
        """
        The local address, asked of the transport once per connection
        rather than for every request (a system call each time).
        """
        if self._host is None:
            self._host = self.transport.getHost()  # type: ignore[union-attr]
        return self._host

    def getPeer(self) -> IAddress:
        """
        The client's address, asked of the transport once per connection.
        """
        if self._peer is None:
            self._peer = self.transport.getPeer()  # type: ignore[union-attr]
        return self._peer

    def isSecure(self) -> bool:
        """
        Whether the connection is TLS: known from its start, rather than
        adapting the transport to ``ISSLTransport`` for every request.
        """
        if self._secure is None:
            return bool(super().isSecure())
        return self._secure

    # Writing.

    def writeHeaders(
        self, version: bytes, code: bytes, reason: bytes, headers: Any
    ) -> None:
        """
        Twisted's ``writeHeaders``, with the head handed to the transport
        as one string: Twisted passes it as a sequence of four pieces per
        header, and the transport checks each piece with a Python call.
        The same bytes go out.
        """
        if not isinstance(headers, Headers):
            super().writeHeaders(version, code, reason, headers)
            return
        head = [version, b" ", code, b" ", reason, b"\r\n"]
        extend = head.extend
        for name, values in headers.getAllRawHeaders():
            for value in values:
                extend((name, b": ", value, b"\r\n"))
        head.append(b"\r\n")
        self.transport.write(b"".join(head))  # type: ignore[union-attr]

    # Reading.

    def dataReceived(self, data: bytes) -> None:
        if self._discarding:
            return
        if self._reading:
            # Twisted replaying bytes that came behind a request answered
            # during this read: the outer call's loop parses them.
            super().dataReceived(data)
            return
        self._reading = True
        try:
            super().dataReceived(data)
        finally:
            self._reading = False
        if self.line_mode:
            # Between requests, or part-way through a head.
            self._head_read()

    def _head_read(self) -> None:
        """
        After a read that leaves the channel reading request heads: time a
        head that has begun and is not complete, or refuse it at once if its
        line ends can never be parsed.

        Twisted's parser holds an incomplete line back; it is looked at
        (``clearLineBuffer``) and handed back as it was.
        """
        transport = self.transport
        if (
            self._discarding
            or transport is None
            or getattr(transport, "disconnecting", False)
        ):
            return
        rest = self.clearLineBuffer()
        if rest:
            # Lines end only at CRLF: a CR or LF alone (a CR last may be
            # followed by its LF) would hold the head back forever, and a
            # line holding one is refused once complete anyway.
            if b"\n" in rest or rest.find(b"\r", 0, -1) >= 0:
                self.reject(bad_request("Request head lines must end with CRLF"))
                return
            LineReceiver.dataReceived(self, rest)
        elif not self._head_lines:
            # Nothing of a next request: the idle timeout's business.
            return
        if not self._head_timed and self.head_timeout:
            self._head_timed = True
            call = self._head_call
            if call is not None and call.active():
                call.reset(self.head_timeout)
            else:
                self._head_call = self.callLater(self.head_timeout, self._head_late)

    def _head_late(self) -> None:
        self._head_call = None
        if self._head_timed and not self._discarding:
            self.reject(head_too_slow())

    def rawDataReceived(self, data: bytes) -> None:
        if self._discarding:
            return
        super().rawDataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._discarding:
            return
        self._head_bytes += len(line) + 2
        if line:
            self._head_lines += 1
        if self._head_bytes > self.max_header_bytes or (
            self._head_lines > self.max_headers + 1
        ):
            self.reject(headers_too_large())
            return
        if line and self._head_lines == 1:
            parts = line.split(b" ")
            if len(parts) == 3:
                self.request_line = (parts[0], parts[1], parts[2])
        # The base class by name: this runs for every line of every head.
        HTTPChannel.lineReceived(self, line)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._head_lines == 0:
            self.reject(GatewayError(414, "URI_TOO_LONG", "Request target too long"))
        else:
            self.reject(headers_too_large())

    def allHeadersReceived(self) -> None:
        self._head_timed = False
        line = self.request_line
        if line is not None and self.requests:
            hosts = self.requests[-1].requestHeaders.getRawHeaders(b"host")
            if (hosts is None and line[2] == b"HTTP/1.1") or (
                hosts is not None and len(hosts) > 1
            ):
                self.reject(bad_request("Missing or repeated Host header"))
                return
        self.receiving_body = self.length != 0
        super().allHeadersReceived()
        self._head_bytes = self._head_lines = 0
        self.request_line = None
        if self._discarding or not self.requests:
            return
        # After Twisted's own handling (100 Continue), so that an answer
        # given at once is the last thing written.
        ready = getattr(self.requests[-1], "headersReceived", None)
        if ready is not None:
            ready()

    def allContentReceived(self) -> None:
        if self._discarding:
            return
        self.receiving_body = False
        self._held = False
        super().allContentReceived()

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        """
        Twisted's check, with the ``Connection`` header read as the comma
        list it is (Twisted splits it on spaces, so ``close, X-Foo`` would
        keep the connection open).
        """
        values = request.requestHeaders.getRawHeaders(b"connection")
        if not values:
            return bool(super().checkPersistence(request, version))
        tokens = {
            token.strip().lower() for value in values for token in value.split(b",")
        }
        if version == b"HTTP/1.1" and b"close" in tokens:
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            return False
        return bool(super().checkPersistence(request, version))

    # Flow control of the client's body.

    def pause_reading(self) -> None:
        """
        Stop reading from the client (its body waits in the network) until
        the upstream takes more.
        """
        self._held = True
        producer = IPushProducer(self.transport, None)
        if producer is not None and not self._discarding:
            producer.pauseProducing()

    def resume_reading(self) -> None:
        """
        Read from the client again.
        """
        self._held = False
        producer = IPushProducer(self.transport, None)
        if producer is not None and not self._discarding:
            producer.resumeProducing()

    # The idle timeout. Twisted's ``TimeoutMixin`` reschedules its timer
    # on every read and cancels and re-creates it around every request:
    # three reactor calls per request. With the site's clock known, one
    # timer per connection notes when the connection was last active and,
    # come due early, waits again for the rest; the timing is the same.

    #: The clock's ``seconds``, given by the site with its ``callLater``;
    #: without it the idle timeout is ``TimeoutMixin``'s own.
    seconds: Optional[Callable[[], float]] = None
    _idle_call: Optional[IDelayedCall] = None
    _idle_since = 0.0

    def resetTimeout(self) -> None:
        seconds = self.seconds
        if seconds is None:
            super().resetTimeout()
        elif self.timeOut is not None and self._idle_call is not None:
            self._idle_since = seconds()

    def setTimeout(self, period: Optional[int]) -> Optional[int]:
        seconds = self.seconds
        if seconds is None:
            return super().setTimeout(period)  # type: ignore[no-any-return]
        previous, self.timeOut = self.timeOut, period
        if period is not None:
            now = self._idle_since = seconds()
            call = self._idle_call
            if call is None:
                self._idle_call = self.callLater(period, self._idle_due)
            elif call.getTime() > now + period:
                call.reset(period)
        # Off (None): a timer still set lapses when it comes due.
        return previous

    def _idle_due(self) -> None:
        self._idle_call = None
        period = self.timeOut
        if period is None or self.seconds is None:
            return
        rest = self._idle_since + period - self.seconds()
        if rest > 0:
            self._idle_call = self.callLater(rest, self._idle_due)
        else:
            self.timeoutConnection()

    def timeoutConnection(self) -> None:
        # While the client's body is held for a slow upstream, the silence
        # is the upstream's; the upstream timeout bounds that wait.
        if self.receiving_body and self._held:
            self.setTimeout(self.timeOut)
            return
        super().timeoutConnection()

    # Closing.

    def requestDone(self, request: Any) -> None:
        if self.receiving_body:
            # Answered before the body was all in: the rest of it must never
            # be read as a next request.
            self.persistent = False
            self._linger_on_close = True
        super().requestDone(request)

    def loseConnection(self) -> None:
        if self._linger_on_close and not self._discarding:
            self._linger()
            return
        super().loseConnection()

    def reject(self, error: GatewayError) -> None:
        """
        Answer ``error`` straight on the connection, then close it
        gracefully; the request is never dispatched.
        """
        transport = self.transport
        if self._discarding or transport is None:
            return
        request_id = new_request_id()
        body = error.body(request_id)
        reason = REASON_PHRASES.get(error.status) or RESPONSES.get(
            error.status, b"Error"
        )
        head = [b"HTTP/1.1 %d %s\r\n" % (error.status, reason)]
        for name, value in JSON_HEADERS:
            head.append(name + b": " + value + b"\r\n")
        head.append(b"X-Request-Id: " + request_id.encode("ascii") + b"\r\n")
        head.append(b"Content-Length: %d\r\n" % (len(body),))
        head.append(b"Connection: close\r\n\r\n")
        transport.writeSequence(head + [body])
        log.info(
            "Refused a request from {peer}: {status} {code}",
            peer=getattr(transport.getPeer(), "host", "-"),
            status=error.status,
            code=error.code,
        )
        self.persistent = False
        self._linger()
        # A request already dispatched (its body broke mid-way) is over:
        # its upstream call is cancelled, and its answer never written.
        for request in list(self.requests):
            if not request.finished:
                note_refused(request, error.status, error.code)
                request.connectionLost(Failure(ConnectionAborted("request refused")))

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's parser calls this for every malformed request it
        # refuses; answer in the contract's JSON rather than a bare 400.
        self.reject(bad_request())

    def _linger(self) -> None:
        self._discarding = True
        self.receiving_body = False
        transport = self.transport
        if transport is None:
            return
        if hasattr(transport, "unregisterProducer"):
            transport.unregisterProducer()
        producer = IPushProducer(transport, None)
        if producer is not None:
            producer.resumeProducing()
        if IHalfCloseableDescriptor.providedBy(
            transport
        ) and not ISSLTransport.providedBy(transport):
            transport.loseWriteConnection()  # type: ignore[attr-defined]
        self._linger_call = self.callLater(self.linger_seconds, self._linger_over)

    def _linger_over(self) -> None:
        self._linger_call = None
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = CONNECTION_DONE) -> None:
        for call in (self._linger_call, self._head_call, self._idle_call):
            if call is not None and call.active():
                call.cancel()
        self._linger_call = self._head_call = self._idle_call = None
        super().connectionLost(reason)


#: What :func:`when_done` hooks are called with: ``None`` once the answer
#: is finished, or the ``Failure`` of a connection lost before that.
DoneHook = Callable[..., object]


def when_done(request: Any, hook: DoneHook, *args: Any) -> None:
    """
    Call ``hook(result, *args)`` once ``request`` is over: ``result`` is
    ``None`` when its answer was finished, else the ``Failure`` its
    connection was lost with, as with ``request.notifyFinish()``.

    The gateway's request (:class:`StreamingRequest`) calls its hooks
    directly, in the order they were added, without a ``Deferred`` for
    each; any other request goes through ``notifyFinish()``.
    """
    add = getattr(request, "add_done_hook", None)
    if add is not None:
        add(hook, args)
    else:
        request.notifyFinish().addBoth(hook, *args)


def headers_too_large() -> GatewayError:
    """
    The answer to a request head over the limits.
    """
    return GatewayError(
        431, "HEADERS_TOO_LARGE", "Request header fields too large", "CORE"
    )


def head_too_slow() -> GatewayError:
    """
    The answer to a request head not received within the head timeout.
    """
    return GatewayError(
        408, "REQUEST_TIMEOUT", "Request head not received in time", "CORE"
    )


class StreamingRequest(Request):
    """
    A request that starts routing as soon as its headers are in.

    On a :class:`GatewayChannel`, once the headers have arrived the site's
    resource is asked (its ``classify(request)``) where the request goes:

    - a proxied route with a body: the request is dispatched at once, and
      its body is fed to :attr:`body_stream` as it arrives, for the proxy
      to stream upstream;
    - anything else: the body is buffered as usual, capped at the target's
      ``max_body`` (``413 PAYLOAD_TOO_LARGE`` past it, answered without
      reading the rest).

    A request without a body (``Content-Length: 0``, or neither it nor
    ``Transfer-Encoding``) is not classified early: it has nothing to
    stream or cap, and the resource classifies it once, as it renders it.
    On any other channel, or under a resource that cannot classify, it is
    an ordinary buffered request.

    :ivar body_stream: the streaming body, when the request streams.
    """

    body_stream: Optional[StreamingBody] = None
    _plan: Optional[str] = None
    _refusal: Optional[GatewayError] = None
    _body_dropped = False
    _body_cap = 0
    _body_seen = 0
    _cap_route = "CORE"
    _body_length: Optional[int] = None
    #: Whether the client waits for "100 Continue" before its body.
    _continue_pending = False
    _done_hooks: Optional[list[tuple[DoneHook, tuple[Any, ...]]]] = None
    #: ``None`` until the request is over; then the hooks' result.
    _done: Optional[tuple[Optional[Failure]]] = None

    def add_done_hook(self, hook: DoneHook, args: tuple[Any, ...] = ()) -> None:
        """
        Call ``hook(result, *args)`` once the request is over (see
        :func:`when_done`); at once if it is over already.
        """
        if self._done is not None:
            self._call_hook(hook, args, self._done[0])
        elif self._done_hooks is None:
            self._done_hooks = [(hook, args)]
        else:
            self._done_hooks.append((hook, args))

    def _over(self, result: Optional[Failure]) -> None:
        if self._done is not None:
            return
        self._done = (result,)
        hooks, self._done_hooks = self._done_hooks, None
        if hooks:
            for hook, args in hooks:
                self._call_hook(hook, args, result)

    @staticmethod
    def _call_hook(
        hook: DoneHook, args: tuple[Any, ...], result: Optional[Failure]
    ) -> None:
        try:
            hook(result, *args)
        except Exception:
            log.failure("Unexpected error once a request was over")

    def gotLength(self, length: Optional[int]) -> None:
        channel = self.channel
        line = getattr(channel, "request_line", None)
        if line is None or not isinstance(channel, GatewayChannel):
            super().gotLength(length)
            return
        self.method, self.uri, self.clientproto = line
        self.path = self.uri.split(b"?", 1)[0]
        refusal = framing_error(self.requestHeaders)
        if refusal is not None:
            self._drop_body()
            channel.reject(refusal)
            return
        if length == 0:
            # No body to stream, cap or refuse: the resource classifies the
            # request once, when it renders it.
            super().gotLength(length)
            return
        target = self._classify()
        if target is None:
            super().gotLength(length)
        elif target.max_body == 0 and length != 0:
            self._plan = "stream"
            self.content = BytesIO()
            self._body_length = length
            expect = self.requestHeaders.getRawHeaders(b"expect")
            if expect and expect[0].lower() == b"100-continue":
                # "100 Continue" once the upstream takes the body, not now:
                # a request refused on its head (a bad token) is answered
                # without inviting the body first (RFC 9110, 10.1.1).
                self.requestHeaders.removeHeader(b"expect")
                self._continue_pending = line[2] == b"HTTP/1.1"
        elif length is not None and target.max_body and length > target.max_body:
            self._refuse_early(payload_too_large(target.route, target.max_body))
        else:
            self._body_cap = target.max_body
            self._cap_route = target.route
            super().gotLength(length)

    def _classify(self) -> Any:
        site = getattr(self.channel, "site", None)
        if site is None:
            return None
        self.prepath = []
        self.postpath = [unquote_to_bytes(p) for p in self.path[1:].split(b"/")]
        resource = site.getResourceFor(self)
        classify = getattr(resource, "classify", None)
        if classify is None:
            return None
        return classify(self)

    def _drop_body(self) -> None:
        self._body_dropped = True
        self.content = BytesIO()
        # No "100 Continue" for a body that will not be read.
        self.requestHeaders.removeHeader(b"expect")

    def _refuse_early(self, error: GatewayError) -> None:
        self._drop_body()
        self._plan = "refuse"
        self._refusal = error

    def headersReceived(self) -> None:
        """
        Called by the channel once the headers are in and Twisted has done
        with them: dispatch now if the request streams or is refused.
        """
        plan, self._plan = self._plan, None
        if plan == "stream":
            self.args = {}
            channel: Any = self.channel
            self.body_stream = StreamingBody(
                self._body_length,
                channel.pause_reading,
                self._continue_then_resume
                if self._continue_pending
                else channel.resume_reading,
            )
            self.process()
        elif plan == "refuse":
            self._dispatch_refusal()

    def _continue_then_resume(self) -> None:
        """
        Read the body on, after telling a client that waits for it that it
        may send it (the first time, and only if no answer has begun).
        """
        channel: Any = self.channel
        if self._continue_pending:
            self._continue_pending = False
            transport = getattr(channel, "transport", None)
            if transport is not None and not self.startedWriting and not self.finished:
                transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        channel.resume_reading()

    def _dispatch_refusal(self) -> None:
        # Through the resource, so that the answer is counted and logged
        # like any other.
        self.args = {}
        self.metagatewayEarlyError = self._refusal
        self.process()

    def handleContentChunk(self, data: bytes) -> None:
        stream = self.body_stream
        if stream is not None:
            stream.feed(data)
            return
        if self._body_dropped:
            return
        if self._body_cap:
            self._body_seen += len(data)
            if self._body_seen > self._body_cap:
                if self.content is not None:
                    self.content.close()
                self._refuse_early(payload_too_large(self._cap_route, self._body_cap))
                self._plan = None
                self._dispatch_refusal()
                return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        stream = self.body_stream
        if stream is not None:
            stream.end()
            return
        if self._body_dropped:
            return
        super().requestReceived(command, path, version)

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            channel = getattr(self, "channel", None)
            if channel is not None and (
                getattr(channel, "receiving_body", False) or is_draining(self)
            ):
                # The connection closes after this answer.
                channel.persistent = False
                self.responseHeaders.setRawHeaders(b"Connection", [b"close"])
        super().write(data)

    def finish(self) -> None:
        stream = self.body_stream
        if stream is not None:
            self.metagatewayBytesIn = stream.received
            stream.abandon()
        super().finish()
        if self.finished:
            self._over(None)

    def connectionLost(self, reason: Failure) -> None:
        stream = self.body_stream
        if stream is not None:
            self.metagatewayBytesIn = stream.received
        super().connectionLost(reason)
        self._over(reason)
        if stream is not None:
            stream.fail(reason)

    def processingFailed(self, reason: Failure) -> Failure:
        """
        Answer an unexpected failure with the JSON ``500``, never Twisted's
        HTML page; a failure after the answer started closes the connection.
        """
        log.failure("Unexpected error processing a request", reason)
        if self.startedWriting or self.finished:
            transport = getattr(self.channel, "transport", None)
            if transport is not None:
                transport.abortConnection()
            return reason
        body = error_response(self, internal_error())
        self.write(body)
        self.finish()
        return reason
