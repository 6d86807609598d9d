"""
Where the HTTP layer relies on Twisted's private or undocumented behaviour.

Twisted's server side (``twisted/web/http.py``) offers no public hook
between a request's head and its body, no way to answer a malformed request
other than its bare ``400``, and marks the methods a channel and a request
call on each other "not intended for users". The gateway needs all three:
to route a request (and stream or refuse its body) as soon as its headers
are in, and to answer hostile input in the contract's JSON. Every override
of such a method, and every read of the parser's state, is here and
nowhere else; the rest of :mod:`metagateway.http` goes through the named
hooks below, whose defaults are Twisted's own behaviour. The one private
read on both sides of the proxy, the mapping inside ``Headers``
(:func:`header_map`), is here too.

``tests/unit/test_twisted_internals.py`` checks each hook named here
(existence, signature, and what Twisted does around it, through a real
``HTTPChannel``) and fails naming the hook and the Twisted version when an
upgrade changes one. Tested against Twisted 26.10.0; ``tox -e
twisted-latest`` runs the whole suite on the newest release.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers, InvalidHeaderName, _nameEncoder
from twisted.web.iweb import INonQueuedRequestFactory
from twisted.web.server import Request
from twisted.web.server import version as server_version

from metagateway.http.names import CONTENT_LENGTH, DATE, SERVER, TRANSFER_ENCODING

#: The bytes of an RFC 9110 token (a method, a header name).
_TOKEN = (
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~"
)

#: The bytes Twisted's parser lets through in a request target: 33 to 176
#: (``_parseRequestLine``; 176 is how Twisted spells its bound, and 127 to
#: 176 pass with it).
_TARGET = bytes(range(33, 177))

#: The request versions Twisted's parser accepts.
_VERSIONS = (b"HTTP/1.1", b"HTTP/1.0")

#: Header names that decide how the body is framed.
_FRAMING = frozenset((CONTENT_LENGTH, TRANSFER_ENCODING))

#: Whether a request factory is called without the queue position.
_NON_QUEUED: dict[Any, bool] = {}


class ChannelInternals(HTTPChannel):
    """
    Twisted's ``HTTPChannel`` seen through named hooks: the gateway's
    channel inherits this and overrides the hooks, never Twisted's private
    or undocumented methods.

    :ivar discarding: whether the channel reads and drops whatever the
        client sends (after a refusal or an early answer, while it closes
        gracefully); Twisted's parser sees none of it.
    """

    discarding = False

    # Hooks for the subclass; each default is what Twisted would do.

    def refuse_malformed(self) -> None:
        """
        Twisted's parser refused the request as malformed (a bad request
        line or header, too many headers, a broken chunk, conflicting
        framing). By default Twisted's own bare ``400``.
        """
        HTTPChannel._respondToBadRequestAndDisconnect(self)

    def head_received(self, request: Any, length: Optional[int]) -> bool:
        """
        The head of ``request`` is in (request line and headers parsed),
        before Twisted acts on it.

        :param length: the body's length as the head declares it (see
            :meth:`body_length`).
        :return: whether Twisted goes on with it (``False`` once the request
            has been refused).
        """
        return True

    def head_handled(self, request: Any) -> None:
        """
        Twisted has acted on the head of ``request``: checked persistence,
        given the request its body length (``gotLength``), and sent
        ``100 Continue`` if the request still asks for it.
        """

    def body_received(self) -> bool:
        """
        The request's body is all in, before Twisted hands the request over.

        :return: whether Twisted goes on with it.
        """
        return True

    def answered(self, request: Any) -> None:
        """
        ``request`` (the first in the queue) is finished, before Twisted
        moves on to the next one or closes the connection.
        """

    # Accessors of the parser's state.

    def body_length(self) -> Optional[int]:
        """
        The body length Twisted's parser read from the head being handled:
        ``0`` for no body, ``None`` for a chunked one, else the
        ``Content-Length``.
        """
        # HTTPChannel.length: undocumented parser state, set while the
        # headers are read and reset to 0 in allContentReceived.
        length: Optional[int] = self.length
        return length

    def current_request(self) -> Any:
        """
        The request whose head or body is being read, or ``None``.
        """
        # HTTPChannel.requests: the undocumented queue of requests on the
        # connection, the one being read last.
        requests = self.requests
        return requests[-1] if requests else None

    def queued_requests(self) -> list[Any]:
        """
        A copy of the requests on this connection, oldest first.
        """
        return list(self.requests)

    def close_after_answer(self) -> None:
        """
        Close the connection once the current answer is written.
        """
        close_after_answer(self)

    # A whole head at once.

    def whole_head(
        self, data: bytes, max_bytes: int, max_lines: int
    ) -> Optional[bytes]:
        """
        Handle the request head ``data`` begins with, in one go, with the
        outcome of Twisted's line-by-line parser: the request made and
        queued, its headers, the body's framing, then the parser's own
        steps from ``allHeadersReceived`` on (and so every hook above).

        Only a head Twisted would accept as it stands is taken, and only
        between requests: the whole head in ``data``, lines ending in CRLF
        alone, no folded lines, no NUL, a valid request line, every header
        ``name: value`` with a token for a name, at most one framing header
        (a numeric ``Content-Length`` or ``Transfer-Encoding: chunked``),
        at most ``max_bytes`` bytes (line ends included) and ``max_lines``
        lines (request line included). Anything else is left, with nothing
        changed, to the parser, which answers it as it always has.

        Why: Twisted's parser costs about 40 Python lines per line of head
        (``LineReceiver.dataReceived``, ``lineReceived``,
        ``headerReceived``, ``Headers.addRawHeader``), and checks the
        request target a byte at a time: an eighth of a proxied request.

        :return: the bytes after the head, for the parser (``b""`` when
            there are none), or ``None`` when the head was left to it.
        """
        # Parser state (private or undocumented): LineReceiver._buffer (an
        # incomplete line held back), _busyReceiving and paused (bytes
        # held for later); HTTPChannel.__first_line (true between
        # requests), __header (a header line not yet handled),
        # _transferDecoder (the body's decoder, set by a framing header).
        if (
            self._buffer
            or self._busyReceiving
            or self.paused
            or not self.line_mode
            or not self.persistent
            or not self._HTTPChannel__first_line  # type: ignore[has-type]
            or self._HTTPChannel__header  # type: ignore[attr-defined]
            or self._transferDecoder is not None
        ):
            return None
        end = data.find(b"\r\n\r\n")
        if end <= 0 or end + 4 > max_bytes:
            return None
        head = data[:end]
        lines = head.split(b"\r\n")
        count = len(lines)
        if (
            count > max_lines
            or count - 1 > self.maxHeaders
            or end > self.MAX_LENGTH
            or self._receivedHeaderSize + end > self.totalHeadersSize
            or head.count(b"\n") != count - 1
            or head.count(b"\r") != count - 1
            or b"\x00" in head
        ):
            return None
        request_line = lines[0].split(b" ")
        if len(request_line) != 3:
            return None
        method, target, version = request_line
        if (
            version not in _VERSIONS
            or not method
            or method.translate(None, _TOKEN)
            or not target
            or target.translate(None, _TARGET)
        ):
            return None
        headers = []
        framing = None
        encode = _nameEncoder.encode
        for line in lines[1:]:
            # A folded line (leading space or tab) has no token for a name.
            name, colon, value = line.partition(b":")
            if not colon:
                return None
            try:
                name = encode(name)
            except InvalidHeaderName:
                return None
            value = value.strip(b" \t")
            if name in _FRAMING:
                if framing is not None:
                    return None
                if name == CONTENT_LENGTH:
                    if not value.isdigit():
                        return None
                elif value.lower() != b"chunked":
                    return None
                framing = (name, value)
            headers.append((name, value))

        # What lineReceived does with the request line.
        factory = self.requestFactory
        non_queued = _NON_QUEUED.get(factory)
        if non_queued is None:
            non_queued = _NON_QUEUED[factory] = bool(
                INonQueuedRequestFactory.providedBy(factory)
            )
        if non_queued:
            request = factory(self)
        else:
            request = factory(self, len(self.requests))
        self.requests.append(request)
        self._HTTPChannel__first_line = 0
        self._command = method
        self._path = target
        self._version = version
        # HTTPChannel counts the bytes of a head without its line ends, and
        # its headers, against totalHeadersSize and maxHeaders.
        self._receivedHeaderSize += end - 2 * (count - 1)
        self._receivedHeaderCount += count - 1
        self.head_lines((method, target, version), end + 4, count)
        # What headerReceived does with each header.
        if framing is not None:
            self._maybeChooseTransferDecoder(*framing)
        raw = header_map(request.requestHeaders)
        for name, value in headers:
            values = raw.get(name)
            if values is None:
                raw[name] = [value]
            else:
                values.append(value)
        # And with the blank line.
        self.allHeadersReceived()
        if self.length == 0:
            self.allContentReceived()
        else:
            self.setRawMode()
        return data[end + 4 :]

    def head_lines(
        self, request_line: tuple[bytes, bytes, bytes], size: int, lines: int
    ) -> None:
        """
        :meth:`whole_head` took a head of ``size`` bytes in ``lines`` lines,
        with ``request_line``: called before its headers are added.
        """

    # Twisted's private and undocumented methods, overridden.

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Private: Twisted's parser calls it for every request it refuses
        # as malformed, and it writes a bare "400 Bad Request" with no
        # body. The contract wants a JSON error and a graceful close.
        self.refuse_malformed()

    def allHeadersReceived(self) -> None:
        # Undocumented parser step, called by lineReceived at the blank
        # line ending a head: it checks persistence, calls the request's
        # gotLength with HTTPChannel.length and sends "100 Continue" if the
        # Expect header is still there after gotLength. The only point at
        # which a head can be refused, or a request start, before its body.
        request = self.requests[-1]
        if not self.head_received(request, self.length):
            return
        HTTPChannel.allHeadersReceived(self)
        self.head_handled(request)

    def allContentReceived(self) -> None:
        # Undocumented parser step, called once the body is in: it resets
        # the parser and calls the request's requestReceived.
        if self.discarding or not self.body_received():
            return
        HTTPChannel.allContentReceived(self)

    def rawDataReceived(self, data: bytes) -> None:
        # "Not really a public API" (its docstring): body bytes, or bytes
        # behind a request being answered, which Twisted buffers and
        # replays through dataReceived from requestDone.
        if self.discarding:
            return
        HTTPChannel.rawDataReceived(self, data)

    def requestDone(self, request: Any) -> None:
        # Undocumented: called by the first request in the queue once it is
        # finished; Twisted then replays the bytes that came behind it
        # (re-entering dataReceived) or, when not persistent, closes.
        self.answered(request)
        HTTPChannel.requestDone(self, request)


class RequestInternals(Request):
    """
    Twisted's site ``Request`` seen through named hooks: the gateway's
    request inherits this and overrides the hooks, never the methods
    Twisted marks "not intended for users".
    """

    def length_known(self, length: Optional[int]) -> None:
        """
        The channel has read the head: ``length`` is the body's declared
        length (``None`` when chunked, ``0`` when there is none). By
        default Twisted's own: a buffer for the body.
        """
        Request.gotLength(self, length)

    def body_chunk(self, data: bytes) -> None:
        """
        One more piece of the body. By default Twisted's own: buffered.
        """
        Request.handleContentChunk(self, data)

    def body_complete(self, command: bytes, path: bytes, version: bytes) -> None:
        """
        The body is all in. By default Twisted's own: parse the arguments
        and process the request.
        """
        Request.requestReceived(self, command, path, version)

    def gotLength(self, length: Optional[int]) -> None:
        # "Not intended for users": called by HTTPChannel.allHeadersReceived
        # before the body is read, and before "100 Continue" is sent. The
        # only point at which a request can start before its body is in.
        self.length_known(length)

    def handleContentChunk(self, data: bytes) -> None:
        # "Not intended for users": called by the channel's transfer
        # decoder with each piece of body. Streaming needs each piece.
        self.body_chunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        # "Not intended for users": called by the channel once the body is
        # in; a request dispatched early must not be processed twice.
        self.body_complete(command, path, version)


def close_after_answer(channel: Any) -> None:
    """
    Have ``channel`` (any ``HTTPChannel``) close the connection once the
    current answer is written.
    """
    # HTTPChannel.persistent: undocumented; requestDone closes the
    # connection when it is false.
    channel.persistent = False


def site_of(channel: Any) -> Any:
    """
    The ``Site`` that built ``channel``, or ``None`` (a channel not built by
    a ``Site``).
    """
    # Site.buildProtocol sets the undocumented HTTPChannel.site.
    return getattr(channel, "site", None)


def prepare_for_root(request: Any, site: Any, date: bytes) -> None:
    """
    What Twisted's ``Request.process`` does to a request before rendering
    it, for a request rendered by the site's root directly: the traversal
    (and its unquoted ``postpath``) is left out.

    :param date: the ``Date`` header's value.
    """
    # Request.process is "not intended for users" in twisted.web.http;
    # this mirrors twisted.web.server.Request.process, which sets these
    # attributes and headers for resources to read.
    request.site = site
    request.sitepath = []
    # As setHeader would: one value each, under the canonical names (the
    # values hold no line break).
    headers = header_map(request.responseHeaders)
    headers[SERVER] = [server_version]
    headers[DATE] = [date]
    request.prepath = []
    request.postpath = []


def take_pipelined(channel: Any) -> bytes:
    """
    Take the bytes the client sent past the head of the request ``channel``
    is answering: Twisted holds them back until that answer is finished.
    Once a connection is handed over to another protocol (a joined
    WebSocket), they belong to that protocol.
    """
    # HTTPChannel._dataBuffer: private. rawDataReceived appends to it what
    # arrives while a request is being handled (_handlingRequest), and
    # requestDone replays it as the next request; a connection that stops
    # being HTTP must have it now, and never see it replayed.
    buffered: list[bytes] = channel._dataBuffer
    channel._dataBuffer = []
    return b"".join(buffered)


def head_written(request: Any) -> None:
    """
    Tell ``request`` that its answer's head was written by the caller,
    straight on the connection (a ``101 Switching Protocols``): finishing
    it then writes nothing more.
    """
    # Request.startedWriting: undocumented. write() sends the status line
    # and headers while it is false (adding a chunked framing to an
    # HTTP/1.1 answer without Content-Length), and finish() calls
    # write(b"") while it is false.
    request.startedWriting = 1


def set_sent_length(request: Any, size: int) -> None:
    """
    Record that ``size`` bytes of answer went to the client, for a request
    whose bytes did not go through its ``write`` (what the access log
    reads as ``bytes_out``).
    """
    # Request.sentLength: undocumented, incremented by write() only.
    request.sentLength = size


def header_map(headers: Headers) -> dict[bytes, list[bytes]]:
    """
    The mapping inside ``headers``: each header name, in Twisted's
    canonical capitalisation (:mod:`metagateway.http.names`), to the list of its
    values. The live mapping, not a copy.

    For the proxy, which builds two header sets per request from others
    already parsed: through ``setRawHeaders`` each name is re-encoded and
    each value re-checked for line breaks, a fifth of the gateway's own
    work on a small request. Whoever writes to the mapping must use
    canonical names (:mod:`metagateway.http.names`), and values that hold
    no CR or LF (parsed ones never do; see :func:`one_line`).
    """
    # Headers._rawHeaders: private, the one slot every public method of
    # Headers reads and writes.
    raw: dict[bytes, list[bytes]] = headers._rawHeaders
    return raw


def one_line(value: bytes) -> bytes:
    """
    ``value`` with any line break replaced by a space, as ``setRawHeaders``
    does to every value it is given: for a value of the gateway's own
    making put straight into a :func:`header_map`.
    """
    if b"\r" in value or b"\n" in value:
        return b" ".join(value.splitlines())
    return value
