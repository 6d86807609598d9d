"""
WebSockets and event streams through the real daemon
(:ref:`contract-websocket`): a real WebSocket server upstream and a real
client (Autobahn, on Twisted), echoes of text, binary and 1 MiB messages,
the token in ``Authorization`` and in ``access_token``, refusals before
any upstream contact, a refused upgrade relayed, the idle timeout, a
20 MiB burst to a slow reader with the daemon's memory bounded, and a
``text/event-stream`` answer relayed chunk by chunk.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from typing import Any, Optional

import jwt
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.types import ConnectionDeny
from treq import collect

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from metagateway.testing import SECRET, USERNAME
from tests.daemon import ChildProcess, http_client, start_daemon
from tests.helpers import token_claims

MiB = 1024 * 1024

#: The burst a fast upstream sends to a slow reader.
BURST = 20 * MiB

#: How much the daemon's resident memory may grow over the burst: well
#: under the burst itself (without backpressure the daemon holds most of
#: it, some 19 MiB; with it, a few hundred KiB).
BURST_ALLOWANCE = 10 * MiB


def token(route: str = "BUILD") -> str:
    """
    A valid token for ``route``.
    """
    return jwt.encode(
        token_claims(int(time.time()), route=route), SECRET, algorithm="HS256"
    )


def rss(pid: int) -> int:
    """
    A process's resident memory (``VmRSS``), in bytes.
    """
    with open("/proc/%d/status" % (pid,)) as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name == "VmRSS":
                return int(rest.split()[0]) * 1024
    raise AssertionError("no VmRSS")


class EchoServer(WebSocketServerProtocol):
    """
    The upstream: echoes every message; ``burst`` asks for :data:`BURST`
    bytes in 1 MiB binary messages; a path ending ``/deny`` is refused
    with ``403``.
    """

    factory: EchoFactory

    def onConnect(self, request: Any) -> None:
        self.factory.handshakes.append(request)
        if request.path.endswith("/deny"):
            raise ConnectionDeny(403, "not here")

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if not isBinary and payload == b"burst":
            for i in range(BURST // MiB):
                self.sendMessage(bytes([i]) * MiB, isBinary=True)
            return
        self.sendMessage(payload, isBinary)


class EchoFactory(WebSocketServerFactory):
    """
    Makes :class:`EchoServer` connections and records every handshake and
    every TCP connection.
    """

    protocol = EchoServer  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0)
        self.handshakes: list[Any] = []
        self.connections = 0

    def buildProtocol(self, addr: Any) -> Any:
        self.connections += 1
        return super().buildProtocol(addr)


class Client(WebSocketClientProtocol):
    """
    A client that queues what it receives and reports its opening and
    closing.
    """

    factory: ClientFactory

    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.messages.put((payload, isBinary))

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        if not self.factory.opened.called:
            self.factory.opened.errback(Failure(RuntimeError("handshake failed")))
        if not self.factory.closed.called:
            self.factory.closed.callback((wasClean, code, reason))


class ClientFactory(WebSocketClientFactory):
    """
    Makes one :class:`Client`.
    """

    protocol = Client  # type: ignore[assignment]

    def __init__(self, url: str, headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(url, headers=headers or {})
        self.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0)
        self.opened: Deferred[Client] = Deferred()
        self.closed: Deferred[Any] = Deferred()
        self.messages: DeferredQueue[tuple[bytes, bool]] = DeferredQueue()


class RawClient(Protocol):
    """
    Bytes to the gateway, and what comes back until it closes.
    """

    def __init__(self) -> None:
        self.data = b""
        self.closed: Deferred[bytes] = Deferred()
        self._want: Optional[tuple[bytes, Deferred[None]]] = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if self._want is not None and self._want[0] in self.data:
            d = self._want[1]
            self._want = None
            d.callback(None)

    def wait_for(self, marker: bytes) -> Deferred[None]:
        """
        Fires once ``marker`` has been received.
        """
        d: Deferred[None] = Deferred()
        if marker in self.data:
            d.callback(None)
        else:
            self._want = (marker, d)
        return d

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closed.callback(self.data)


def handshake(path: str, *headers: str) -> bytes:
    """
    A WebSocket handshake request for ``path``, with ``headers`` added.
    """
    lines = [
        "GET %s HTTP/1.1" % (path,),
        "Host: gateway.test",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


class WebSocketDaemonTests(TestCase):
    """
    WebSockets through the real daemon.
    """

    timeout = 90

    def setUp(self) -> None:
        self.accounts = FilePath(self.mktemp())
        self.accounts.makedirs()
        self.upstream = EchoFactory()
        port = reactor.listenTCP(0, self.upstream, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        self.upstream_url = "http://127.0.0.1:%d" % (port.getHost().port,)  # type: ignore[attr-defined]
        self.clients: list[Any] = []
        self.addCleanup(self._close_clients)

    def _close_clients(self) -> None:
        for transport in self.clients:
            if transport.connected:
                transport.abortConnection()

    async def daemon(self, *options: str) -> None:
        self.child: ChildProcess
        self.child, base = await start_daemon(
            self,
            {
                "GATEWAY_JWT_SECRET": SECRET,
                "BUILD_SERVICE_URL": self.upstream_url,
                "KV_SERVICE_URL": self.upstream_url,
            },
            "--accounts-dir",
            self.accounts.path,
            "--drain-timeout",
            "2",
            *options,
        )
        self.port = int(base.rsplit(":", 1)[1])

    async def open(
        self, path: str, headers: Optional[dict[str, str]] = None
    ) -> tuple[Client, ClientFactory]:
        """
        Open a WebSocket to the gateway's ``path``.
        """
        factory = ClientFactory("ws://127.0.0.1:%d%s" % (self.port, path), headers)
        connector = reactor.connectTCP("127.0.0.1", self.port, factory)  # type: ignore[attr-defined]
        self.clients.append(connector.transport)  # type: ignore[attr-defined]
        client = await factory.opened
        self.clients.append(client.transport)
        return client, factory

    async def raw(self, data: bytes) -> RawClient:
        client = RawClient()
        await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client
        )
        self.clients.append(client.transport)
        client.transport.write(data)  # type: ignore[union-attr]
        return client

    async def test_echo(self) -> None:
        """
        Text, binary and 1 MiB messages come back unchanged through a
        WebSocket opened with a token in ``Authorization``; the upstream
        saw the gateway's identity headers and no token.
        """
        await self.daemon()
        client, factory = await self.open(
            "/build/echo?x=1", {"Authorization": "Bearer " + token()}
        )
        big = hashlib.sha256(b"seed").digest() * (MiB // 32)
        for payload, binary in (
            (b"hello", False),
            (b"\x00\x01\xff", True),
            (big, True),
            ("h\u00e9".encode(), False),
        ):
            client.sendMessage(payload, isBinary=binary)
            got = await factory.messages.get()
            self.assertEqual(got, (payload, binary))
        (request,) = self.upstream.handshakes
        self.assertEqual(request.path, "/echo")
        self.assertEqual(request.params, {"x": ["1"]})
        self.assertNotIn("authorization", request.headers)
        self.assertEqual(request.headers["x-gateway-route"], "BUILD")
        self.assertEqual(request.headers["x-gateway-user"], USERNAME)
        client.sendClose()
        clean, _, _ = await factory.closed
        self.assertTrue(clean)

    async def test_access_token(self) -> None:
        """
        A browser's token in ``access_token`` is accepted on the handshake
        and removed from the query, the rest of which goes upstream as it
        was.
        """
        await self.daemon()
        client, factory = await self.open(
            "/build/feed?a=1&access_token=%s&b=%%41" % (token(),)
        )
        client.sendMessage(b"ping")
        self.assertEqual(await factory.messages.get(), (b"ping", False))
        (request,) = self.upstream.handshakes
        self.assertEqual(request.path, "/feed")
        self.assertEqual(request.params, {"a": ["1"], "b": ["A"]})
        client.sendClose()
        await factory.closed

    async def test_refused_before_upstream(self) -> None:
        """
        A handshake without a token (``401``), with a bad one, or with one
        for another route (``403``) is answered by the gateway in JSON; the
        upstream never hears of it.
        """
        await self.daemon()
        for path, extra, status, code in (
            ("/build/x", (), 401, "MISSING_TOKEN"),
            ("/build/x?access_token=nope", (), 403, "INVALID_TOKEN"),
            (
                "/build/x",
                ("Authorization: Bearer " + token("KV"),),
                403,
                "INVALID_TOKEN",
            ),
            ("/kv/x?access_token=junk", (), 403, "INVALID_TOKEN"),
        ):
            client = await self.raw(handshake(path, *extra))
            await client.wait_for(b"}")
            head, _, body = client.data.partition(b"\r\n\r\n")
            self.assertTrue(head.startswith(b"HTTP/1.1 %d " % (status,)), head)
            self.assertEqual(json.loads(body)["code"], code)
            client.transport.loseConnection()  # type: ignore[union-attr]
        self.assertEqual(self.upstream.connections, 0)

    async def test_refused_upgrade(self) -> None:
        """
        An upstream that refuses the upgrade is relayed as a normal
        answer, and the client's connection carries on as HTTP.
        """
        await self.daemon()
        client = await self.raw(
            handshake("/build/deny", "Authorization: Bearer " + token())
        )
        await client.wait_for(b"not here")
        self.assertTrue(client.data.startswith(b"HTTP/1.1 403 "), client.data)
        self.assertIn(b"access-control-allow-origin: *", client.data.lower())
        self.assertNotIn(b"upgrade:", client.data.lower())
        # The connection is still HTTP: a next request is answered.
        client.data = b""
        client.transport.write(  # type: ignore[union-attr]
            b"GET /health HTTP/1.1\r\nHost: gateway.test\r\n\r\n"
        )
        await client.wait_for(b'"status":"ok"')

    async def test_idle_timeout(self) -> None:
        """
        A joined connection that passes no byte for the idle timeout is
        closed, both sides.
        """
        await self.daemon("--websocket-idle-timeout", "1")
        client, factory = await self.open(
            "/build/idle", {"Authorization": "Bearer " + token()}
        )
        client.sendMessage(b"one")
        self.assertEqual(await factory.messages.get(), (b"one", False))
        started = time.monotonic()
        await factory.closed
        self.assertLess(time.monotonic() - started, 10)
        self.assertGreater(time.monotonic() - started, 0.5)

    async def test_burst_to_slow_reader(self) -> None:
        """
        A fast upstream sending 20 MiB to a client that does not read
        is paused: the daemon's memory stays bounded, and every byte
        arrives once the client reads.
        """
        await self.daemon()
        client, factory = await self.open(
            "/build/burst", {"Authorization": "Bearer " + token()}
        )
        client.sendMessage(b"ping")
        await factory.messages.get()
        pid = self.child.transport.pid  # type: ignore[union-attr]
        before = rss(pid)
        client.transport.pauseProducing()  # type: ignore[union-attr]
        client.sendMessage(b"burst")
        peak = before
        for _ in range(20):
            await deferLater(reactor, 0.1, lambda: None)
            peak = max(peak, rss(pid))
        allowance = BURST_ALLOWANCE
        if platform.python_implementation() != "CPython":
            # PyPy's collector keeps garbage longer.
            allowance = 16 * MiB
        self.assertLess(peak - before, allowance, (before, peak))
        client.transport.resumeProducing()  # type: ignore[union-attr]
        for i in range(BURST // MiB):
            payload, binary = await factory.messages.get()
            self.assertTrue(binary)
            self.assertEqual(payload, bytes([i]) * MiB)
        client.sendClose()
        await factory.closed


class SlowStream(Resource):
    """
    An upstream answering ``text/event-stream``: the first event at once,
    the second only when :attr:`release` fires.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.release: Deferred[None] = Deferred()

    def render_GET(self, request: IRequest) -> Any:
        request.setHeader(b"Content-Type", b"text/event-stream")
        request.write(b"data: one\n\n")

        def second(_: object) -> None:
            request.write(b"data: two\n\n")
            request.finish()

        self.release.addCallback(second)
        return NOT_DONE_YET


class EventStreamDaemonTests(TestCase):
    """
    Event streams through the real daemon.
    """

    timeout = 60

    async def test_chunk_by_chunk(self) -> None:
        """
        Each chunk of a ``text/event-stream`` answer reaches the client as
        the upstream sends it: the client sees the first before the
        upstream sends the second.
        """
        accounts = FilePath(self.mktemp())
        accounts.makedirs()
        stream = SlowStream()
        port = reactor.listenTCP(0, Site(stream), interface="127.0.0.1")  # type: ignore[attr-defined, arg-type]
        self.addCleanup(port.stopListening)
        _, base = await start_daemon(
            self,
            {
                "GATEWAY_JWT_SECRET": SECRET,
                "KV_SERVICE_URL": "http://127.0.0.1:%d" % (port.getHost().port,),  # type: ignore[attr-defined]
            },
            "--accounts-dir",
            accounts.path,
        )
        response = await http_client(self).get(base + "/kv/events", unbuffered=True)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [b"text/event-stream"]
        )
        chunks: list[bytes] = []
        first: Deferred[None] = Deferred()

        def arrived(data: bytes) -> None:
            chunks.append(data)
            if not first.called:
                first.callback(None)

        done = collect(response, arrived)

        def held() -> None:
            if not first.called:
                first.errback(Failure(AssertionError("the first chunk was held")))

        late = reactor.callLater(10, held)  # type: ignore[attr-defined]
        await first
        late.cancel()
        self.assertFalse(stream.release.called)
        self.assertEqual(b"".join(chunks), b"data: one\n\n")
        stream.release.callback(None)
        await done
        self.assertEqual(b"".join(chunks), b"data: one\n\ndata: two\n\n")
