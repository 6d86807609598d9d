"""
The gateway's HTTP/1.1 channel: Twisted's parser, with limits on the
request head, a head timeout, JSON answers to hostile input, a graceful
close, flow control of the client's body, and a request that may act as
soon as its headers are in (:mod:`metagateway.http.request`).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from zope.interface import Interface

from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
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

from metagateway.errors import (
    JSON_HEADERS,
    REASON_PHRASES,
    GatewayError,
    new_request_id,
)
from metagateway.http.names import CONNECTION, HOST
from metagateway.http.twisted_internals import (
    ChannelInternals,
    header_map,
    take_pipelined,
)
from metagateway.observability.accesslog import note_refused

log = Logger()


class IHeadersReceived(Interface):
    """
    A request that acts as soon as its head is in: a
    :class:`GatewayChannel` calls it once Twisted has handled the head,
    before any of the body is read.
    """

    def headersReceived() -> None:
        """
        The head is in and handled (``gotLength``, ``100 Continue``).
        """


#: Whether requests of a class provide :class:`IHeadersReceived`.
_ANNOUNCES_HEAD: dict[type, bool] = {}


CONNECTION_DONE = Failure(ConnectionDone())


def bad_request(message: str = "Malformed request") -> GatewayError:
    """
    The answer to a request that cannot be parsed safely.
    """
    return GatewayError(400, "BAD_REQUEST", message, "CORE")


#: Seconds a client has to send a whole request head (request line and
#: headers, up to the blank line), from its first byte; ``0`` for no limit.
HEAD_TIMEOUT = 30.0


class GatewayChannel(ChannelInternals):
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

    Twisted's private and undocumented hooks are reached only through
    :class:`~metagateway.http.twisted_internals.ChannelInternals`.
    """

    max_header_bytes = 16384
    max_headers = 100
    #: Whether a head that arrives whole is handled in one go
    #: (:meth:`~metagateway.http.twisted_internals.ChannelInternals.whole_head`)
    #: rather than line by line; the outcome is the same.
    whole_heads = True
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
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.dataReceived(data)
            return
        if self.discarding:
            return
        if self._reading:
            # Twisted replaying bytes that came behind a request answered
            # during this read: the outer call's loop parses them.
            super().dataReceived(data)
            return
        self._reading = True
        try:
            rest = None
            if self.whole_heads and self.line_mode:
                rest = self.whole_head(
                    data, self.max_header_bytes, self.max_headers + 1
                )
            if rest is None:
                super().dataReceived(data)
            elif rest and not self.discarding:
                transport = self.transport
                if transport is not None and not transport.disconnecting:  # type: ignore[attr-defined]
                    super().dataReceived(rest)
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
            self.discarding
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
        if self._head_timed and not self.discarding:
            self.reject(head_too_slow())

    def lineReceived(self, line: bytes) -> None:
        if self.discarding:
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

    def head_lines(
        self, request_line: tuple[bytes, bytes, bytes], size: int, lines: int
    ) -> None:
        self._head_bytes = size
        self._head_lines = lines
        self.request_line = request_line

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._head_lines == 0:
            self.reject(GatewayError(414, "URI_TOO_LONG", "Request target too long"))
        else:
            self.reject(headers_too_large())

    def head_received(self, request: Any, length: Optional[int]) -> bool:
        """
        Refuse an HTTP/1.1 head without a ``Host`` header, or any head with
        more than one; note whether a body follows.
        """
        self._head_timed = False
        line = self.request_line
        if line is not None:
            hosts = header_map(request.requestHeaders).get(HOST)
            if (not hosts and line[2] == b"HTTP/1.1") or (
                hosts is not None and len(hosts) > 1
            ):
                self.reject(bad_request("Missing or repeated Host header"))
                return False
        self.receiving_body = length != 0
        return True

    def head_handled(self, request: Any) -> None:
        """
        Tell a request that acts on its head (:class:`IHeadersReceived`)
        that it may: after Twisted's own handling (``100 Continue``), so
        that an answer given at once is the last thing written.
        """
        self._head_bytes = self._head_lines = 0
        self.request_line = None
        if self.discarding:
            return
        # Asked of the request's class once: providedBy costs more than
        # the rest of this method.
        kind = request.__class__
        announce = _ANNOUNCES_HEAD.get(kind)
        if announce is None:
            announce = _ANNOUNCES_HEAD[kind] = IHeadersReceived.implementedBy(kind)
        if announce:
            request.headersReceived()

    def body_received(self) -> bool:
        """
        The body is in: the client is no longer held for the upstream.
        """
        self.receiving_body = False
        self._held = False
        return True

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        """
        Twisted's check, with the ``Connection`` header read as the comma
        list it is (Twisted splits it on spaces, so ``close, X-Foo`` would
        keep the connection open).
        """
        values = header_map(request.requestHeaders).get(CONNECTION)
        if not values:
            if version == b"HTTP/1.1":
                # Twisted's answer, without asking the headers again.
                return True
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
        if producer is not None and not self.discarding:
            producer.pauseProducing()

    def resume_reading(self) -> None:
        """
        Read from the client again.
        """
        self._held = False
        producer = IPushProducer(self.transport, None)
        if producer is not None and not self.discarding:
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

    def answered(self, request: Any) -> None:
        """
        Close the connection after an answer given before the request's
        body was all in: the rest of it must never be read as a next
        request.
        """
        if self.receiving_body:
            self.close_after_answer()
            self._linger_on_close = True

    def loseConnection(self) -> None:
        if self._linger_on_close and not self.discarding:
            self._linger()
            return
        super().loseConnection()

    def reject(self, error: GatewayError) -> None:
        """
        Answer ``error`` straight on the connection, then close it
        gracefully; the request is never dispatched.
        """
        transport = self.transport
        if self.discarding or transport is None:
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
        self.close_after_answer()
        self._linger()
        # A request already dispatched (its body broke mid-way) is over:
        # its upstream call is cancelled, and its answer never written.
        for request in self.queued_requests():
            if not request.finished:
                note_refused(request, error.status, error.code)
                request.connectionLost(Failure(ConnectionAborted("request refused")))

    def refuse_malformed(self) -> None:
        """
        Answer a request Twisted's parser refuses in the contract's JSON
        rather than a bare ``400``.
        """
        self.reject(bad_request())

    def _linger(self) -> None:
        self.discarding = True
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

    # Handing the connection over (a joined WebSocket).

    #: What the connection carries once it no longer speaks HTTP: it gets
    #: every byte the client sends (``dataReceived``) and the loss of the
    #: connection (``connectionLost``), before the request does.
    tunnel: Optional[Any] = None

    def hand_over(self, tunnel: Any) -> bytes:
        """
        Stop speaking HTTP on this connection (its request was answered
        ``101 Switching Protocols``): from now on ``tunnel`` gets what the
        client sends, the idle and head timeouts are off, the connection's
        reading is resumed and no longer paced by the channel, and it
        closes once the request is finished.

        :return: what the client sent past the request's head already.
        """
        self.tunnel = tunnel
        self.setTimeout(None)
        call = self._head_call
        if call is not None and call.active():
            call.cancel()
        self._head_call = None
        self.close_after_answer()
        transport = self.transport
        if transport is not None:
            transport.unregisterProducer()  # type: ignore[attr-defined]
            producer = IPushProducer(transport, None)
            if producer is not None:
                producer.resumeProducing()
        return take_pipelined(self)

    def connectionLost(self, reason: Failure = CONNECTION_DONE) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            self.tunnel = None
            tunnel.connectionLost(reason)
        for call in (self._linger_call, self._head_call, self._idle_call):
            if call is not None and call.active():
                call.cancel()
        self._linger_call = self._head_call = self._idle_call = None
        super().connectionLost(reason)


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
