"""
Where the proxy depends on private behaviour of Twisted's HTTP client.

Everything here uses a name Twisted does not publish (a leading
underscore, or a module such as ``twisted.web._newclient``) or relies on
how a public class works inside. Each use says why it is needed;
``tests/unit/test_twisted_client_internals.py`` checks every one of them
(it exists, its signature, what it does) and fails naming the hook and the
Twisted version when an upgrade changes it. Nothing else in
:mod:`metagateway.proxy` reaches into Twisted's client.

The server side has its own such module, ``metagateway.http.twisted_internals``.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Optional
from weakref import WeakKeyDictionary

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress, IStreamClientEndpoint
from twisted.python.failure import Failure

# Why: the Agent hands the pool's connection a Request; UpstreamAgent does
# the same without re-parsing the URL (see pool_request).
# HTTP11ClientProtocol is subclassed (see GatewayClientProtocol).
# HTTPClientParser and its STATUS and HEADER states: the response head is
# parsed in one go when it arrives whole; TransportProxyProducer stands
# between the parser and the connection (see receive_head, _HeldPause).
from twisted.web._newclient import (
    HEADER,
    STATUS,
    HTTP11ClientProtocol,
    HTTPClientParser,
    Request,
    TransportProxyProducer,
)

# Why: the only way to choose the protocol (and the log noise) of the
# pool's connections is to give the pool another factory (see
# use_gateway_factory).
from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory
from twisted.web.http import _ChunkedTransferDecoder

# Why: Headers.addRawHeader canonicalises each name with the private
# _nameEncoder; receive_head names the headers it files the same way.
from twisted.web.http_headers import Headers, InvalidHeaderName, _nameEncoder
from twisted.web.iweb import IBodyProducer, IResponse

from metagateway.http.names import CONNECTION
from metagateway.http.twisted_internals import header_map

#: Responses whose connection was lost uncleanly (a reset, an aborted TLS
#: session) while their body was still arriving, with the reason.
_LOST_UNCLEANLY: WeakKeyDictionary[Any, Failure] = WeakKeyDictionary()


class GatewayClientProtocol(HTTP11ClientProtocol):
    """
    Twisted's HTTP/1.1 client protocol, telling the proxy two things the
    stock one keeps to itself.

    - The response's ``Connection`` header. Why: the parser files it (with
      ``Content-Length``, ``Transfer-Encoding`` and the other
      connection-control headers) in its private ``connHeaders``, not in
      ``response.headers``; without it, a header the upstream names in
      ``Connection`` cannot be recognised as hop-by-hop (RFC 9110 §7.6.1).
      It is copied to ``response.headers`` when the response arrives.
    - How a close-delimited body ended. Why: a body with neither
      ``Content-Length`` nor chunking ends with the connection, and the
      parser reports ``PotentialDataLoss`` whether the upstream closed it
      or it was reset: the reason is dropped. A reset truncates the body,
      and must not be passed on as complete; see :func:`lost_uncleanly`.
    """

    def request(self, request: Request) -> Deferred[Any]:
        """
        Send ``request`` (see ``HTTP11ClientProtocol.request``); its
        response carries its ``Connection`` header.
        """
        answered: Deferred[Any] = super().request(request)
        # Why: _parser is the private HTTPClientParser just made for this
        # request; it is kept here because the protocol lets go of it as
        # soon as the response is complete, possibly before it fires.
        parser = self._parser
        if parser is not None:
            answered.addCallback(_add_connection_header, parser)
        return answered

    #: Whether a response head that arrives whole is parsed in one go
    #: (:func:`receive_head`); off, every head takes Twisted's line-by-line
    #: path (the tests compare the two).
    whole_heads = True

    def dataReceived(self, data: bytes) -> None:
        """
        Hand ``data`` to the response's parser, as the stock protocol does;
        a response head that arrives whole is parsed in one go
        (:func:`receive_head`), with the same outcome.
        """
        # Why: HTTP11ClientProtocol.dataReceived is this try/except around
        # _parser.dataReceived, whatever the parser raises giving up the
        # connection through the private _giveUp.
        try:
            parser = self._parser
            if not (self.whole_heads and receive_head(parser, data)):
                parser.dataReceived(data)  # type: ignore[union-attr]
        except BaseException:
            self._giveUp(Failure())

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        """
        Remember an unclean end of a response whose body was still
        arriving, then let the stock protocol report it.
        """
        # Why: _parser is set while a response is being received, and its
        # response attribute once the status line is in.
        response = getattr(self._parser, "response", None)
        if response is not None and not isinstance(reason.value, ConnectionDone):
            _LOST_UNCLEANLY[response] = reason
        super().connectionLost(reason)


#: Each header name seen in a head parsed whole, as received, to its
#: lower-case form and Twisted's canonical one; only names Twisted accepts.
_HEADER_NAMES: dict[bytes, tuple[bytes, bytes]] = {}
#: How many names :data:`_HEADER_NAMES` keeps at most (a peer sending ever
#: new names must not grow it without bound), as Twisted's own name cache.
_MAX_HEADER_NAMES = 10_000


def receive_head(parser: Any, data: bytes) -> bool:
    """
    Parse a whole response head at the start of ``data`` in one go, as
    ``parser`` (Twisted's ``HTTPClientParser``) would line by line, and
    pass what follows it (body bytes) to the parser; or, when ``data``
    does not start with a whole head this takes, change nothing and
    return ``False`` for the stock path to parse it.

    Taken: the parser waits for a status line with nothing buffered; the
    head ends with an empty line (CR LF CR LF), is no longer than the
    parser's line limit and holds no CR or LF but its line ends; its
    status line is
    ``HTTP/1.1`` or ``HTTP/1.0`` and a 2xx-5xx code; each header line is a
    token name, a colon and a value (no obs-fold, no missing colon). The
    outcome is Twisted's, through its own methods: ``statusReceived``
    makes the response, ``isConnectionControlHeader`` sorts the headers
    into ``headers`` and ``connHeaders`` (names in Twisted's canonical
    form, values stripped as ``lineReceived`` strips them),
    ``allHeadersReceived`` chooses the body's decoder and fires the
    response (the headers are sorted before the response is made, so that
    a refused line leaves nothing changed: neither step looks at the
    other); then the rest goes to the body decoder, as the parser's
    ``dataReceived`` loop would have handed it. What is saved is Twisted's
    loop over the lines (``LineReceiver.dataReceived``, ``lineReceived``,
    ``headerReceived``, ``addRawHeader``): about a hundred Python lines
    for a seven-line head. And the pause of the connection that
    ``allHeadersReceived`` asks for before it fires the response is held
    until the response's receivers have run, and dropped if they resume
    the connection (:class:`_HeldPause`): two system calls fewer.

    :return: whether the head was parsed here.
    """
    # Why: the parser's private state, as HTTPParser (a LineReceiver)
    # keeps it: state (STATUS until a status line comes), the LineReceiver
    # buffer and re-entrancy flag, its line mode and pause; anything else
    # (another parser, a body or trailer being read) takes the stock path.
    if (
        type(parser) is not HTTPClientParser
        or parser.state != STATUS
        or parser._buffer
        or parser._busyReceiving
        or not parser.line_mode
        or parser.paused
    ):
        return False
    end = data.find(b"\r\n\r\n")
    if end <= 0 or end >= parser.MAX_LENGTH:
        return False
    head = data[:end]
    breaks = head.count(b"\n")
    if head.count(b"\r") != breaks or head.count(b"\r\n") != breaks:
        # A bare CR or LF: Twisted splits lines on LF alone.
        return False
    lines = head.split(b"\r\n")
    status = lines[0]
    version = status[:9]
    code = status[9:12]
    if (
        (version != b"HTTP/1.1 " and version != b"HTTP/1.0 ")
        or len(code) != 3
        or not code.isdigit()
        or code[0] not in b"2345"
        or status[12:13] not in (b"", b" ")
    ):
        return False
    # The two Headers are empty while the parser waits for a status line;
    # they are filled here and emptied again if a line is refused.
    headers = header_map(parser.headers)
    connection = header_map(parser.connHeaders)
    if headers or connection:
        return False
    names = _HEADER_NAMES
    control = parser.isConnectionControlHeader
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        known = names.get(name)
        if known is None or not colon:
            known = _header_name(name) if colon else None
            if known is None:
                headers.clear()
                connection.clear()
                return False
        lower, canonical = known
        target = connection if control(lower) else headers
        target.setdefault(canonical, []).append(value.strip())
    # As HTTPClientParser.dataReceived and LineReceiver.dataReceived do,
    # down to what they leave behind: the last header line kept as
    # _partialHeader, what follows the head buffered while
    # allHeadersReceived runs (it hands it on when the response has no
    # body), the parser marked busy meanwhile.
    parser._everReceivedData = True
    parser._busyReceiving = True
    parser._buffer = data[end + 4 :]
    try:
        parser.statusReceived(status)
        parser.state = HEADER
        if len(lines) > 1:
            parser._partialHeader = [lines[-1]]
        # Why: the parser's transport is the private TransportProxyProducer
        # that HTTP11ClientProtocol.request puts before the connection; its
        # _producer is the connection.
        proxy: Any = parser.transport
        if type(proxy) is TransportProxyProducer and proxy._producer is not None:
            held = _HeldPause(proxy._producer)
            proxy._producer = held
            try:
                parser.allHeadersReceived()
            finally:
                if proxy._producer is held:
                    proxy._producer = held.producer
                held.release()
        else:
            parser.allHeadersReceived()
        # LineReceiver.dataReceived's loop once the parser is in body
        # (raw) mode: the body bytes that came with the head go to the
        # body decoder (rawDataReceived), still busy. Measured: this saves
        # the loop's entry (a quarter of a per cent of a small request).
        while parser._buffer and not parser.line_mode and not parser.paused:
            rest = parser._buffer
            parser._buffer = b""
            parser.rawDataReceived(rest)
    finally:
        parser._busyReceiving = False
    if parser._buffer:
        # Anything the loop above leaves (the parser paused, or back in
        # line mode): the parser's own loop, as it would have carried on.
        parser.dataReceived(b"")
    return True


class _HeldPause:
    """
    The connection, as the parser's ``TransportProxyProducer`` reaches it
    while ``allHeadersReceived`` runs: the pause that method asks for
    before it fires the response is held back, and dropped if the
    response's receivers resume the connection before anything else
    (``deliverBody`` does, in the same call): the connection is then never
    paused, which spares a pair of system calls per response (epoll DEL
    and ADD). Any other call applies the held pause first, as it was
    asked; if it is still held when ``allHeadersReceived`` returns, it is
    applied then (:meth:`release`).

    So the connection is told what Twisted tells it, in the same order,
    less a pause that a resume follows at once. What differs: while the
    response's receivers run, the connection is not paused (no reactor
    turn comes in between, so no bytes are read meanwhile); and were the
    connection resumed behind the parser's back then (not through the
    response's transport) and never through it, it would end paused where
    Twisted's ends resumed. Nothing in the gateway does that.
    """

    __slots__ = ("producer", "held", "first")

    def __init__(self, producer: Any) -> None:
        self.producer = producer
        self.held = False
        self.first = True

    def _apply(self) -> None:
        self.first = False
        if self.held:
            self.held = False
            self.producer.pauseProducing()

    def pauseProducing(self) -> None:
        """
        Hold the parser's pause (the first call); apply any later one.
        """
        if self.first:
            self.first = False
            self.held = True
        else:
            self._apply()
            self.producer.pauseProducing()

    def resumeProducing(self) -> None:
        """
        Drop a held pause; resume the connection, as it was asked.
        """
        self.first = False
        self.held = False
        self.producer.resumeProducing()

    def stopProducing(self) -> None:
        """
        Stop the connection, the held pause applied first.
        """
        self._apply()
        self.producer.stopProducing()

    def loseConnection(self) -> None:
        """
        Close the connection, the held pause applied first.
        """
        self._apply()
        self.producer.loseConnection()

    def release(self) -> None:
        """
        Apply a pause still held: nobody resumed the connection.
        """
        self._apply()


def _header_name(name: bytes) -> Optional[tuple[bytes, bytes]]:
    """
    ``name`` in lower case and in Twisted's canonical form, remembered; or
    ``None`` if Twisted refuses it (not a token).
    """
    if not name:
        return None
    lower = name.lower()
    try:
        canonical = _nameEncoder.encode(lower)
    except InvalidHeaderName:
        return None
    if len(_HEADER_NAMES) < _MAX_HEADER_NAMES:
        _HEADER_NAMES[name] = (lower, canonical)
    return lower, canonical


def _add_connection_header(response: Any, parser: Any) -> Any:
    values = header_map(parser.connHeaders).get(CONNECTION)
    if values:
        headers = header_map(response.headers)
        if CONNECTION not in headers:
            headers[CONNECTION] = list(values)
    return response


def lost_uncleanly(response: Any) -> Optional[Failure]:
    """
    Why the connection of ``response`` ended, if it ended uncleanly (reset
    or aborted, not closed) while the body was still arriving; ``None``
    when it was closed cleanly, or ``response`` did not come through a
    :class:`GatewayClientProtocol`.

    For a body with neither ``Content-Length`` nor chunking, whose end
    Twisted reports as ``PotentialDataLoss`` either way, this tells a
    complete body (closed) from a truncated one (reset).
    """
    return _LOST_UNCLEANLY.get(response)


class GatewayClientFactory(_HTTP11ClientFactory):
    """
    The pool's connection factory: :class:`GatewayClientProtocol`
    connections, without a log line per connection.

    Why: ``_HTTP11ClientFactory`` is private, and so is the pool's
    ``_factory`` attribute that names it; Twisted documents neither, but
    the pool offers no other way to choose its connections' protocol or to
    stop its factories logging "Starting factory" for every upstream
    connection.
    """

    noisy = False

    def buildProtocol(self, addr: Optional[IAddress]) -> GatewayClientProtocol:
        """
        A connection for the pool: it goes back to the pool once quiet.
        """
        # Why: _quiescentCallback is the private attribute the stock
        # buildProtocol passes on, the pool's hook to take the connection
        # back.
        return GatewayClientProtocol(self._quiescentCallback)


def use_gateway_factory(pool: HTTPConnectionPool) -> None:
    """
    Have ``pool`` make its connections with :class:`GatewayClientFactory`.

    Why: ``HTTPConnectionPool._factory`` is a private class attribute,
    called as ``_factory(quiescentCallback, metadata)`` for each new
    connection; setting it on the instance is the only hook.
    """
    pool._factory = GatewayClientFactory


def pool_request(
    pool: HTTPConnectionPool,
    key: Hashable,
    endpoint: IStreamClientEndpoint,
    method: bytes,
    target: bytes,
    headers: Headers,
    body: Optional[IBodyProducer],
) -> Deferred[IResponse]:
    """
    Send one request over a connection of ``pool``, as ``Agent`` does once
    it has parsed the URL: take a connection for ``key`` (or open one on
    ``endpoint``) and hand it a ``twisted.web._newclient.Request``.

    Why: ``Agent`` offers no entry point below the URL parsing that the
    proxy does not need (it sends to a few fixed origins, with ``Host``
    already set). ``Request``'s public constructor checks the method and
    the target as ``Agent``'s private ``Request._construct`` does;
    ``getConnection`` fires with an ``HTTP11ClientProtocol`` (or the
    pool's retrying wrapper), whose ``request`` takes that ``Request``.

    :param key: the pool key: ``(scheme, host, port)``.
    :param target: the request target (path and query).
    :return: what ``IAgent.request`` returns.
    :raises ValueError: for a method or target ``Request`` refuses (in the
        returned Deferred).
    """
    persistent = pool.persistent

    def connected(protocol: Any) -> Deferred[IResponse]:
        return protocol.request(  # type: ignore[no-any-return]
            Request(method, target, headers, body, persistent)
        )

    return pool.getConnection(key, endpoint).addCallback(connected)


def chunked_decoder(
    data: Callable[[bytes], None], finished: Callable[[bytes], None]
) -> Any:
    """
    A decoder of a chunked body: feed it the bytes read (its
    ``dataReceived``); it calls ``data`` with each piece of body and
    ``finished`` with whatever follows the last chunk. Its
    ``dataReceived`` raises an ``Exception`` on a malformed body.
    """
    # Why: twisted.web.http._ChunkedTransferDecoder is private; it is what
    # Twisted's own client and server decode chunked bodies with. The
    # WebSocket handshake reads its upstream's answer itself (Twisted's
    # client drops a 101), and relays a refusal's body with it.
    return _ChunkedTransferDecoder(data, finished)
