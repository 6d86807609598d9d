"""
WebSocket pass-through in memory (:ref:`contract-websocket`): the join of
two connections over fake transports (bytes, backpressure both ways, close
from either side, the idle timer on a fake clock), and the handshake
through the gateway's real channel (tokens in ``Authorization`` and in
``access_token``, refusals before any upstream contact, the ``101`` and
the join, a refused upgrade relayed, ``h2c`` proxied plain, timeouts, the
assertion, the graceful stop, the access-log line).
"""

from __future__ import annotations

from typing import Any

import jwt

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from metagateway.observability.accesslog import AccessLog
from metagateway.proxy.upstream import UpstreamAgent
from metagateway.proxy.websocket import (
    Join,
    WebSockets,
    is_websocket_upgrade,
    take_access_token,
)
from metagateway.testing import SECRET, USERNAME
from metagateway.testing.channel import ChannelHarness
from tests.helpers import token_claims
from tests.unit.test_assertion import write_key


def token(route: str = "BUILD") -> str:
    """
    A valid token for ``route``, issued now (the harness's clock).
    """
    return jwt.encode(
        token_claims(1_800_000_000, route=route), SECRET, algorithm="HS256"
    )


class Joined:
    """
    Two fake transports joined, with the join's end recorded.
    """

    def __init__(self, idle_timeout: float = 0.0) -> None:
        self.clock = Clock()
        self.sockets = WebSockets(self.clock, None, idle_timeout)
        self.client = StringTransport()
        self.upstream = StringTransport()
        self.ends: list[Join] = []
        self.join = Join(self.sockets, self.client, self.upstream, self.ends.append)


class JoinTests(SynchronousTestCase):
    """
    :class:`Join` over fake transports.
    """

    def test_bytes_both_ways(self) -> None:
        """
        What either side sends reaches the other unchanged, and is counted
        on the join and on the gateway's totals.
        """
        j = Joined()
        j.join.from_client(b"\x81\x05hello")
        j.join.from_upstream(b"\x82\x02\x00\xff")
        self.assertEqual(j.upstream.value(), b"\x81\x05hello")
        self.assertEqual(j.client.value(), b"\x82\x02\x00\xff")
        self.assertEqual((j.join.bytes_up, j.join.bytes_down), (7, 4))
        self.assertEqual((j.sockets.bytes_up, j.sockets.bytes_down), (7, 4))
        self.assertEqual((j.sockets.total, len(j.sockets.open)), (1, 1))

    def test_slow_client_pauses_upstream(self) -> None:
        """
        While the client's connection cannot take more, the upstream's is
        not read; it is read again once the client's drains.
        """
        j = Joined()
        self.assertTrue(j.client.streaming)
        j.client.producer.pauseProducing()
        self.assertEqual(j.upstream.producerState, "paused")
        self.assertEqual(j.client.producerState, "producing")
        j.client.producer.resumeProducing()
        self.assertEqual(j.upstream.producerState, "producing")

    def test_slow_upstream_pauses_client(self) -> None:
        """
        While the upstream's connection cannot take more, the client's is
        not read.
        """
        j = Joined()
        j.upstream.producer.pauseProducing()
        self.assertEqual(j.client.producerState, "paused")
        self.assertEqual(j.upstream.producerState, "producing")
        j.upstream.producer.resumeProducing()
        self.assertEqual(j.client.producerState, "producing")

    def test_client_closes(self) -> None:
        """
        The client's close closes the upstream's connection and ends the
        join once.
        """
        j = Joined()
        j.join.client_lost()
        j.join.upstream_lost()
        self.assertTrue(j.upstream.disconnecting)
        self.assertEqual(j.ends, [j.join])
        self.assertEqual(j.join.closed_by, "client")
        self.assertEqual(j.sockets.open, set())
        self.assertIsNone(j.client.producer)
        self.assertIsNone(j.upstream.producer)

    def test_upstream_closes(self) -> None:
        """
        The upstream's close closes the client's connection.
        """
        j = Joined()
        j.join.upstream_lost()
        self.assertTrue(j.client.disconnecting)
        self.assertEqual(j.join.closed_by, "upstream")
        j.join.from_client(b"late")
        self.assertEqual(j.upstream.value(), b"")

    def test_idle(self) -> None:
        """
        A join with no byte either way for the idle timeout is closed;
        every byte puts the deadline back.
        """
        j = Joined(idle_timeout=10)
        j.clock.advance(6)
        j.join.from_client(b"x")
        j.clock.advance(6)
        j.join.from_upstream(b"y")
        j.clock.advance(9)
        self.assertIsNone(j.join.closed_by)
        j.clock.advance(1)
        self.assertEqual(j.join.closed_by, "idle")
        self.assertTrue(j.client.disconnecting)
        self.assertTrue(j.upstream.disconnecting)
        self.assertEqual(j.clock.getDelayedCalls(), [])

    def test_no_idle_limit(self) -> None:
        """
        An idle timeout of 0 never closes a join.
        """
        j = Joined(idle_timeout=0)
        self.assertEqual(j.clock.getDelayedCalls(), [])

    def test_close_all(self) -> None:
        """
        A graceful stop closes every open join, both sides.
        """
        j = Joined(idle_timeout=10)
        self.assertEqual(j.sockets.close_all(), 1)
        self.assertEqual(j.join.closed_by, "stopped")
        self.assertTrue(j.client.disconnecting)
        self.assertTrue(j.upstream.disconnecting)
        self.assertEqual(j.clock.getDelayedCalls(), [])
        self.assertEqual(j.sockets.close_all(), 0)

    def test_samples(self) -> None:
        """
        The metrics: joins open, joins made, bytes each way.
        """
        j = Joined()
        j.join.from_client(b"abc")
        j.join.from_upstream(b"de")
        text = "\n".join(j.sockets.samples('worker="1",'))
        self.assertIn('metagateway_websocket_open{worker="1"} 1', text)
        self.assertIn('metagateway_websocket_connections_total{worker="1"} 1', text)
        self.assertIn(
            'metagateway_websocket_bytes_total{worker="1",direction="upstream"} 3',
            text,
        )
        self.assertIn(
            'metagateway_websocket_bytes_total{worker="1",direction="client"} 2',
            text,
        )
        j.join.client_lost()
        self.assertIn("metagateway_websocket_open 0", j.sockets.samples(""))


class AccessTokenTests(SynchronousTestCase):
    """
    :func:`take_access_token`.
    """

    def test_removed(self) -> None:
        """
        The parameter is taken out; the rest of the query stays byte for
        byte, in order.
        """
        self.assertEqual(
            take_access_token(b"/x?a=1&access_token=T.k-n&b=%41+c&&d"),
            (b"/x?a=1&b=%41+c&&d", "T.k-n"),
        )

    def test_only(self) -> None:
        """
        A query holding only the token goes with it, ``?`` included.
        """
        self.assertEqual(take_access_token(b"/x?access_token=abc"), (b"/x", "abc"))

    def test_repeated(self) -> None:
        """
        Every ``access_token`` is removed; the first is the token.
        """
        self.assertEqual(
            take_access_token(b"/x?access_token=a&k=v&access_token=b"),
            (b"/x?k=v", "a"),
        )

    def test_percent_encoded_value(self) -> None:
        """
        The value is percent-decoded.
        """
        self.assertEqual(take_access_token(b"/?access_token=a%2Eb")[1], "a.b")

    def test_none(self) -> None:
        """
        A target without the parameter is unchanged; a parameter merely
        named alike is kept.
        """
        for uri in (b"/x", b"/x?a=1", b"/x?my_access_token=1", b"/x?access_tokens=1"):
            self.assertEqual(take_access_token(uri), (uri, None))


class FakeRequest:
    """
    Just what :func:`is_websocket_upgrade` reads.
    """

    def __init__(
        self,
        headers: dict[bytes, bytes],
        method: bytes = b"GET",
        proto: bytes = b"HTTP/1.1",
    ) -> None:
        from twisted.web.http_headers import Headers

        self.method = method
        self.clientproto = proto
        self.requestHeaders = Headers({k: [v] for k, v in headers.items()})


class UpgradeDetectionTests(SynchronousTestCase):
    """
    :func:`is_websocket_upgrade`.
    """

    def test_websocket(self) -> None:
        """
        ``Upgrade: websocket`` with ``upgrade`` among the ``Connection``
        tokens, case-insensitive.
        """
        for upgrade, connection in (
            (b"websocket", b"Upgrade"),
            (b"WebSocket", b"keep-alive, upgrade"),
        ):
            request = FakeRequest({b"upgrade": upgrade, b"connection": connection})
            self.assertTrue(is_websocket_upgrade(request), (upgrade, connection))  # type: ignore[arg-type]

    def test_not_websocket(self) -> None:
        """
        Another upgrade, no ``Connection: upgrade``, another method, a body
        or HTTP/1.0 is not a WebSocket handshake.
        """
        ws = {b"upgrade": b"websocket", b"connection": b"upgrade"}
        for request in (
            FakeRequest({b"upgrade": b"h2c", b"connection": b"upgrade"}),
            FakeRequest({b"upgrade": b"websocket"}),
            FakeRequest({b"upgrade": b"websocket", b"connection": b"close"}),
            FakeRequest(ws, method=b"POST"),
            FakeRequest(ws, proto=b"HTTP/1.0"),
            FakeRequest({**ws, b"content-length": b"5"}),
            FakeRequest({**ws, b"transfer-encoding": b"chunked"}),
        ):
            self.assertFalse(is_websocket_upgrade(request))  # type: ignore[arg-type]


class FakeEndpoint:
    """
    Connects each protocol to a fresh ``StringTransport``, or fails as
    told.
    """

    def __init__(self, owner: FakeEndpoints) -> None:
        self.owner = owner

    def connect(self, factory: Factory[Any]) -> Deferred[Any]:
        """
        Connect (or not) at once.
        """
        if self.owner.refuse:
            return fail(ConnectionRefusedError("refused"))
        if self.owner.hang:
            d: Deferred[Any] = Deferred()
            self.owner.pending.append(d)
            return d
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.owner.connections.append((protocol, transport))
        return succeed(protocol)


class FakeEndpoints:
    """
    The upstreams' endpoints, recording every connection.
    """

    def __init__(self) -> None:
        self.connections: list[tuple[Any, StringTransport]] = []
        self.uris: list[Any] = []
        self.pending: list[Deferred[Any]] = []
        self.refuse = False
        self.hang = False

    def endpointForURI(self, uri: Any) -> FakeEndpoint:
        """
        The one fake endpoint.
        """
        self.uris.append(uri)
        return FakeEndpoint(self)


SWITCH = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)


def handshake(target: bytes, *headers: bytes, upgrade: bytes = b"websocket") -> bytes:
    """
    A handshake for ``target`` with ``headers`` added.
    """
    return (
        b"GET "
        + target
        + b" HTTP/1.1\r\nHost: gateway.test\r\nUpgrade: "
        + upgrade
        + b"\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        + b"".join(h + b"\r\n" for h in headers)
        + b"\r\n"
    )


class HandshakeTests(SynchronousTestCase):
    """
    WebSocket handshakes through the gateway's channel, in memory.
    """

    def harness(self, **config: Any) -> ChannelHarness:
        harness = ChannelHarness(**config)
        self.endpoints = FakeEndpoints()
        harness.gateway.websockets.endpoints = self.endpoints
        self.events: list[dict[str, Any]] = []
        harness.gateway.recorder.access_log = AccessLog(
            "text",
            observer=self.events.append,  # type: ignore[arg-type]
        )
        return harness

    def upstream(self) -> tuple[Any, bytes]:
        (connection,) = self.endpoints.connections
        protocol, transport = connection
        return protocol, transport.value()

    def test_header_token_forwarded(self) -> None:
        """
        A handshake with a valid token goes upstream over a new connection
        with ``Upgrade``, ``Connection: Upgrade``, the ``Sec-WebSocket-*``
        headers and the gateway's identity headers, without the token.
        """
        h = self.harness()
        h.send(
            handshake(
                b"/build/feed?x=1",
                b"Authorization: Bearer " + token().encode(),
                b"X-Gateway-User: mallory",
            )
        )
        _, head = self.upstream()
        lines = head.split(b"\r\n")
        self.assertEqual(lines[0], b"GET /base/feed?x=1 HTTP/1.1")
        self.assertIn(b"Upgrade: websocket", lines)
        self.assertIn(b"Connection: Upgrade", lines)
        self.assertIn(b"Sec-Websocket-Key: dGhlIHNhbXBsZSBub25jZQ==", lines)
        self.assertIn(b"Sec-Websocket-Version: 13", lines)
        self.assertIn(b"X-Gateway-User: " + USERNAME.encode(), lines)
        self.assertIn(b"X-Gateway-Route: BUILD", lines)
        self.assertIn(b"Host: build.test", lines)
        self.assertNotIn(b"mallory", head)
        self.assertNotIn(b"authorization", head.lower())
        self.assertTrue(head.endswith(b"\r\n\r\n"))
        self.assertEqual(h.agent.calls, [])
        self.assertEqual(h.transport.value(), b"")

    def test_route_agent_endpoints(self) -> None:
        """
        A route whose agent is an ``UpstreamAgent`` (a route with its own
        ``upstream_ca`` or ``upstream_client_cert`` has one of its own)
        connects its handshakes with that agent's endpoints, and so with
        its TLS; the gateway's endpoints are not asked.
        """
        h = self.harness()
        route_endpoints = FakeEndpoints()
        proxy = h.gateway.proxies["BUILD"]
        proxy.agent = UpstreamAgent(
            h.clock,
            route_endpoints,  # type: ignore[arg-type]
            h.gateway.pool,
        )
        h.send(handshake(b"/build/feed", b"Authorization: Bearer " + token().encode()))
        self.assertEqual([uri.host for uri in route_endpoints.uris], [b"build.test"])
        self.assertEqual(len(route_endpoints.connections), 1)
        self.assertEqual(self.endpoints.uris, [])

    def test_query_token(self) -> None:
        """
        The token in ``access_token`` is accepted, and removed from the
        query that goes upstream (the rest as it was).
        """
        h = self.harness()
        h.send(handshake(b"/build/feed?a=%41&access_token=" + token().encode() + b"&b"))
        _, head = self.upstream()
        self.assertTrue(head.startswith(b"GET /base/feed?a=%41&b HTTP/1.1\r\n"), head)
        self.assertIn(b"X-Gateway-User: " + USERNAME.encode(), head)
        self.assertNotIn(b"access_token", head)

    def test_query_token_upgrade_only(self) -> None:
        """
        ``access_token`` is no token on a plain request: ``401`` where one is
        required, and left in the query where none is.
        """
        h = self.harness()
        h.send(
            b"GET /build/x?access_token=" + token().encode() + b" HTTP/1.1\r\n"
            b"Host: gateway.test\r\n\r\n"
        )
        self.assertEqual(h.response().code, 401)
        h.send(b"GET /kv/x?access_token=abc HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
        (call,) = h.agent.calls
        self.assertEqual(call.uri, b"http://kv.test/x?access_token=abc")
        self.assertEqual(self.endpoints.connections, [])

    def test_refused_before_upstream(self) -> None:
        """
        No token (``401``), a bad one or one for another route (``403``):
        answered in JSON, and the upstream is never contacted.
        """
        for extra, status, code in (
            ((), 401, "MISSING_TOKEN"),
            ((b"Authorization: Bearer junk",), 403, "INVALID_TOKEN"),
            ((b"Authorization: Bearer " + token("KV").encode(),), 403, "INVALID_TOKEN"),
        ):
            h = self.harness()
            h.send(handshake(b"/build/x", *extra))
            response = h.response()
            self.assertEqual(response.code, status)
            self.assertEqual(response.json()["code"], code)
            self.assertEqual(self.endpoints.uris, [])
        h = self.harness()
        h.send(handshake(b"/build/x?access_token=junk"))
        self.assertEqual(h.response().code, 403)
        h = self.harness()
        h.send(handshake(b"/kv/x?access_token=junk"))
        self.assertEqual(h.response().code, 403)
        self.assertEqual(self.endpoints.uris, [])

    def test_optional_route_without_token(self) -> None:
        """
        On a route where a token is optional, a handshake without one goes
        upstream anonymously.
        """
        h = self.harness()
        h.send(handshake(b"/kv/x"))
        _, head = self.upstream()
        self.assertTrue(head.startswith(b"GET /x HTTP/1.1\r\n"))
        self.assertNotIn(b"X-Gateway-User", head)

    def switched(self, h: ChannelHarness, *data: bytes) -> tuple[Any, StringTransport]:
        h.send(handshake(b"/build/ws", b"Authorization: Bearer " + token().encode()))
        (connection,) = self.endpoints.connections
        protocol, transport = connection
        transport.clear()
        protocol.dataReceived(SWITCH + b"".join(data))
        return protocol, transport

    def test_switch_and_join(self) -> None:
        """
        The upstream's ``101`` head goes to the client as it came; then
        bytes pass both ways unchanged, and the upstream's close closes the
        client's connection with one access-log line.
        """
        h = self.harness()
        protocol, upstream = self.switched(h, b"\x81\x02hi")
        self.assertEqual(h.transport.value(), SWITCH + b"\x81\x02hi")
        h.send(b"\x81\x85mask!")
        self.assertEqual(upstream.value(), b"\x81\x85mask!")
        h.transport.clear()
        protocol.dataReceived(b"\x82\x00")
        self.assertEqual(h.transport.value(), b"\x82\x00")
        self.assertEqual(self.events, [])
        self.assertEqual(len(h.gateway.websockets.open), 1)
        protocol.connectionLost(Failure(ConnectionRefusedError()))
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(h.gateway.websockets.open, set())
        (event,) = self.events
        self.assertEqual(event["status"], 101)
        self.assertEqual(event["bytes_in"], 7)
        self.assertEqual(event["bytes_out"], 6)
        self.assertEqual(event["upstream_error"], "ws-upstream-closed")
        self.assertEqual(event["path"], "/build/ws")
        self.assertEqual(h.gateway.in_flight.count, 0)

    def test_client_closes(self) -> None:
        """
        The client's close closes the upstream's connection; the line says
        the client closed.
        """
        h = self.harness()
        _, upstream = self.switched(h)
        h.channel.connectionLost(Failure(ConnectionRefusedError()))
        self.assertTrue(upstream.disconnecting)
        (event,) = self.events
        self.assertEqual(event["upstream_error"], "ws-client-closed")

    def test_backpressure_through_channel(self) -> None:
        """
        Once joined, the client's connection is paced by the join: a full
        client pauses the upstream's reading, and a full upstream the
        client's.
        """
        h = self.harness()
        _, upstream = self.switched(h)
        h.transport.producer.pauseProducing()
        self.assertEqual(upstream.producerState, "paused")
        h.transport.producer.resumeProducing()
        self.assertEqual(upstream.producerState, "producing")
        upstream.producer.pauseProducing()
        self.assertFalse(h.reading)
        upstream.producer.resumeProducing()
        self.assertTrue(h.reading)

    def test_pipelined_bytes(self) -> None:
        """
        Bytes the client sent right behind the handshake reach the upstream
        once joined, after the upstream's head, never parsed as HTTP.
        """
        h = self.harness()
        h.send(
            handshake(b"/build/ws", b"Authorization: Bearer " + token().encode())
            + b"\x81\x80abcd"
        )
        (connection,) = self.endpoints.connections
        protocol, upstream = connection
        upstream.clear()
        protocol.dataReceived(SWITCH)
        self.assertEqual(upstream.value(), b"\x81\x80abcd")
        self.assertEqual(h.transport.value(), SWITCH)

    def test_idle_timeout(self) -> None:
        """
        ``websocket_idle_timeout`` closes a quiet join, and not the
        channel's own idle timeout.
        """
        h = self.harness(websocket_idle_timeout=500.0)
        protocol, upstream = self.switched(h)
        h.clock.advance(499)
        self.assertFalse(h.transport.disconnecting)
        h.clock.advance(1)
        self.assertTrue(h.transport.disconnecting)
        self.assertTrue(upstream.disconnecting)
        self.assertEqual(self.events[0]["upstream_error"], "ws-idle")

    def test_graceful_stop(self) -> None:
        """
        A graceful stop waits the drain timeout for a join, then closes it.
        """
        h = self.harness(drain_timeout=5.0)
        _, upstream = self.switched(h)
        stopping = h.gateway.service.stopService()
        assert stopping is not None
        h.clock.advance(4)
        self.assertFalse(h.transport.disconnecting)
        h.clock.advance(1)
        self.assertTrue(h.transport.disconnecting)
        self.assertTrue(upstream.disconnecting)
        self.successResultOf(stopping)
        self.assertEqual(self.events[0]["upstream_error"], "ws-stopped")

    def test_refused_upgrade(self) -> None:
        """
        Another answer than ``101`` is relayed as a normal answer (CORS
        added, body decoded and re-framed), and the connection carries on
        as HTTP.
        """
        h = self.harness()
        h.send(handshake(b"/build/ws", b"Authorization: Bearer " + token().encode()))
        protocol, upstream = self.upstream()[0], self.endpoints.connections[0][1]
        protocol.dataReceived(
            b"HTTP/1.1 426 Upgrade Required\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: text/plain\r\nConnection: close\r\n\r\n4\r\nnope\r\n0\r\n\r\n"
        )
        response = h.response()
        self.assertEqual(response.code, 426)
        self.assertEqual(response.body, b"nope")
        self.assertEqual(response.header(b"access-control-allow-origin"), b"*")
        self.assertIsNone(response.header(b"upgrade"))
        self.assertTrue(upstream.disconnecting)
        self.assertFalse(h.transport.disconnecting)
        h.transport.clear()
        h.send(b"GET /health HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
        self.assertEqual(h.response().code, 200)
        self.assertEqual(h.gateway.websockets.total, 0)

    def test_refused_with_length(self) -> None:
        """
        A refusal with a ``Content-Length`` body, in pieces, is relayed
        whole.
        """
        h = self.harness()
        h.send(handshake(b"/build/ws", b"Authorization: Bearer " + token().encode()))
        protocol, _ = self.upstream()
        protocol.dataReceived(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\n\r\nno")
        protocol.dataReceived(b" way")
        response = h.response()
        self.assertEqual((response.code, response.body), (403, b"no way"))

    def test_h2c_not_forwarded(self) -> None:
        """
        ``Upgrade: h2c`` is not forwarded: the request is proxied plain,
        without ``Upgrade``, its ``Connection`` or what that names.
        """
        h = self.harness()
        h.send(
            b"GET /kv/x HTTP/1.1\r\nHost: gateway.test\r\nUpgrade: h2c\r\n"
            b"Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
        )
        (call,) = h.agent.calls
        for name in (b"upgrade", b"connection", b"http2-settings"):
            self.assertFalse(call.headers.hasHeader(name), name)
        self.assertEqual(self.endpoints.uris, [])

    def test_upstream_refuses_connection(self) -> None:
        """
        An upstream that refuses the connection: ``502``.
        """
        h = self.harness()
        self.endpoints.refuse = True
        h.send(handshake(b"/build/ws", b"Authorization: Bearer " + token().encode()))
        response = h.response()
        self.assertEqual(response.code, 502)
        self.assertEqual(response.json()["code"], "UPSTREAM_UNAVAILABLE")

    def test_upstream_timeout(self) -> None:
        """
        An upstream that does not answer the handshake in time: ``504``,
        and its connection dropped.
        """
        h = self.harness(upstream_timeout=3.0)
        h.send(handshake(b"/build/ws", b"Authorization: Bearer " + token().encode()))
        _, upstream = self.endpoints.connections[0]
        h.clock.advance(3)
        self.assertEqual(h.response().code, 504)
        self.assertTrue(upstream.disconnecting)

    def test_malformed_answer(self) -> None:
        """
        An answer that is not HTTP: ``502``.
        """
        h = self.harness()
        h.send(handshake(b"/build/ws", b"Authorization: Bearer " + token().encode()))
        protocol, _ = self.upstream()
        protocol.dataReceived(b"SSH-2.0-OpenSSH\r\n\r\n")
        self.assertEqual(h.response().code, 502)

    def test_client_leaves_first(self) -> None:
        """
        A client gone before the upstream answers: the upstream's
        connection is dropped.
        """
        h = self.harness()
        h.send(handshake(b"/build/ws", b"Authorization: Bearer " + token().encode()))
        _, upstream = self.endpoints.connections[0]
        h.channel.connectionLost(Failure(ConnectionRefusedError()))
        self.assertTrue(upstream.disconnecting)

    def test_assertion(self) -> None:
        """
        With an assertion key, the handshake carries ``X-Gateway-Assertion``
        naming the upstream path, without the query.
        """
        h = self.harness(assertion_key_file=write_key(self))
        h.send(
            handshake(
                b"/build/ws?access_token=" + token().encode(),
            )
        )
        _, head = self.upstream()
        (line,) = [
            line
            for line in head.split(b"\r\n")
            if line.startswith(b"X-Gateway-Assertion: ")
        ]
        claims = jwt.decode(
            line.split(b": ", 1)[1], options={"verify_signature": False}
        )
        self.assertEqual(claims["path"], "/base/ws")
        self.assertEqual(claims["sub"], USERNAME)
        self.assertEqual(claims["aud"], "BUILD")
