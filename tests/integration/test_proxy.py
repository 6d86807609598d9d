"""
The proxy end to end: the real ``twistd metagateway`` daemon on loopback in
front of real upstream servers. Large bodies both ways (SHA-256 checked,
the daemon's peak memory read from ``/proc``), bytes moving before the other
end has finished, a slow reader, upstreams that stall, reset or die
mid-body, a TLS upstream that fails verification, hostile requests over raw
sockets, header hygiene, and the drain on ``SIGTERM``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import platform
import socket
import struct
from typing import Any, Callable, Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from treq import collect
from zope.interface import implementer

from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import (
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from metagateway.testing import SECRET, RecordingUpstream
from tests.daemon import ChildProcess, http_client, refusing_port, start_daemon

MiB = 1024 * 1024

#: The size of the large transfers.
BIG = 50 * MiB

#: The daemon's peak memory may never reach this.
MEMORY_CEILING = 200 * MiB

#: Seconds the daemon waits on an upstream in these tests.
TIMEOUT = 1.5


def block(index: int) -> bytes:
    """
    The ``index``-th 64 KiB of the large bodies: varied, cheap, and
    reproducible on either side.
    """
    seed = hashlib.sha256(b"%d" % (index,)).digest()
    return seed * 2048


BLOCKS = BIG // (64 * 1024)


def big_digest() -> str:
    digest = hashlib.sha256()
    for i in range(BLOCKS):
        digest.update(block(i))
    return digest.hexdigest()


def memory(pid: int) -> dict[str, int]:
    """
    ``VmRSS`` and ``VmHWM`` of a process, in bytes.
    """
    values = {}
    with open("/proc/%d/status" % (pid,)) as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) * 1024
    return values


@implementer(IBodyProducer)
class BigBody:
    """
    The large body, produced block by block with backpressure.

    :ivar sent: bytes written so far.
    """

    def __init__(self, chunked: bool = False, stop_after: Optional[int] = None):
        self.length = UNKNOWN_LENGTH if chunked else BIG
        self.sent = 0
        self._index = 0
        self._paused = False
        self._consumer: Any = None
        self._done: Deferred[None] = Deferred()
        self._stop_after = stop_after
        self.held: Deferred[None] = Deferred()

    def startProducing(self, consumer: Any) -> Deferred[None]:
        self._consumer = consumer
        reactor.callLater(0, self._produce)
        return self._done

    def _produce(self) -> None:
        while not self._paused and self._index < BLOCKS:
            if self._stop_after is not None and self.sent >= self._stop_after:
                if not self.held.called:
                    self.held.callback(None)
                return
            data = block(self._index)
            self._index += 1
            self.sent += len(data)
            self._consumer.write(data)
        if self._index >= BLOCKS and not self._done.called:
            self._done.callback(None)

    def release(self) -> None:
        """
        Send the rest after a ``stop_after`` hold.
        """
        self._stop_after = None
        reactor.callLater(0, self._produce)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        reactor.callLater(0, self._produce)

    def stopProducing(self) -> None:
        self._paused = True


class Hashing(Resource):
    """
    An upstream answering each request with its body's size and SHA-256.
    """

    isLeaf = True

    def render(self, request: IRequest) -> bytes:
        digest = hashlib.sha256()
        size = 0
        content = request.content
        while True:
            data = content.read(MiB)
            if not data:
                break
            size += len(data)
            digest.update(data)
        return json.dumps({"size": size, "sha256": digest.hexdigest()}).encode()


class BigDownload(Resource):
    """
    An upstream answering with the large body, written as fast as the
    gateway takes it (a pull producer), counting what it wrote.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    def render(self, request: IRequest) -> Any:
        resource = self

        @implementer(IBodyProducer)
        class Producer:  # type: ignore[misc]
            index = 0

            def resumeProducing(self) -> None:
                if self.index >= BLOCKS:
                    request.unregisterProducer()  # type: ignore[attr-defined]
                    request.finish()
                    return
                data = block(self.index)
                self.index += 1
                resource.sent += len(data)
                request.write(data)

            def stopProducing(self) -> None:
                self.index = BLOCKS

        request.setHeader(b"Content-Length", b"%d" % (BIG,))
        request.registerProducer(Producer(), False)  # type: ignore[attr-defined]
        return NOT_DONE_YET


class RawUpstream(Protocol):
    """
    An upstream written byte by byte, to misbehave precisely.

    :param behave: called with this protocol once the request head is in.
    """

    def __init__(self, server: RawServer) -> None:
        self.server = server
        self.data = b""
        self.head_seen = False

    def connectionMade(self) -> None:
        self.server.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        self.server.received += len(data)
        if not self.head_seen and b"\r\n\r\n" in self.data:
            self.head_seen = True
            self.server.heads.append(self.data.split(b"\r\n\r\n", 1)[0])
            self.server.behave(self)


class RawServer(Factory):
    """
    A listening raw upstream.

    :ivar received: bytes received over every connection.
    :ivar heads: the request heads seen.
    """

    def __init__(self, behave: Callable[[RawUpstream], None]) -> None:
        self.behave = behave
        self.received = 0
        self.heads: list[bytes] = []
        self.connections: list[RawUpstream] = []

    def buildProtocol(self, addr: Any) -> RawUpstream:
        return RawUpstream(self)


class RawClient(Protocol):
    """
    A client speaking bytes to the gateway, collecting what comes back.

    :ivar closed: fires with everything received once the gateway closes.
    """

    def __init__(self) -> None:
        self.data = b""
        self.closed: Deferred[bytes] = Deferred()
        self.arrived: Optional[Deferred[None]] = None
        self.reason: Optional[Failure] = None
        self._want = 0

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if self.arrived is not None and len(self.data) >= self._want:
            arrived, self.arrived = self.arrived, None
            arrived.callback(None)

    def wait_for(self, size: int) -> Deferred[None]:
        """
        Fires once ``size`` bytes have been received.
        """
        d: Deferred[None] = Deferred()
        if len(self.data) >= size:
            d.callback(None)
        else:
            self._want = size
            self.arrived = d
        return d

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.reason = reason
        self.closed.callback(self.data)


def parse(data: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    """
    Status, headers (lower-cased names, last value) and raw body of one
    response.
    """
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(b" ")[1]), headers, body


def self_signed(directory: FilePath[str]) -> str:
    """
    Write a self-signed certificate and key for ``127.0.0.1``; return the
    PEM file's path.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    directory.makedirs(ignoreExistingDirectory=True)
    pem = directory.child("upstream.pem")
    pem.setContent(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        + cert.public_bytes(serialization.Encoding.PEM)
    )
    return pem.path


class ProxyDaemonTests(TestCase):
    """
    The proxy through the real daemon.
    """

    timeout = 60

    def setUp(self) -> None:
        self.accounts = FilePath(self.mktemp())
        self.accounts.makedirs()
        self.http = http_client(self)

    def listen(self, factory: Any) -> str:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return "http://127.0.0.1:%d" % (port.getHost().port,)  # type: ignore[attr-defined]

    def raw(self, behave: Callable[[RawUpstream], None]) -> tuple[RawServer, str]:
        server = RawServer(behave)

        def close_all() -> None:
            for connection in server.connections:
                if connection.transport is not None:
                    connection.transport.abortConnection()  # type: ignore[attr-defined]

        self.addCleanup(close_all)
        return server, self.listen(server)

    async def daemon(self, kv: str, *options: str) -> str:
        self.child: ChildProcess
        self.child, base = await start_daemon(
            self,
            {"GATEWAY_JWT_SECRET": SECRET, "KV_SERVICE_URL": kv},
            "--accounts-dir",
            self.accounts.path,
            "--upstream-timeout",
            str(TIMEOUT),
            "--drain-timeout",
            "5",
            *options,
        )
        self.port = int(base.rsplit(":", 1)[1])
        return base

    async def connect(self) -> RawClient:
        client = RawClient()
        await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client
        )
        self.addCleanup(
            lambda: (
                client.transport.abortConnection()  # type: ignore[attr-defined, union-attr]
                if client.transport is not None and client.transport.connected  # type: ignore[attr-defined]
                else None
            )
        )
        return client

    async def exchange(self, data: bytes) -> bytes:
        """
        Send raw bytes, return everything until the gateway closes.
        """
        client = await self.connect()
        client.transport.write(data)  # type: ignore[union-attr]
        return await client.closed

    def check_memory(self, before: dict[str, int]) -> None:
        after = memory(self.child.transport.pid)  # type: ignore[union-attr]
        self.assertLess(after["VmHWM"], MEMORY_CEILING, after)
        if platform.python_implementation() == "CPython":
            # Flat: a few buffers, never anything like the body (PyPy's
            # collector keeps garbage longer, so only the ceiling holds there).
            self.assertLess(after["VmHWM"] - before["VmRSS"], 16 * MiB, (before, after))

    # Large bodies.

    def test_upload_50_mib(self) -> Deferred[None]:
        """
        50 MiB up with a ``Content-Length``: the upstream gets every byte
        (SHA-256) and the daemon's memory stays flat.
        """

        async def go() -> None:
            base = await self.daemon(self.listen(Site(Hashing())))
            before = memory(self.child.transport.pid)  # type: ignore[union-attr]
            response = await self.http.post(base + "/kv/upload", BigBody())
            self.assertEqual(response.code, 200)
            document = json.loads(await response.content())
            self.assertEqual(document, {"size": BIG, "sha256": big_digest()})
            self.check_memory(before)

        return ensureDeferred(go())

    def test_upload_chunked_50_mib(self) -> Deferred[None]:
        """
        50 MiB up, chunked: every byte arrives, memory stays flat.
        """

        async def go() -> None:
            base = await self.daemon(self.listen(Site(Hashing())))
            before = memory(self.child.transport.pid)  # type: ignore[union-attr]
            response = await self.http.post(base + "/kv/upload", BigBody(chunked=True))
            document = json.loads(await response.content())
            self.assertEqual(document, {"size": BIG, "sha256": big_digest()})
            self.check_memory(before)

        return ensureDeferred(go())

    def test_download_50_mib(self) -> Deferred[None]:
        """
        50 MiB down: every byte arrives (SHA-256), memory stays flat.
        """

        async def go() -> None:
            base = await self.daemon(self.listen(Site(BigDownload())))
            before = memory(self.child.transport.pid)  # type: ignore[union-attr]
            response = await self.http.get(base + "/kv/download")
            self.assertEqual(response.code, 200)
            digest = hashlib.sha256()
            size = 0

            def take(data: bytes) -> None:
                nonlocal size
                size += len(data)
                digest.update(data)

            await collect(response, take)
            self.assertEqual((size, digest.hexdigest()), (BIG, big_digest()))
            self.check_memory(before)

        return ensureDeferred(go())

    def test_upload_moves_before_client_finishes(self) -> Deferred[None]:
        """
        The upstream receives the start of a body while the client still
        holds the rest back.
        """

        async def go() -> None:
            server, url = self.raw(lambda upstream: None)
            base = await self.daemon(url)
            body = BigBody(stop_after=4 * MiB)
            response = self.http.post(base + "/kv/upload", body)
            await body.held
            for _ in range(100):
                if server.received >= 2 * MiB:
                    break
                await deferLater(reactor, 0.05)
            self.assertGreaterEqual(server.received, 2 * MiB)
            self.assertLess(server.received, BIG)
            for connection in server.connections:
                connection.transport.abortConnection()  # type: ignore[union-attr]
            response.addErrback(lambda f: None)
            body.stopProducing()

        return ensureDeferred(go())

    def test_slow_reader(self) -> Deferred[None]:
        """
        A client that stops reading stops the upstream (it sends only what
        the buffers hold), without the daemon holding the body; when the
        client reads again, every byte arrives.
        """

        async def go() -> None:
            upstream = BigDownload()
            await self.daemon(self.listen(Site(upstream)))
            before = memory(self.child.transport.pid)  # type: ignore[union-attr]
            client = await self.connect()
            client.transport.write(  # type: ignore[union-attr]
                b"GET /kv/download HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
            )
            await client.wait_for(1)
            client.transport.pauseProducing()  # type: ignore[union-attr]
            await deferLater(reactor, 1.0)
            stalled = upstream.sent
            await deferLater(reactor, 0.5)
            self.assertEqual(upstream.sent, stalled)
            self.assertLess(stalled, BIG // 2)
            self.check_memory(before)
            client.transport.resumeProducing()  # type: ignore[union-attr]
            data = await client.closed
            status, headers, body = parse(data)
            self.assertEqual((status, len(body)), (200, BIG))
            self.assertEqual(hashlib.sha256(body).hexdigest(), big_digest())

        return ensureDeferred(go())

    # Upstream failures.

    async def json_error(self, url: str, status: int, code: str) -> None:
        response = await self.http.get(url)
        self.assertEqual(response.code, status)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [b"application/json"]
        )
        document = json.loads(await response.content())
        self.assertEqual((document["code"], document["route"]), (code, "KV"))

    def test_upstream_stalls(self) -> Deferred[None]:
        """
        An upstream that never answers: ``504 UPSTREAM_TIMEOUT`` after the
        upstream timeout.
        """

        async def go() -> None:
            _, url = self.raw(lambda upstream: None)
            base = await self.daemon(url)
            started = reactor.seconds()
            await self.json_error(base + "/kv/x", 504, "UPSTREAM_TIMEOUT")
            self.assertGreaterEqual(reactor.seconds() - started, TIMEOUT - 0.1)

        return ensureDeferred(go())

    def test_upstream_refuses(self) -> Deferred[None]:
        """
        Nothing listening: ``502 UPSTREAM_UNAVAILABLE``, at once (an
        address is not resolved: no 0.3 s attempt delay, which every such
        answer used to take).
        """

        async def go() -> None:
            base = await self.daemon("http://127.0.0.1:%d" % (refusing_port(self),))
            took = []
            for _ in range(5):
                started = reactor.seconds()
                await self.json_error(base + "/kv/x", 502, "UPSTREAM_UNAVAILABLE")
                took.append(reactor.seconds() - started)
            self.assertLess(min(took), 0.25, took)

        return ensureDeferred(go())

    def test_own_answers_carry_request_id(self) -> Deferred[None]:
        """
        The gateway's own answers (health, the preflight, a 404, an
        upstream failure) carry the client's ``X-Request-Id``.
        """

        async def go() -> None:
            base = await self.daemon("http://127.0.0.1:%d" % (refusing_port(self),))
            sent = {b"X-Request-Id": [b"trace-1"]}
            for method, path, status in (
                ("GET", "/health", 200),
                ("OPTIONS", "/kv/x", 204),
                ("GET", "/nowhere", 404),
                ("GET", "/kv/x", 502),
            ):
                response = await self.http.request(method, base + path, headers=sent)
                await response.content()
                self.assertEqual(
                    (response.code, response.headers.getRawHeaders(b"x-request-id")),
                    (status, [b"trace-1"]),
                    (method, path),
                )

        return ensureDeferred(go())

    def test_upstream_resets(self) -> Deferred[None]:
        """
        An upstream that resets the connection on the request:
        ``502 UPSTREAM_UNAVAILABLE``.
        """

        async def go() -> None:
            def reset(upstream: RawUpstream) -> None:
                upstream.transport.abortConnection()  # type: ignore[union-attr]

            _, url = self.raw(reset)
            base = await self.daemon(url)
            await self.json_error(base + "/kv/x", 502, "UPSTREAM_UNAVAILABLE")

        return ensureDeferred(go())

    def test_upstream_dies_mid_body(self) -> Deferred[None]:
        """
        An upstream that closes mid-body: the client's connection is closed
        with the body short of its length (and, chunked, without its last
        chunk).
        """

        async def go() -> None:
            def sized(upstream: RawUpstream) -> None:
                upstream.transport.write(  # type: ignore[union-attr]
                    b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000
                )
                upstream.transport.loseConnection()  # type: ignore[union-attr]

            _, url = self.raw(sized)
            await self.daemon(url)
            data = await self.exchange(b"GET /kv/x HTTP/1.1\r\nHost: gw\r\n\r\n")
            status, headers, body = parse(data)
            self.assertEqual((status, headers[b"content-length"]), (200, b"100000"))
            self.assertLess(len(body), 100000)

        return ensureDeferred(go())

    def test_upstream_dies_mid_chunked_body(self) -> Deferred[None]:
        """
        A chunked answer broken off: the client never sees its last chunk.
        """

        async def go() -> None:
            def chunked(upstream: RawUpstream) -> None:
                upstream.transport.write(  # type: ignore[union-attr]
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"5\r\nhello\r\n"
                )
                upstream.transport.loseConnection()  # type: ignore[union-attr]

            _, url = self.raw(chunked)
            await self.daemon(url)
            data = await self.exchange(b"GET /kv/x HTTP/1.1\r\nHost: gw\r\n\r\n")
            status, headers, body = parse(data)
            self.assertEqual(headers[b"transfer-encoding"], b"chunked")
            self.assertNotIn(b"0\r\n\r\n", body)

        return ensureDeferred(go())

    def reset_mid_close_delimited_body(self, upstream: RawUpstream) -> None:
        """
        Answer with a body that ends with the connection (no length, not
        chunked), then reset the connection (``SO_LINGER`` 0: an RST, not
        a FIN) instead of closing it.
        """
        transport: Any = upstream.transport
        transport.write(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\n" + b"x" * 1000)

        def reset() -> None:
            transport.getHandle().setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            transport.abortConnection()

        # After the bytes have gone: the gateway must see them, then the RST.
        reactor.callLater(0.2, reset)

    def test_close_delimited_body_reset(self) -> Deferred[None]:
        """
        An upstream answer delimited by its connection's end, cut by a
        reset: an HTTP/1.0 client's connection (its answer delimited the
        same way) is reset, not closed as if the answer were complete.
        """

        async def go() -> None:
            _, url = self.raw(self.reset_mid_close_delimited_body)
            await self.daemon(url)
            client = await self.connect()
            client.transport.write(b"GET /kv/x HTTP/1.0\r\n\r\n")  # type: ignore[union-attr]
            data = await client.closed
            self.assertEqual(parse(data)[0], 200)
            assert client.reason is not None
            self.assertIsInstance(client.reason.value, ConnectionLost)
            self.assertNotIsInstance(client.reason.value, ConnectionDone)

        return ensureDeferred(go())

    def test_close_delimited_body_reset_chunked(self) -> Deferred[None]:
        """
        The same cut answer to an HTTP/1.1 client, relayed chunked: it
        never gets the last chunk; closed cleanly instead, it does.
        """

        async def go() -> None:
            def answer(upstream: RawUpstream) -> None:
                if upstream.data.startswith(b"GET /reset "):
                    self.reset_mid_close_delimited_body(upstream)
                    return
                transport: Any = upstream.transport
                transport.write(b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 1000)
                transport.loseConnection()

            _, url = self.raw(answer)
            await self.daemon(url)
            head = b"HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
            data = await self.exchange(b"GET /kv/reset " + head)
            status, headers, body = parse(data)
            self.assertEqual((status, headers[b"transfer-encoding"]), (200, b"chunked"))
            self.assertNotIn(b"0\r\n\r\n", body)
            data = await self.exchange(b"GET /kv/close " + head)
            self.assertTrue(parse(data)[2].endswith(b"\r\n0\r\n\r\n"))

        return ensureDeferred(go())

    def test_tls_verification_fails(self) -> Deferred[None]:
        """
        An HTTPS upstream whose certificate is not trusted: ``502``, and a
        log line saying TLS failed for that upstream.
        """

        async def go() -> None:
            try:
                pem = self_signed(FilePath(self.mktemp()))
            except ImportError:
                raise SkipTest("cryptography is not installed") from None
            with open(pem) as f:
                certificate = ssl.PrivateCertificate.loadPEM(f.read())
            port = reactor.listenSSL(  # type: ignore[attr-defined]
                0,
                Site(RecordingUpstream()),
                certificate.options(),
                interface="127.0.0.1",
            )
            self.addCleanup(port.stopListening)
            url = "https://127.0.0.1:%d" % (port.getHost().port,)
            base = await self.daemon(url)
            await self.json_error(base + "/kv/x", 502, "UPSTREAM_UNAVAILABLE")
            for _ in range(40):
                if b"TLS with upstream KV" in self.child.output:
                    break
                await deferLater(reactor, 0.05)
            self.assertIn(b"TLS with upstream KV (" + url.encode(), self.child.output)

        return ensureDeferred(go())

    # Hostile input.

    def test_hostile_requests(self) -> Deferred[None]:
        """
        Ambiguous framing, oversized heads, malformed request lines and
        bodies over the limit are each refused in JSON with the connection
        closed; none reaches the upstream, and the daemon keeps serving.
        """
        cases = [
            (
                b"POST /kv/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                400,
            ),
            (
                b"POST /kv/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Length: 5\r\n\r\nhello",
                400,
            ),
            (
                b"POST /kv/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: identity\r\n"
                b"\r\nhello",
                400,
            ),
            (
                b"POST /kv/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n"
                b"Content-Length: 6\r\n\r\nhello!",
                400,
            ),
            (
                b"POST /kv/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
                b"\r\nzz\r\nhello\r\n0\r\n\r\n",
                400,
            ),
            (b"NOT A REQUEST\r\n\r\n", 400),
            (b"GET /kv/x HTTP/9.9\r\n\r\n", 400),
            (b"GET /kv/x HTTP/1.1\r\nBad Header\r\n\r\n", 400),
            (
                b"GET /kv/x HTTP/1.1\r\n"
                + b"".join(b"X-%d: y\r\n" % (i,) for i in range(200))
                + b"\r\n",
                431,
            ),
            (b"GET /kv/x HTTP/1.1\r\nX-Big: " + b"y" * 40000 + b"\r\n\r\n", 431),
            (b"GET /kv/" + b"a" * 40000 + b" HTTP/1.1\r\n\r\n", 414),
            (
                b"POST /kv/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 2000001\r\n\r\n",
                413,
            ),
            (
                b"POST /auth/login HTTP/1.1\r\nHost: gw\r\n"
                b"Content-Length: 1000000\r\n\r\n",
                413,
            ),
        ]

        async def go() -> None:
            server, url = self.raw(
                lambda upstream: upstream.transport.write(  # type: ignore[union-attr]
                    b"HTTP/1.1 204 No Content\r\n\r\n"
                )
            )
            await self.daemon(url, "--max-body", "2000000")
            for data, status in cases:
                answer = await self.exchange(data)
                code, headers, body = parse(answer)
                self.assertEqual(code, status, data[:80])
                self.assertEqual(headers[b"content-type"], b"application/json")
                self.assertEqual(headers[b"connection"], b"close")
                self.assertEqual(json.loads(body)["status"], status)
            self.assertEqual(server.heads, [])
            answer = await self.exchange(
                b"GET /kv/ok HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
            )
            self.assertEqual(parse(answer)[0], 204)
            self.assertEqual(len(server.heads), 1)

        return ensureDeferred(go())

    # Headers.

    def test_header_hygiene(self) -> Deferred[None]:
        """
        Hop-by-hop headers (and those ``Connection`` names) cross neither
        way, the forwarding headers are
        set, the request id goes upstream (and the answer carries no header
        the upstream did not send but the CORS one), and repeated headers
        keep all their values.
        """

        async def go() -> None:
            def answer(upstream: RawUpstream) -> None:
                upstream.transport.write(  # type: ignore[union-attr]
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                    b"Keep-Alive: timeout=5\r\nUpgrade: h2c\r\nTrailer: X-Sum\r\n"
                    b"Proxy-Authenticate: Basic\r\nConnection: X-Secret\r\n"
                    b"X-Secret: 1\r\n"
                    b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nok"
                )

            server, url = self.raw(answer)
            await self.daemon(url)
            data = await self.exchange(
                b"GET /kv/h HTTP/1.1\r\nHost: gw.example\r\n"
                b"Connection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 300\r\n"
                b"TE: trailers\r\nUpgrade: websocket\r\nProxy-Connection: x\r\n"
                b"Proxy-Authorization: Basic eA==\r\nX-Forwarded-For: 192.0.2.1\r\n"
                b"X-Request-Id: req-42\r\nAccept: a/b\r\nAccept: c/d\r\n\r\n"
            )
            [head] = server.heads
            lines = head.lower().split(b"\r\n")[1:]
            names = [line.split(b":", 1)[0] for line in lines]
            for hop in (
                b"x-hop",
                b"keep-alive",
                b"te",
                b"upgrade",
                b"proxy-connection",
                b"proxy-authorization",
            ):
                self.assertNotIn(hop, names)
            self.assertIn(b"x-forwarded-for: 192.0.2.1, 127.0.0.1", lines)
            self.assertIn(b"x-forwarded-proto: http", lines)
            self.assertIn(b"x-forwarded-host: gw.example", lines)
            self.assertIn(b"x-request-id: req-42", lines)
            self.assertEqual(names.count(b"accept"), 2)
            status, headers, body = parse(data)
            self.assertEqual((status, body), (200, b"ok"))
            for hop in (
                b"keep-alive",
                b"upgrade",
                b"trailer",
                b"proxy-authenticate",
                b"x-secret",
            ):
                self.assertNotIn(hop, headers)
            self.assertNotIn(b"x-request-id", headers)
            self.assertEqual(
                set(headers),
                {
                    b"content-length",
                    b"set-cookie",
                    b"access-control-allow-origin",
                    b"date",
                    b"server",
                    # The gateway's own framing: the client asked to close.
                    b"connection",
                },
            )
            self.assertEqual(data.count(b"Set-Cookie"), 2)

        return ensureDeferred(go())

    # Drain.

    def test_drain_on_sigterm(self) -> Deferred[None]:
        """
        On ``SIGTERM`` the daemon stops accepting, lets the request in
        flight finish, then exits cleanly.
        """

        async def go() -> None:
            held: list[RawUpstream] = []
            server, url = self.raw(held.append)
            await self.daemon(url)
            client = await self.connect()
            client.transport.write(b"GET /kv/slow HTTP/1.1\r\nHost: gw\r\n\r\n")  # type: ignore[union-attr]
            while not held:
                await deferLater(reactor, 0.02)
            self.child.signal("TERM")
            await deferLater(reactor, 0.5)
            refused = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port, timeout=2)
            with self.assertRaises(ConnectionRefusedError):
                await connectProtocol(refused, Protocol())
            self.assertIsNone(self.child.exit_code)
            held[0].transport.write(  # type: ignore[union-attr]
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone"
            )
            data = await client.closed
            status, headers, body = parse(data)
            self.assertEqual((status, body), (200, b"done"))
            self.assertEqual(headers[b"connection"], b"close")
            # twistd ends by the signal it was sent, not by an exit status.
            await self.child.ended
            self.assertNotIn(b"Drain period over", self.child.output)

        return ensureDeferred(go())

    def test_drain_bounded(self) -> Deferred[None]:
        """
        A request still in flight when the drain period ends is cut, and
        the daemon exits.
        """

        async def go() -> None:
            held: list[RawUpstream] = []
            server, url = self.raw(held.append)
            await self.daemon(url, "--drain-timeout", "0.5", "--upstream-timeout", "30")
            client = await self.connect()
            client.transport.write(b"GET /kv/slow HTTP/1.1\r\nHost: gw\r\n\r\n")  # type: ignore[union-attr]
            while not held:
                await deferLater(reactor, 0.02)
            started = reactor.seconds()
            self.child.signal("TERM")
            await client.closed
            await self.child.ended
            self.assertLess(reactor.seconds() - started, 5)
            self.assertIn(b"Drain period over", self.child.output)

        return ensureDeferred(go())

    # The request head.

    def test_slow_head(self) -> Deferred[None]:
        """
        A request head sent a byte a second (slowloris), which the idle
        timeout alone never ends, is answered ``408 REQUEST_TIMEOUT`` in
        JSON thirty seconds after its first byte, and the connection is
        closed; the upstream never hears of it.
        """

        async def go() -> None:
            server, url = self.raw(
                lambda upstream: upstream.transport.write(  # type: ignore[union-attr]
                    b"HTTP/1.1 204 No Content\r\n\r\n"
                )
            )
            await self.daemon(url)
            client = await self.connect()
            closed_at: list[float] = []
            client.closed.addCallback(  # type: ignore[call-overload]
                lambda data: closed_at.append(reactor.seconds()) or data  # type: ignore[func-returns-value]
            )
            head = b"GET /kv/x HTTP/1.1\r\nHost: gw\r\nX-Slow: " + b"y" * 100
            started = reactor.seconds()
            for i in range(len(head)):
                if closed_at or reactor.seconds() - started > 45:
                    break
                client.transport.write(head[i : i + 1])  # type: ignore[union-attr]
                await deferLater(reactor, 1)
            self.assertTrue(closed_at, "still open after 45 seconds")
            self.assertGreaterEqual(closed_at[0] - started, 29.5)
            self.assertLess(closed_at[0] - started, 36)
            code, headers, body = parse(await client.closed)
            self.assertEqual(code, 408)
            self.assertEqual(headers[b"content-type"], b"application/json")
            self.assertEqual(headers[b"connection"], b"close")
            document = json.loads(body)
            self.assertEqual(
                (document["code"], document["route"], document["message"]),
                ("REQUEST_TIMEOUT", "CORE", "Request head not received in time"),
            )
            self.assertEqual(server.heads, [])

        return ensureDeferred(go())

    def test_head_rules(self) -> Deferred[None]:
        """
        A bare-LF head is refused at once, and a missing or repeated
        ``Host`` too, in JSON; ``OPTIONS *`` is a preflight and ``GET *`` a
        JSON ``400``; none reaches the upstream.
        """

        async def go() -> None:
            server, url = self.raw(
                lambda upstream: upstream.transport.write(  # type: ignore[union-attr]
                    b"HTTP/1.1 204 No Content\r\n\r\n"
                )
            )
            await self.daemon(url)
            for data in (
                b"GET /kv/x HTTP/1.1\nHost: gw\n\n",
                b"GET /kv/x HTTP/1.1\r\nAccept: */*\r\n\r\n",
                b"GET /kv/x HTTP/1.1\r\nHost: gw\r\nHost: gw\r\n\r\n",
                b"GET * HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
            ):
                code, headers, body = parse(await self.exchange(data))
                self.assertEqual(code, 400, data)
                self.assertEqual(headers[b"content-type"], b"application/json")
                self.assertEqual(json.loads(body)["code"], "BAD_REQUEST")
            code, headers, body = parse(
                await self.exchange(
                    b"OPTIONS * HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
                )
            )
            self.assertEqual((code, body), (204, b""))
            self.assertEqual(headers[b"access-control-allow-origin"], b"*")
            self.assertEqual(
                headers[b"access-control-allow-methods"], b"GET,POST,PUT,DELETE,OPTIONS"
            )
            self.assertEqual(server.heads, [])

        return ensureDeferred(go())
