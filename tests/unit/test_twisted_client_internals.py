"""
Guards for the private Twisted client behaviour that
:mod:`metagateway.proxy.twisted_internals` relies on.

Each test checks one hook: that it exists, that its signature is the one
we call, and that it still does what we use it for. When a Twisted upgrade
changes one, the failure names the hook and the Twisted version, so the
change is seen at once rather than as a slower or less careful proxy.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

import twisted
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import _newclient, client
from twisted.web.client import HTTPConnectionPool
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers, InvalidHeaderName, _nameEncoder

from metagateway.proxy.twisted_internals import (
    GatewayClientFactory,
    GatewayClientProtocol,
    chunked_decoder,
    lost_uncleanly,
    pool_request,
    receive_head,
    use_gateway_factory,
)


def changed(hook: str, what: str) -> str:
    """
    The failure message of a guard: which hook, what changed, and the
    Twisted version that changed it.
    """
    return (
        "Twisted %s changed %s, which metagateway.proxy.twisted_internals "
        "relies on: %s" % (twisted.__version__, hook, what)
    )


def parameters(function: Any) -> list[str]:
    """
    The names of ``function``'s parameters, ``self`` included.
    """
    return list(inspect.signature(function).parameters)


class GuardTestCase(SynchronousTestCase):
    """
    A test case whose assertions name a Twisted hook when they fail.
    """

    def guard(self, condition: bool, hook: str, what: str) -> None:
        """
        Fail, naming ``hook`` and the Twisted version, unless ``condition``.
        """
        if not condition:
            self.fail(changed(hook, what))


class ClientRequestGuards(GuardTestCase):
    """
    ``twisted.web._newclient.Request``, built by ``pool_request``.
    """

    hook = "twisted.web._newclient.Request"

    def test_signature(self) -> None:
        """
        ``Request(method, uri, headers, bodyProducer, persistent)``.
        """
        self.guard(hasattr(_newclient, "Request"), self.hook, "it is gone")
        self.guard(
            parameters(_newclient.Request.__init__)[:6]
            == ["self", "method", "uri", "headers", "bodyProducer", "persistent"],
            self.hook,
            "its constructor's parameters: %s"
            % (inspect.signature(_newclient.Request.__init__),),
        )

    def test_validates(self) -> None:
        """
        The public constructor still refuses a bad method or target, as
        ``Agent``'s private ``Request._construct`` does: the proxy relies
        on it rather than checking again.
        """
        for method, target in ((b"G T", b"/"), (b"GET", b"/a b"), (b"GET", b"/\n")):
            try:
                _newclient.Request(method, target, Headers(), None, True)
            except ValueError:
                continue
            self.fail(
                changed(
                    self.hook,
                    "it accepts %r %r without a ValueError" % (method, target),
                )
            )

    def test_writes_what_it_is_given(self) -> None:
        """
        It writes the method, the target and the headers given (with the
        ``Host`` header already set, none added), and no ``Connection:
        close`` when persistent.
        """
        transport = StringTransport()
        headers = Headers({b"Host": [b"up.test"], b"X-A": [b"1"]})
        _newclient.Request(b"GET", b"/p?q", headers, None, True).writeTo(transport)
        written = transport.value()
        self.guard(
            written.startswith(b"GET /p?q HTTP/1.1\r\n")
            and written.count(b"Host:") == 1
            and b"\r\nX-A: 1\r\n" in written
            and b"connection: close" not in written.lower(),
            self.hook,
            "what writeTo writes: %r" % (written,),
        )


class PoolFactoryGuards(GuardTestCase):
    """
    ``HTTPConnectionPool._factory`` and ``_HTTP11ClientFactory``, set by
    ``use_gateway_factory``.
    """

    def test_factory_class(self) -> None:
        """
        ``_HTTP11ClientFactory(quiescentCallback, metadata)`` exists and
        is the pool's ``_factory``.
        """
        hook = "twisted.web.client._HTTP11ClientFactory"
        factory = getattr(client, "_HTTP11ClientFactory", None)
        self.guard(factory is not None, hook, "it is gone")
        self.guard(
            parameters(factory.__init__)  # type: ignore[misc]
            == ["self", "quiescentCallback", "metadata"],
            hook,
            "its constructor's parameters: %s" % (inspect.signature(factory.__init__),),  # type: ignore[misc]
        )
        self.guard(
            HTTPConnectionPool.__dict__.get("_factory") is factory,
            "twisted.web.client.HTTPConnectionPool._factory",
            "it is no longer the class attribute naming the factory",
        )

    def test_pool_uses_it(self) -> None:
        """
        A pool given :class:`GatewayClientFactory` opens its connections
        with one (so none logs "Starting factory"), whose protocol is the
        HTTP/1.1 client's.
        """
        hook = "twisted.web.client.HTTPConnectionPool._factory"
        reactor = MemoryReactorClock()
        pool = HTTPConnectionPool(reactor)
        use_gateway_factory(pool)
        pool.getConnection(
            ("http", b"127.0.0.1", 80), TCP4ClientEndpoint(reactor, "127.0.0.1", 80)
        )
        [(_, _, factory, _, _)] = reactor.tcpClients
        wrapped = getattr(factory, "_wrappedFactory", factory)
        self.guard(
            isinstance(wrapped, GatewayClientFactory),
            hook,
            "a new connection's factory is %r" % (wrapped,),
        )
        self.assertFalse(wrapped.noisy)
        protocol = wrapped.buildProtocol(None)
        self.guard(
            isinstance(protocol, _newclient.HTTP11ClientProtocol),
            hook,
            "its protocol is %r" % (protocol,),
        )


class PoolRequestGuards(GuardTestCase):
    """
    ``HTTPConnectionPool.getConnection`` and the protocol it fires with,
    used by ``pool_request``.
    """

    hook = "twisted.web.client.HTTPConnectionPool.getConnection"

    def test_signature(self) -> None:
        """
        ``getConnection(key, endpoint)``, and a ``persistent`` flag.
        """
        self.guard(
            parameters(HTTPConnectionPool.getConnection) == ["self", "key", "endpoint"],
            self.hook,
            "its parameters: %s"
            % (inspect.signature(HTTPConnectionPool.getConnection),),
        )
        self.guard(
            isinstance(HTTPConnectionPool(MemoryReactorClock()).persistent, bool),
            "twisted.web.client.HTTPConnectionPool.persistent",
            "it is not a flag",
        )

    def test_request_over_pool(self) -> None:
        """
        The connection the pool gives takes a ``Request`` and fires with
        the parsed response; the connection then goes back to the pool.
        """
        reactor = MemoryReactorClock()
        pool = HTTPConnectionPool(reactor)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", 80)
        key = (b"http", b"127.0.0.1", 80)
        answered = pool_request(
            pool, key, endpoint, b"GET", b"/x", Headers({b"Host": [b"h"]}), None
        )
        [(_, _, factory, _, _)] = reactor.tcpClients
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.guard(
            transport.value().startswith(b"GET /x HTTP/1.1\r\n"),
            self.hook,
            "the connection wrote %r" % (transport.value(),),
        )
        protocol.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        response = self.successResultOf(answered)
        self.assertEqual(response.code, 204)
        self.guard(
            len(pool._connections.get(key, [])) == 1,
            self.hook,
            "the connection did not go back to the pool",
        )


class BodyCollector(Protocol):
    """
    Takes a response body: its bytes and the reason it ended.
    """

    def __init__(self) -> None:
        self.data = b""
        self.reason: Optional[Failure] = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.reason = reason


def connected(protocol: Any) -> tuple[StringTransport, Deferred[Any]]:
    """
    Connect ``protocol`` to a ``StringTransport`` and send a ``GET``.
    """
    transport = StringTransport()
    protocol.makeConnection(transport)
    answered = protocol.request(
        _newclient.Request(b"GET", b"/", Headers({b"Host": [b"h"]}), None, True)
    )
    return transport, answered


class ClientProtocolGuards(GuardTestCase):
    """
    ``HTTP11ClientProtocol`` and its parser, subclassed by
    ``GatewayClientProtocol``.
    """

    hook = "twisted.web._newclient.HTTP11ClientProtocol"

    def test_connection_header_kept_aside(self) -> None:
        """
        The stock parser files a response's ``Connection`` header in its
        private ``connHeaders``, not in ``response.headers``: that is why
        ``GatewayClientProtocol`` copies it, from ``_parser``.
        """
        protocol = _newclient.HTTP11ClientProtocol()
        _, answered = connected(protocol)
        parser = getattr(protocol, "_parser", None)
        self.guard(parser is not None, self.hook + "._parser", "unset by request")
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nConnection: x-a\r\nX-A: 1\r\nContent-Length: 0\r\n\r\n"
        )
        response = self.successResultOf(answered)
        self.guard(
            parser.connHeaders.getRawHeaders(b"connection") == [b"x-a"]
            and not response.headers.hasHeader(b"connection"),
            "twisted.web._newclient.HTTPClientParser.connHeaders",
            "the Connection header is in response.headers (%r) or not in "
            "connHeaders: GatewayClientProtocol's copy may be redundant"
            % (list(response.headers.getAllRawHeaders()),),
        )

    def test_close_delimited_end_loses_reason(self) -> None:
        """
        A body with neither length nor chunking, ended by a clean close
        or by a reset, is reported ``PotentialDataLoss`` either way; the
        parser is ``_parser``, with its ``response``, until then.
        """
        for reason in (ConnectionDone(), ConnectionLost()):
            protocol = _newclient.HTTP11ClientProtocol()
            _, answered = connected(protocol)
            protocol.dataReceived(b"HTTP/1.1 200 OK\r\n\r\nab")
            body = BodyCollector()
            self.successResultOf(answered).deliverBody(body)
            self.guard(
                getattr(getattr(protocol, "_parser", None), "response", None)
                is not None,
                self.hook + "._parser.response",
                "unset while the body arrives",
            )
            protocol.connectionLost(Failure(reason))
            self.guard(
                body.data == b"ab"
                and body.reason is not None
                and body.reason.check(PotentialDataLoss) is not None,
                self.hook + ".connectionLost",
                "a close-delimited body ended by %r is reported as %r"
                % (reason, body.reason),
            )

    def test_factory_quiescent_callback(self) -> None:
        """
        The stock factory keeps the pool's callback as
        ``_quiescentCallback``, which ``GatewayClientFactory`` passes on.
        """
        callback = object()
        factory = client._HTTP11ClientFactory(callback, "metadata")
        self.guard(
            getattr(factory, "_quiescentCallback", None) is callback,
            "twisted.web.client._HTTP11ClientFactory._quiescentCallback",
            "it is gone",
        )


class GatewayClientProtocolTests(SynchronousTestCase):
    """
    What ``GatewayClientProtocol`` adds: the ``Connection`` header and how
    a body's connection ended.
    """

    def test_connection_header(self) -> None:
        """
        The response's ``Connection`` header is in ``response.headers``.
        """
        protocol = GatewayClientProtocol()
        _, answered = connected(protocol)
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nConnection: x-a, close\r\nContent-Length: 0\r\n\r\n"
        )
        response = self.successResultOf(answered)
        self.assertEqual(response.headers.getRawHeaders(b"connection"), [b"x-a, close"])

    def test_reset_remembered(self) -> None:
        """
        A close-delimited body cut by a reset: :func:`lost_uncleanly`
        gives the reason; closed cleanly, ``None``.
        """
        for reason, expected in (
            (ConnectionLost("reset"), ConnectionLost),
            (ConnectionDone(), None),
        ):
            protocol = GatewayClientProtocol()
            _, answered = connected(protocol)
            protocol.dataReceived(b"HTTP/1.1 200 OK\r\n\r\nab")
            response = self.successResultOf(answered)
            body = BodyCollector()
            response.deliverBody(body)
            protocol.connectionLost(Failure(reason))
            lost = lost_uncleanly(response)
            if expected is None:
                self.assertIsNone(lost)
            else:
                assert lost is not None
                self.assertIsInstance(lost.value, expected)

    def test_complete_body_then_reset(self) -> None:
        """
        A body complete by its ``Content-Length`` is not marked when the
        connection is reset afterwards.
        """
        protocol = GatewayClientProtocol()
        _, answered = connected(protocol)
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nab")
        response = self.successResultOf(answered)
        response.deliverBody(BodyCollector())
        protocol.connectionLost(Failure(ConnectionLost("reset")))
        self.assertIsNone(lost_uncleanly(response))


class ChunkedDecoderGuards(GuardTestCase):
    """
    :func:`chunked_decoder` (``twisted.web.http._ChunkedTransferDecoder``).
    """

    def test_decodes(self) -> None:
        """
        Each piece of body goes to the data callback; what follows the last
        chunk to the finish callback.
        """
        pieces: list[bytes] = []
        rest: list[bytes] = []
        decoder = chunked_decoder(pieces.append, rest.append)
        decoder.dataReceived(b"4\r\nnope\r\n3")
        decoder.dataReceived(b"\r\n!!!\r\n0\r\n\r\nafter")
        self.guard(
            b"".join(pieces) == b"nope!!!",
            "_ChunkedTransferDecoder",
            "the body was not decoded",
        )
        self.guard(rest == [b"after"], "_ChunkedTransferDecoder", "finish callback")

    def test_malformed(self) -> None:
        """
        A malformed chunk raises (``_MalformedChunkedDataError``, an
        ``Exception``).
        """
        from twisted.web.http import _MalformedChunkedDataError

        decoder = chunked_decoder(lambda data: None, lambda rest: None)
        with self.assertRaises(_MalformedChunkedDataError):
            decoder.dataReceived(b"zz\r\n")


def waiting_parser(method: bytes = b"GET") -> Any:
    """
    A stock ``HTTPClientParser`` for a ``method`` request, connected and
    waiting for a status line, as ``HTTP11ClientProtocol.request`` makes it.
    """
    request = _newclient.Request(method, b"/", Headers({b"Host": [b"h"]}), None, True)
    parser = _newclient.HTTPClientParser(request, lambda rest: None)
    parser.makeConnection(_newclient.TransportProxyProducer(StringTransport()))
    return parser


class ResponseHeadGuards(GuardTestCase):
    """
    ``HTTPClientParser`` as :func:`receive_head` finds it and leaves it:
    its state, the ``LineReceiver`` attributes it sets, the methods it
    calls, and the line-by-line steps it does at once.
    """

    hook = "twisted.web._newclient.HTTPClientParser"

    def test_made_by_request(self) -> None:
        """
        ``HTTP11ClientProtocol.request`` makes an ``HTTPClientParser``
        (exactly that class: :func:`receive_head` takes no other) as
        ``_parser``.
        """
        protocol = _newclient.HTTP11ClientProtocol()
        connected(protocol)
        self.guard(
            type(getattr(protocol, "_parser", None)) is _newclient.HTTPClientParser,
            self.hook,
            "the request's parser is %r" % (getattr(protocol, "_parser", None),),
        )

    def test_waiting_state(self) -> None:
        """
        Waiting for a status line: ``state`` is ``STATUS``, with the
        ``LineReceiver`` attributes :func:`receive_head` reads and sets, and
        two empty ``Headers``.
        """
        self.guard(
            (_newclient.STATUS, _newclient.HEADER) == ("STATUS", "HEADER"),
            "twisted.web._newclient.STATUS and HEADER",
            "they are gone or changed",
        )
        parser = waiting_parser()
        found = {
            name: getattr(parser, name, "<missing>")
            for name in (
                "state",
                "_buffer",
                "_busyReceiving",
                "line_mode",
                "paused",
                "_partialHeader",
                "_everReceivedData",
                "delimiter",
            )
        }
        self.guard(
            found
            == {
                "state": _newclient.STATUS,
                "_buffer": b"",
                "_busyReceiving": False,
                "line_mode": 1,
                "paused": False,
                "_partialHeader": None,
                "_everReceivedData": False,
                "delimiter": b"\n",
            }
            and isinstance(parser.MAX_LENGTH, int),
            self.hook,
            "a waiting parser holds %r" % (found,),
        )
        self.guard(
            isinstance(parser.headers, Headers)
            and isinstance(parser.connHeaders, Headers)
            and not list(parser.headers.getAllRawHeaders())
            and not list(parser.connHeaders.getAllRawHeaders()),
            self.hook + ".headers/connHeaders",
            "not two empty Headers",
        )

    def test_signatures(self) -> None:
        """
        The methods :func:`receive_head` and ``GatewayClientProtocol`` call.
        """
        expected = {
            "statusReceived": ["self", "status"],
            "allHeadersReceived": ["self"],
            "isConnectionControlHeader": ["self", "name"],
            "rawDataReceived": ["self", "data"],
            "dataReceived": ["self", "data"],
        }
        for name, names in expected.items():
            method = getattr(_newclient.HTTPClientParser, name, None)
            self.guard(
                method is not None and parameters(method) == names,
                "%s.%s" % (self.hook, name),
                "gone, or its parameters changed: %s"
                % (None if method is None else inspect.signature(method),),
            )
        for name, names in (
            ("dataReceived", ["self", "bytes"]),
            ("_giveUp", ["self", "reason"]),
        ):
            method = getattr(_newclient.HTTP11ClientProtocol, name, None)
            self.guard(
                method is not None and parameters(method) == names,
                "twisted.web._newclient.HTTP11ClientProtocol.%s" % (name,),
                "gone, or its parameters changed",
            )

    def test_line_steps_not_overridden(self) -> None:
        """
        The client parser parses lines with ``HTTPParser``'s own
        ``lineReceived`` and ``headerReceived``, the steps
        :func:`receive_head` does at once; it overrides neither.
        """
        for name in ("lineReceived", "headerReceived", "switchToBodyMode"):
            self.guard(
                getattr(_newclient.HTTPClientParser, name)
                is getattr(_newclient.HTTPParser, name),
                "%s.%s" % (self.hook, name),
                "HTTPClientParser overrides it",
            )

    def test_line_by_line(self) -> None:
        """
        What the line-by-line path does, which :func:`receive_head` does
        at once: the status line goes to ``statusReceived`` (state
        ``HEADER``); each header's name is lower-cased for
        ``isConnectionControlHeader`` and filed in ``headers`` or
        ``connHeaders`` under its canonical name, its value stripped; the
        last header line stays as ``_partialHeader``; what follows the
        head is in ``_buffer`` while ``allHeadersReceived`` runs.
        """
        seen: list[Any] = []

        class Watched(_newclient.HTTPClientParser):
            def statusReceived(self, status: bytes) -> None:
                seen.append(("status", status, self.state))
                super().statusReceived(status)

            def isConnectionControlHeader(self, name: bytes) -> bool:
                seen.append(("control", name))
                return super().isConnectionControlHeader(name)  # type: ignore[no-any-return]

            def allHeadersReceived(self) -> None:
                seen.append(("all", self.state, self._buffer, self._partialHeader))
                super().allHeadersReceived()

        request = _newclient.Request(b"GET", b"/", Headers(), None, True)
        parser = Watched(request, lambda rest: None)
        parser.makeConnection(_newclient.TransportProxyProducer(StringTransport()))
        parser.dataReceived(
            b"HTTP/1.1 200 OK\r\nX-A:  1 \t\r\nCONTENT-length: 2\r\n"
            b"x-a:2\r\nETAG: e\r\n\r\nab"
        )
        self.guard(
            seen
            == [
                ("status", b"HTTP/1.1 200 OK", _newclient.STATUS),
                ("control", b"x-a"),
                ("control", b"content-length"),
                ("control", b"x-a"),
                ("control", b"etag"),
                ("all", _newclient.HEADER, b"ab", [b"ETAG: e"]),
            ],
            "twisted.web._newclient.HTTPParser.lineReceived",
            "the steps of a head are %r" % (seen,),
        )
        self.guard(
            list(parser.headers.getAllRawHeaders())
            == [(b"X-A", [b"1", b"2"]), (b"ETag", [b"e"])]
            and list(parser.connHeaders.getAllRawHeaders())
            == [(b"Content-Length", [b"2"])],
            "twisted.web._newclient.HTTPParser.headerReceived",
            "the headers filed are %r and %r"
            % (
                list(parser.headers.getAllRawHeaders()),
                list(parser.connHeaders.getAllRawHeaders()),
            ),
        )

    def test_name_encoder(self) -> None:
        """
        ``twisted.web.http_headers._nameEncoder.encode`` gives the
        canonical name ``Headers.addRawHeader`` files a header under, and
        refuses a name that is not a token.
        """
        hook = "twisted.web.http_headers._nameEncoder"
        for name in (b"content-type", b"etag", b"x-a", b"www-authenticate", b"te"):
            headers = Headers()
            headers.addRawHeader(name, b"v")
            [(filed, _)] = list(headers.getAllRawHeaders())
            self.guard(
                _nameEncoder.encode(name) == filed,
                hook,
                "encode(%r) is %r, Headers files it as %r"
                % (name, _nameEncoder.encode(name), filed),
            )
        for bad in (b"", b"x a", b" x", b"x(a)", b"x\x00"):
            try:
                _nameEncoder.encode(bad)
            except InvalidHeaderName:
                continue
            self.fail(changed(hook, "encode(%r) raises no InvalidHeaderName" % (bad,)))

    def test_values_kept(self) -> None:
        """
        ``Headers.addRawHeader`` keeps a value without CR or LF as it is
        (``_sanitizeLinearWhitespace`` is then the identity), the empty one
        too: :func:`receive_head` files such values straight in.
        """
        for value in (b"", b"a", b" a\tb ", b"x\x0b\x0c", b"\xff\x00"):
            headers = Headers()
            headers.addRawHeader(b"X-A", value)
            self.guard(
                headers.getRawHeaders(b"X-A") == [value],
                "twisted.web.http_headers.Headers.addRawHeader",
                "%r is filed as %r" % (value, headers.getRawHeaders(b"X-A")),
            )

    def test_receive_head(self) -> None:
        """
        :func:`receive_head` itself, on a stock parser: it takes a whole
        head and leaves the parser as the line-by-line path does (the
        whole comparison is in ``tests.unit.test_response_head``), and
        leaves a parser that is not waiting for a status line alone.
        """
        data = b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 3\r\n\r\nab"
        fast = waiting_parser()
        stock = waiting_parser()
        self.assertTrue(receive_head(fast, data))
        stock.dataReceived(data)
        for parser in (fast, stock):
            self.assertEqual(parser.state, _newclient.BODY)
            self.assertEqual(parser.response.code, 200)
            self.assertEqual(parser.response.length, 3)
        self.assertEqual(fast.response._bodyBuffer, stock.response._bodyBuffer)
        self.assertEqual(
            list(fast.headers.getAllRawHeaders()),
            list(stock.headers.getAllRawHeaders()),
        )
        self.assertFalse(receive_head(fast, data))
        self.assertFalse(receive_head(None, data))

    def test_give_up_on_parse_error(self) -> None:
        """
        ``HTTP11ClientProtocol.dataReceived`` gives up the connection
        (``_giveUp``: closed, the response failed) when its parser raises;
        ``GatewayClientProtocol.dataReceived`` keeps that.
        """
        for protocol in (_newclient.HTTP11ClientProtocol(), GatewayClientProtocol()):
            transport, answered = connected(protocol)
            protocol.dataReceived(b"HTTP/1.1 2x0 OK\r\n\r\n")
            failure = self.failureResultOf(answered, _newclient.ResponseFailed)
            self.guard(
                transport.disconnecting
                and failure.value.reasons[0].check(_newclient.ParseError) is not None,
                "twisted.web._newclient.HTTP11ClientProtocol.dataReceived",
                "%r: a parse error ends as %r, the transport %s"
                % (
                    protocol,
                    failure,
                    "closed" if transport.disconnecting else "open",
                ),
            )

    def test_transport_proxy(self) -> None:
        """
        The parser's transport is a ``TransportProxyProducer`` whose
        private ``_producer`` is the connection: it passes pause, resume,
        stop and close on to it, and nothing once ``stopProxying``. (The
        fast path puts its held pause there while the response is
        handed over.)
        """
        hook = "twisted.web._newclient.TransportProxyProducer"
        protocol = _newclient.HTTP11ClientProtocol()
        transport, _ = connected(protocol)
        proxy = protocol._parser.transport  # type: ignore[union-attr]
        self.guard(
            type(proxy) is _newclient.TransportProxyProducer
            and getattr(proxy, "_producer", None) is transport,
            hook,
            "the parser's transport is %r" % (proxy,),
        )
        calls: list[str] = []

        class Connection:
            def pauseProducing(self) -> None:
                calls.append("pause")

            def resumeProducing(self) -> None:
                calls.append("resume")

            def stopProducing(self) -> None:
                calls.append("stop")

            def loseConnection(self) -> None:
                calls.append("close")

        proxy = _newclient.TransportProxyProducer(Connection())
        proxy.pauseProducing()
        proxy.resumeProducing()
        proxy.stopProducing()
        proxy.loseConnection()
        proxy.stopProxying()
        proxy.pauseProducing()
        self.guard(
            calls == ["pause", "resume", "stop", "close"] and proxy._producer is None,
            hook,
            "it passed on %r" % (calls,),
        )

    def test_pause_before_response(self) -> None:
        """
        Once a head with a body is in, ``allHeadersReceived`` pauses the
        parser's transport and only then fires the response, whose
        ``deliverBody`` resumes that transport: the pause the fast path
        holds back, and the resume that drops it.
        """
        seen: list[Any] = []
        parser = waiting_parser()

        class Connection:
            def pauseProducing(self) -> None:
                seen.append("pause")

            def resumeProducing(self) -> None:
                seen.append("resume")

        parser.transport._producer = Connection()

        def answered(response: Any) -> None:
            seen.append("response")
            response.deliverBody(Protocol())

        parser._responseDeferred.addCallback(answered)
        parser.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
        self.guard(
            seen == ["pause", "response", "resume"],
            "twisted.web._newclient.HTTPClientParser.allHeadersReceived",
            "around the response: %r" % (seen,),
        )
