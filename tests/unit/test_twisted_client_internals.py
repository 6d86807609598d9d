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
from twisted.web.http_headers import Headers

from metagateway.proxy.twisted_internals import (
    GatewayClientFactory,
    GatewayClientProtocol,
    chunked_decoder,
    lost_uncleanly,
    pool_request,
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
