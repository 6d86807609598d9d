"""
Tests for :mod:`metagateway.proxy.resource`: header rules both ways, the upstream
timeout, failures in the contract's JSON, backpressure and cancellation of
the answer, body limits, and the drain on stop. Driven through the
gateway's own channel over a ``StringTransport`` with a fake ``Agent`` and a
``MemoryReactorClock`` (see ``tests/test_streaming.py``).
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from OpenSSL import SSL
from service_identity import VerificationError
from treq.testing import RequestTraversalAgent
from zope.interface import directlyProvides

from twisted.internet.error import (
    ConnectError,
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
)
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from twisted.web.client import HTTPConnectionPool, ResponseNeverReceived
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.proxy import ReverseProxyResource
from twisted.web.resource import Resource

from metagateway import errors
from metagateway.auth.tokens import TokenAuthority
from metagateway.credentials.memory import MemoryCredentialStore
from metagateway.errors import new_request_id
from metagateway.gateway import Gateway, GatewayService
from metagateway.http.drain import InFlight
from metagateway.http.site import GatewaySite
from metagateway.proxy.headers import upstream_host
from metagateway.proxy.resource import (
    GatewayProxyResource,
    _Discard,
    _Watchdog,
    tls_problem,
)
from metagateway.routes import route_for
from metagateway.testing import (
    CLIENT,
    SECRET,
    SERVER,
    ChannelHarness,
    FakeResponse,
    ParsedResponse,
    chunk,
    make_config,
    parse_responses,
    post_head,
)
from metagateway.timers import SharedTimer


def get(path: bytes, headers: bytes = b"") -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: gateway.test\r\n" + headers + b"\r\n"


class LogCapture:
    """
    Collects log events while installed.
    """

    def __init__(self, case: SynchronousTestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)  # type: ignore[arg-type]
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)  # type: ignore[arg-type]

    def text(self) -> str:
        return "\n".join(formatEvent(event) for event in self.events)


class RequestHeaderTests(SynchronousTestCase):
    """
    What goes upstream: end-to-end headers, the gateway's own, never
    hop-by-hop ones.
    """

    def setUp(self) -> None:
        self.h = ChannelHarness()

    def sent(self, headers: bytes, path: bytes = b"/kv/a") -> Headers:
        self.h.send(get(path, headers))
        [call] = self.h.agent.calls
        return call.headers

    def test_hop_by_hop_dropped(self) -> None:
        """
        ``Connection`` and every header it names, ``Keep-Alive``, ``TE``,
        ``Trailer``, ``Upgrade``, ``Proxy-Authorization`` and
        ``Proxy-Connection`` never go upstream.
        """
        headers = self.sent(
            b"Connection: keep-alive, X-Private\r\nX-Private: secret\r\n"
            b"Keep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X-Sum\r\n"
            b"Upgrade: websocket\r\nProxy-Authorization: Basic eA==\r\n"
            b"Proxy-Connection: keep-alive\r\nX-Kept: yes\r\n"
        )
        for name in (
            b"connection",
            b"x-private",
            b"keep-alive",
            b"te",
            b"trailer",
            b"upgrade",
            b"proxy-authorization",
            b"proxy-connection",
            b"transfer-encoding",
        ):
            self.assertFalse(headers.hasHeader(name), name)
        self.assertEqual(headers.getRawHeaders(b"x-kept"), [b"yes"])

    def test_repeated_headers_kept(self) -> None:
        """
        A header sent several times goes upstream with all its values.
        """
        headers = self.sent(b"Accept: a/b\r\nAccept: c/d\r\nCookie: x=1\r\n")
        self.assertEqual(headers.getRawHeaders(b"accept"), [b"a/b", b"c/d"])

    def test_forwarded(self) -> None:
        """
        ``X-Forwarded-For`` gets the peer appended; ``-Proto`` and ``-Host``
        are the gateway's, whatever the client said; ``Host`` is the
        upstream's.
        """
        headers = self.sent(
            b"X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\n"
            b"X-Forwarded-Host: evil.test\r\n"
        )
        self.assertEqual(
            headers.getRawHeaders(b"x-forwarded-for"), [b"1.2.3.4, 10.0.0.7"]
        )
        self.assertEqual(headers.getRawHeaders(b"x-forwarded-proto"), [b"http"])
        self.assertEqual(headers.getRawHeaders(b"x-forwarded-host"), [b"gateway.test"])
        self.assertEqual(headers.getRawHeaders(b"host"), [b"kv.test"])

    def test_forwarded_proto_over_tls(self) -> None:
        """
        A client connected over TLS is forwarded as ``https``, on every
        request of its connection.
        """
        transport = StringTransport(hostAddress=SERVER, peerAddress=CLIENT)
        directlyProvides(transport, ISSLTransport)
        # ISSLTransport is an ITCPTransport, which the channel tunes.
        transport.setTcpNoDelay = lambda enabled: None  # type: ignore[attr-defined]
        channel = self.h.site.buildProtocol(CLIENT)
        channel.makeConnection(transport)
        channel.dataReceived(get(b"/kv/a") + get(b"/kv/b"))
        self.h.agent.calls[0].answer(FakeResponse(200, length=0)).finish()
        for call in self.h.agent.calls:
            self.assertEqual(
                call.headers.getRawHeaders(b"x-forwarded-proto"), [b"https"]
            )
        self.assertEqual(len(self.h.agent.calls), 2)

    def test_upstream_host(self) -> None:
        """
        The upstream's ``Host`` is what the ``Agent`` would send: the port
        only when not the scheme's default, IPv6 addresses in brackets.
        """
        self.assertEqual(upstream_host("http://kv.test"), b"kv.test")
        self.assertEqual(upstream_host("http://kv.test:80/base/"), b"kv.test")
        self.assertEqual(upstream_host("https://kv.test:443"), b"kv.test")
        self.assertEqual(upstream_host("https://kv.test:8443"), b"kv.test:8443")
        self.assertEqual(upstream_host("http://127.0.0.1:81"), b"127.0.0.1:81")
        self.assertEqual(upstream_host("http://[::1]:8080/x"), b"[::1]:8080")
        self.assertEqual(upstream_host("http://[::1]"), b"[::1]")

    def test_forwarded_for_alone(self) -> None:
        """
        Without an incoming ``X-Forwarded-For``, it is the peer.
        """
        headers = self.sent(b"")
        self.assertEqual(headers.getRawHeaders(b"x-forwarded-for"), [b"10.0.0.7"])

    def test_request_id_kept(self) -> None:
        """
        An incoming ``X-Request-Id`` goes upstream. The answer's headers are
        the upstream's: the gateway adds no ``X-Request-Id`` of its own.
        """
        headers = self.sent(b"X-Request-Id: abc-123\r\n")
        self.assertEqual(headers.getRawHeaders(b"x-request-id"), [b"abc-123"])
        self.h.agent.calls[0].answer(FakeResponse(200, length=0)).finish()
        self.assertIsNone(self.h.response().header(b"x-request-id"))

    def test_request_id_generated(self) -> None:
        """
        Without one, an id is made and sent upstream; an ``X-Request-Id``
        the upstream answers with comes back unchanged.
        """
        headers = self.sent(b"")
        [sent_id] = headers.getRawHeaders(b"x-request-id")  # type: ignore[misc]
        self.assertEqual(len(sent_id), 36)
        answer = Headers({b"X-Request-Id": [b"upstream-id"]})
        self.h.agent.calls[0].answer(FakeResponse(200, answer, length=0)).finish()
        self.assertEqual(self.h.response().header(b"x-request-id"), b"upstream-id")

    def test_gateway_headers(self) -> None:
        """
        Client ``X-Gateway-*`` and ``Authorization`` are dropped; the route
        is set.
        """
        headers = self.sent(b"X-Gateway-User: mallory\r\nX-Gateway-Route: CORE\r\n")
        self.assertIsNone(headers.getRawHeaders(b"x-gateway-user"))
        self.assertEqual(headers.getRawHeaders(b"x-gateway-route"), [b"KV"])


class ResponseHeaderTests(SynchronousTestCase):
    """
    What comes back: the upstream's status and end-to-end headers.
    """

    def setUp(self) -> None:
        self.h = ChannelHarness()
        self.h.send(get(b"/kv/a"))

    def answer(self, headers: dict[bytes, list[bytes]], **kw: Any) -> ParsedResponse:
        response = FakeResponse(headers=Headers(headers), **kw)
        self.h.agent.calls[0].answer(response)
        response.send(b"body")
        response.finish()
        return self.h.response()

    def test_hop_by_hop_dropped(self) -> None:
        """
        Hop-by-hop headers of the upstream never reach the client.
        """
        answer = self.answer(
            {
                b"Keep-Alive": [b"timeout=5"],
                b"Trailer": [b"X-Sum"],
                b"Upgrade": [b"h2c"],
                b"Proxy-Authenticate": [b"Basic"],
                b"X-End": [b"kept"],
            }
        )
        for name in (b"keep-alive", b"trailer", b"upgrade", b"proxy-authenticate"):
            self.assertIsNone(answer.header(name), name)
        self.assertEqual(answer.header(b"x-end"), b"kept")

    def test_repeated_headers_kept(self) -> None:
        """
        Every ``Set-Cookie`` comes back.
        """
        answer = self.answer({b"Set-Cookie": [b"a=1", b"b=2"]})
        self.assertEqual(answer.headers.getRawHeaders(b"set-cookie"), [b"a=1", b"b=2"])

    def test_status_and_length(self) -> None:
        """
        The upstream's status, reason and length come back unchanged.
        """
        answer = self.answer({}, code=418, phrase=b"Teapot", length=4)
        self.assertEqual((answer.code, answer.body), (418, b"body"))
        self.assertEqual(answer.header(b"content-length"), b"4")
        self.assertIn(b"418 Teapot", self.h.transport.value())

    def test_no_body_codes_without_length(self) -> None:
        """
        A ``204`` or ``304`` comes back without a ``Content-Length`` (a 204
        may not carry one; a 304's would describe another body) and without
        a body, as the upstream sent it.
        """
        for code in (204, 304):
            self.setUp()
            headers = Headers({b"ETag": [b'"v1"']})
            self.h.agent.calls[0].answer(
                FakeResponse(code, headers=headers, length=0)
            ).finish()
            wire = self.h.transport.value()
            self.assertTrue(wire.startswith(b"HTTP/1.1 %d " % (code,)), wire)
            head, _, body = wire.partition(b"\r\n\r\n")
            self.assertNotIn(b"content-length", head.lower())
            self.assertNotIn(b"transfer-encoding", head.lower())
            self.assertIn(b'ETag: "v1"', head)
            self.assertEqual(body, b"")

    def test_cors_added_or_kept(self) -> None:
        """
        ``Access-Control-Allow-Origin: *`` is added when missing; the
        upstream's own is kept, never doubled.
        """
        answer = self.answer({b"Access-Control-Allow-Origin": [b"https://a.test"]})
        self.assertEqual(
            answer.headers.getRawHeaders(b"access-control-allow-origin"),
            [b"https://a.test"],
        )

    def test_unknown_length_chunked(self) -> None:
        """
        An answer of unknown length goes to an HTTP/1.1 client chunked, and
        its end is marked.
        """
        answer = self.answer({})
        self.assertEqual(answer.header(b"transfer-encoding"), b"chunked")
        self.assertTrue(answer.complete)
        self.assertEqual(answer.body, b"body")


class FailureTests(SynchronousTestCase):
    """
    Upstream failures answer in the contract's JSON, or close the client's
    connection once the answer has started.
    """

    def setUp(self) -> None:
        self.h = ChannelHarness(upstream_timeout=5.0)
        self.log = LogCapture(self)

    def error(self, status: int, code: str) -> None:
        answer = self.h.response()
        self.assertEqual(answer.code, status, answer.body)
        document = answer.json()
        self.assertEqual((document["code"], document["route"]), (code, "KV"))
        self.assertEqual(answer.header(b"content-type"), b"application/json")
        self.assertEqual(answer.header(b"access-control-allow-origin"), b"*")
        # The id sent upstream comes back with the error too.
        [sent_id] = self.h.agent.calls[0].headers.getRawHeaders(b"x-request-id")  # type: ignore[misc]
        self.assertEqual(answer.header(b"x-request-id"), sent_id)

    def test_refused(self) -> None:
        """
        A refused connection: ``502 UPSTREAM_UNAVAILABLE``.
        """
        self.h.send(get(b"/kv/a"))
        self.h.agent.calls[0].fail(ConnectionRefusedError())
        self.error(502, "UPSTREAM_UNAVAILABLE")

    def test_reset_before_answer(self) -> None:
        """
        A connection lost before any answer: ``502 UPSTREAM_UNAVAILABLE``.
        """
        self.h.send(get(b"/kv/a"))
        self.h.agent.calls[0].fail(
            ResponseNeverReceived([Failure(ConnectionDone("reset"))])
        )
        self.error(502, "UPSTREAM_UNAVAILABLE")
        self.assertIn("reset", self.log.text())

    def test_no_headers_in_time(self) -> None:
        """
        No answer within the upstream timeout: the call is cancelled and
        the client gets ``504 UPSTREAM_TIMEOUT``.
        """
        self.h.send(get(b"/kv/a"))
        self.h.clock.advance(4.9)
        self.assertEqual(self.h.responses(), [])
        self.h.clock.advance(0.2)
        self.assertTrue(self.h.agent.calls[0].cancelled)
        self.error(504, "UPSTREAM_TIMEOUT")

    def test_timeout_counts_from_end_of_body(self) -> None:
        """
        While the client is still sending its body at its own pace, the
        upstream is not timed; once the body is all sent, it is.
        """
        self.h.send(post_head(b"/kv/a", 4))
        call = self.h.agent.calls[0]
        call.start_body()
        self.h.clock.advance(20)
        self.h.send(b"ab")
        self.h.clock.advance(20)
        self.assertFalse(call.cancelled)
        self.h.send(b"cd")
        self.h.clock.advance(5.1)
        self.assertTrue(call.cancelled)
        self.error(504, "UPSTREAM_TIMEOUT")

    def test_upstream_stalls_on_body(self) -> None:
        """
        An upstream that stops taking the body for longer than the timeout:
        ``504``; the upload is dropped, never completed upstream.
        """
        self.h.send(post_head(b"/kv/a", 100))
        call = self.h.agent.calls[0]
        producing = call.start_body()
        self.h.send(b"x" * 10)
        call.body.pauseProducing()  # type: ignore[union-attr]
        self.h.clock.advance(5.1)
        self.failureResultOf(producing)
        self.error(504, "UPSTREAM_TIMEOUT")
        self.assertEqual(self.h.response().header(b"connection"), b"close")

    def test_no_timeout_when_zero(self) -> None:
        """
        ``--upstream-timeout 0`` waits forever.
        """
        h = ChannelHarness(upstream_timeout=0.0)
        h.send(get(b"/kv/a"))
        h.clock.advance(10_000)
        self.assertFalse(h.agent.calls[0].cancelled)

    def test_tls_failure(self) -> None:
        """
        A failed TLS verification: ``502``, and a log line that says it was
        TLS and names the upstream.
        """
        h = ChannelHarness(services={"KV": "https://kv.test"})
        h.send(get(b"/kv/a"))
        h.agent.calls[0].fail(
            ResponseNeverReceived(
                [
                    Failure(
                        SSL.Error([("SSL routines", "", "certificate verify failed")])
                    )
                ]
            )
        )
        self.assertEqual(h.response().code, 502)
        text = self.log.text()
        self.assertIn("TLS with upstream KV (https://kv.test) failed", text)
        self.assertIn("certificate verify failed", text)
        self.assertIn("certificate was not accepted", text)

    def test_tls_problems(self) -> None:
        """
        The TLS log line says which side refused: the upstream's
        certificate (untrusted, or for another host), or the upstream
        refusing the handshake (no client certificate it trusts).
        """
        alert = SSL.Error([("SSL routines", "", "tlsv13 alert certificate required")])
        self.assertIn("--upstream-client-cert", tls_problem(alert))
        untrusted = SSL.Error([("SSL routines", "", "certificate verify failed")])
        self.assertIn("--upstream-ca", tls_problem(untrusted))
        self.assertIn("not for this host", tls_problem(VerificationError(errors=[])))
        self.assertEqual(tls_problem(SSL.Error([])), "the TLS handshake failed")

    def test_connect_error(self) -> None:
        """
        Any other connection failure: ``502``.
        """
        self.h.send(get(b"/kv/a"))
        self.h.agent.calls[0].fail(ConnectError("no route"))
        self.error(502, "UPSTREAM_UNAVAILABLE")

    def test_dies_mid_body(self) -> None:
        """
        An upstream that dies mid-body: what came is flushed, the client's
        connection closed, and its chunked answer never gets its last
        chunk.
        """
        self.h.send(get(b"/kv/a"))
        response = self.h.agent.calls[0].answer()
        response.send(b"partial")
        response.break_off()
        self.assertTrue(self.h.transport.disconnecting)
        [answer] = self.h.responses()
        self.assertEqual(answer.body, b"partial")
        self.assertFalse(answer.complete)
        self.assertIn("failed mid-body", self.log.text())

    def test_dies_mid_body_with_length(self) -> None:
        """
        With a declared length, the client sees fewer bytes and a closed
        connection, never a short body that looks whole.
        """
        self.h.send(get(b"/kv/a"))
        response = self.h.agent.calls[0].answer(FakeResponse(length=100))
        response.send(b"partial")
        response.break_off()
        self.assertTrue(self.h.transport.disconnecting)
        self.assertFalse(self.h.response().complete)

    def test_dies_mid_body_http10(self) -> None:
        """
        For an HTTP/1.0 client, whose answer of unknown length ends with the
        connection, the connection is reset: a clean close would make the
        truncated body look complete.
        """
        self.h.send(b"GET /kv/a HTTP/1.0\r\nHost: gateway.test\r\n\r\n")
        response = self.h.agent.calls[0].answer()
        response.send(b"partial")
        response.break_off()
        self.assertTrue(self.h.transport.disconnected)

    def test_close_delimited_body(self) -> None:
        """
        A body that ends with its connection (no length) ends normally.
        """
        self.h.send(get(b"/kv/a"))
        response = self.h.agent.calls[0].answer()
        response.send(b"all")
        response.protocol.connectionLost(Failure(PotentialDataLoss()))
        answer = self.h.response()
        self.assertTrue(answer.complete)
        self.assertFalse(self.h.transport.disconnected)

    def test_unsendable_target(self) -> None:
        """
        A target the upstream request cannot carry (bytes over 0x7e):
        ``400``, nothing sent.
        """
        self.h.send(get(b"/kv/\x80"))
        answer = self.h.response()
        self.assertEqual((answer.code, answer.json()["code"]), (400, "BAD_REQUEST"))
        self.assertEqual(self.h.agent.calls, [])


class BackpressureTests(SynchronousTestCase):
    """
    The answer flows at the client's pace, and a client that leaves stops
    the upstream.
    """

    def setUp(self) -> None:
        self.h = ChannelHarness()
        self.h.send(get(b"/kv/big"))
        self.call = self.h.agent.calls[0]

    def test_slow_client_pauses_upstream(self) -> None:
        """
        When the client's connection is full, reading from the upstream
        pauses; it resumes when the client catches up.
        """
        response = self.call.answer()
        response.send(b"x" * 1000)
        self.h.channel.pauseProducing()
        self.assertEqual(response.transport.producerState, "paused")
        self.h.channel.resumeProducing()
        self.assertEqual(response.transport.producerState, "producing")

    def test_client_gone_mid_answer(self) -> None:
        """
        A client that disconnects mid-answer stops the upstream connection
        (it is not returned to the pool half-read).
        """
        response = self.call.answer()
        response.send(b"x" * 1000)
        self.h.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(response.transport.producerState, "stopped")
        response.break_off()
        self.assertFalse(self.h.transport.disconnected)

    def test_client_gone_before_answer(self) -> None:
        """
        A client that disconnects before the answer cancels the upstream
        call.
        """
        self.h.channel.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(self.call.cancelled)

    def test_answer_too_late(self) -> None:
        """
        An answer arriving after the gateway gave up has its connection
        dropped at once.
        """
        h = ChannelHarness(upstream_timeout=1.0)
        h.send(get(b"/kv/a"))
        call = h.agent.calls[0]
        h.clock.advance(2)
        self.assertEqual(h.response().code, 504)
        # A racing answer (the fake's Deferred is already cancelled, so
        # hand it to the relay's stand-in directly).
        response = FakeResponse()
        response.deliverBody(_Discard())
        self.assertEqual(response.transport.producerState, "stopped")
        self.assertTrue(call.cancelled)


class BodyLimitTests(SynchronousTestCase):
    """
    ``--max-body`` on proxied routes.
    """

    def setUp(self) -> None:
        self.h = ChannelHarness(max_body=10)

    def test_declared_over_limit(self) -> None:
        """
        A declared length over the limit: ``413`` before the upstream is
        called.
        """
        self.h.send(post_head(b"/kv/a", 11))
        answer = self.h.response()
        self.assertEqual(
            (answer.code, answer.json()["code"]), (413, "PAYLOAD_TOO_LARGE")
        )
        self.assertEqual(answer.json()["details"], {"limit": 10})
        self.assertEqual(self.h.agent.calls, [])

    def test_chunked_over_limit(self) -> None:
        """
        A chunked body going past the limit: the upstream call is cancelled
        (its body never completes) and the client gets ``413``.
        """
        self.h.send(post_head(b"/kv/a"))
        call = self.h.agent.calls[0]
        producing = call.start_body()
        self.h.send(chunk(b"x" * 8))
        self.h.send(chunk(b"x" * 8))
        self.assertTrue(call.cancelled)
        self.failureResultOf(producing)
        answer = self.h.response()
        self.assertEqual(answer.code, 413)
        self.assertEqual(answer.header(b"connection"), b"close")

    def test_within_limit(self) -> None:
        """
        A body at the limit goes through.
        """
        self.h.send(post_head(b"/kv/a", 10) + b"x" * 10)
        call = self.h.agent.calls[0]
        self.successResultOf(call.start_body())
        self.assertEqual(call.consumer.body(), b"x" * 10)


class DrainTests(SynchronousTestCase):
    """
    The drain on stop: requests in flight get a bounded time to finish,
    then the pool's idle connections are closed.
    """

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.in_flight = InFlight()
        self.pool = HTTPConnectionPool(self.clock)
        self.service = GatewayService(self.pool, self.in_flight, self.clock, 10.0)
        self.service.startService()

    def test_nothing_in_flight(self) -> None:
        """
        With nothing in flight, stopping is immediate.
        """
        self.successResultOf(self.service.stopService())  # type: ignore[arg-type]

    def test_pool_timer(self) -> None:
        """
        The gateway's pool expires idle connections on a shared timer of
        the pool's timeout, whose reactor timer is cancelled once the pool
        is closed.
        """
        h = ChannelHarness()
        timer = h.gateway.pool_timer
        self.assertEqual(timer.delay, h.gateway.pool.cachedConnectionTimeout)
        # The clock the pool was given (its ``reactor`` argument).
        self.assertIs(h.gateway.pool._reactor, timer)
        before = len(h.clock.getDelayedCalls())
        timer.callLater(timer.delay, lambda: None).cancel()
        self.assertEqual(len(h.clock.getDelayedCalls()), before + 1)
        service = h.gateway.service
        service.startService()
        self.successResultOf(service.stopService())  # type: ignore[arg-type]
        self.assertEqual(len(h.clock.getDelayedCalls()), before)

    def test_waits_for_requests(self) -> None:
        """
        Stopping waits until the requests in flight finish.
        """
        h = ChannelHarness()
        service = h.gateway.service
        service.startService()
        h.send(get(b"/kv/a"))
        stopped = service.stopService()
        h.clock.advance(1)
        self.assertNoResult(stopped)
        h.agent.calls[0].answer(FakeResponse(200, length=0)).finish()
        self.successResultOf(stopped)  # type: ignore[arg-type]
        self.assertEqual(h.response().code, 200)

    def test_bounded(self) -> None:
        """
        Stopping waits at most the drain period.
        """
        h = ChannelHarness(drain_timeout=3.0)
        service = h.gateway.service
        service.startService()
        h.send(get(b"/kv/a"))
        stopped = service.stopService()
        h.clock.advance(2.9)
        self.assertNoResult(stopped)
        h.clock.advance(0.2)
        self.successResultOf(stopped)  # type: ignore[arg-type]

    def test_password_pool_runs_with_service(self) -> None:
        """
        The gateway's password pool starts with its service and stops
        only once the drain is over.
        """
        h = ChannelHarness()
        service = h.gateway.service
        pool = h.gateway.passwords.pool
        self.assertFalse(pool.started)
        service.startService()
        self.addCleanup(h.gateway.passwords.stop)
        self.assertTrue(pool.started)
        h.send(get(b"/kv/a"))
        stopped = service.stopService()
        self.assertTrue(pool.started)
        h.agent.calls[0].answer(FakeResponse(200, length=0)).finish()
        self.successResultOf(stopped)  # type: ignore[arg-type]
        self.assertFalse(pool.started)

    def test_answers_during_drain_close(self) -> None:
        """
        Answers finished while draining close their connection.
        """
        h = ChannelHarness()
        h.gateway.service.startService()
        h.send(get(b"/kv/a"))
        h.gateway.service.stopService()
        h.agent.calls[0].answer(FakeResponse(200, length=0)).finish()
        self.assertEqual(h.response().header(b"connection"), b"close")


class RequestIdTests(SynchronousTestCase):
    """
    Fresh request ids are version 4 UUIDs.
    """

    def test_new_request_id_is_uuid4(self) -> None:
        """
        ``new_request_id`` gives distinct version 4, RFC 4122 variant UUIDs
        in their canonical text form.
        """
        seen = set()
        # More than one block of random bytes.
        for _ in range(600):
            value = new_request_id()
            parsed = uuid.UUID(value)
            self.assertEqual(str(parsed), value)
            self.assertEqual(parsed.version, 4)
            self.assertEqual(parsed.variant, uuid.RFC_4122)
            seen.add(value)
        self.assertEqual(len(seen), 600)

    def test_fork_forgets_block(self) -> None:
        """
        A forked child reads its own random bytes: the block read before
        the fork is dropped in the child, never reused.
        """
        if not hasattr(os, "fork"):
            raise SkipTest("no fork")
        new_request_id()
        before = errors._random_bytes.block
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child)
            try:
                os.write(write, b"1" if errors._random_bytes.block == b"" else b"0")
            finally:
                os._exit(0)
        os.close(write)
        self.addCleanup(os.close, read)
        os.waitpid(pid, 0)
        self.assertEqual(os.read(read, 1), b"1")
        self.assertEqual(errors._random_bytes.block, before)


class WatchdogTests(SynchronousTestCase):
    """
    The proxy's watchdogs: one reactor timer for a resource's upstream
    deadlines, each firing when a timer of its own would.
    """

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.deadlines = SharedTimer(self.clock, 5.0)
        self.expired: list[str] = []

    def watchdog(self, name: str) -> Any:
        return _Watchdog(self.deadlines, lambda: self.expired.append(name))

    def test_in_order_on_time(self) -> None:
        """
        Watchdogs armed at different times expire at their own deadlines,
        in order, with one timer pending at a time.
        """
        first = self.watchdog("first")
        first.arm()
        self.clock.advance(1)
        second = self.watchdog("second")
        second.arm()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(3.9)
        self.assertEqual(self.expired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.expired, ["first"])
        self.assertTrue(first.fired)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0.9)
        self.assertEqual(self.expired, ["first"])
        self.clock.advance(0.1)
        self.assertEqual(self.expired, ["first", "second"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopped_never_fires(self) -> None:
        """
        A stopped (or disarmed) watchdog never expires; the next one still
        does, on time; one armed again counts from its new arming.
        """
        first, second, third = (self.watchdog(n) for n in ("1", "2", "3"))
        first.arm()
        second.arm()
        third.arm()
        first.stop()
        third.disarm()
        self.clock.advance(2)
        third.arm()
        self.clock.advance(3)
        self.assertEqual(self.expired, ["2"])
        self.assertEqual(len(self.deadlines), 1)
        self.clock.advance(2)
        self.assertEqual(self.expired, ["2", "3"])
        self.assertEqual(len(self.deadlines), 0)
        self.assertFalse(first.fired)

    def test_arm_twice_keeps_deadline(self) -> None:
        """
        Arming a running watchdog again changes nothing.
        """
        watchdog = self.watchdog("w")
        watchdog.arm()
        self.clock.advance(3)
        watchdog.arm()
        self.clock.advance(2)
        self.assertEqual(self.expired, ["w"])

    def test_expiry_may_arm_another(self) -> None:
        """
        An expiry callback that arms another watchdog does not upset the
        sweep.
        """
        later = self.watchdog("later")
        first = self.watchdog("first")
        first.expired = lambda: (self.expired.append("first"), later.arm())  # type: ignore[func-returns-value]
        first.arm()
        self.clock.advance(5)
        self.assertEqual(self.expired, ["first"])
        self.clock.advance(5)
        self.assertEqual(self.expired, ["first", "later"])

    def test_zero_seconds_never_arms(self) -> None:
        """
        A watchdog without a limit never waits.
        """
        watchdog = _Watchdog(SharedTimer(self.clock, 0), lambda: None)
        watchdog.arm()
        self.assertEqual(len(watchdog.timer), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RealClientHarness:
    """
    A gateway served over a ``StringTransport``, whose ``KV`` upstream is
    reached through its own pooled client (Twisted's HTTP/1.1 client
    protocol) over another ``StringTransport``: what the upstream says is
    parsed as on a real connection.
    """

    def __init__(self) -> None:
        self.clock = MemoryReactorClock()
        self.gateway = Gateway(
            make_config(services={"KV": "http://127.0.0.1:8080"}),
            self.clock,
            store=MemoryCredentialStore([]),
            access_log=None,
        )
        site = GatewaySite(self.gateway.resource, reactor=self.clock)
        self.channel = site.buildProtocol(CLIENT)
        self.client = StringTransport(hostAddress=SERVER, peerAddress=CLIENT)
        self.channel.makeConnection(self.client)
        self.upstream: Any = None
        self.upstream_transport = StringTransport()

    def ask(self, request: bytes) -> None:
        """
        Send ``request`` to the gateway and connect its upstream call.
        """
        self.channel.dataReceived(request)
        [(_, _, factory, _, _)] = self.clock.tcpClients
        self.upstream = factory.buildProtocol(None)
        self.upstream.makeConnection(self.upstream_transport)
        assert self.upstream_transport.value().startswith(b"GET /x HTTP/1.1\r\n")

    def answer(self, data: bytes) -> None:
        """
        The upstream sends ``data``.
        """
        self.upstream.dataReceived(data)

    def upstream_lost(self, reason: BaseException) -> None:
        """
        The upstream connection ends, for ``reason``.
        """
        self.upstream.connectionLost(Failure(reason))


#: An answer framed by the end of its connection (no length, not chunked).
CLOSE_DELIMITED = b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nhello"


class CloseDelimitedTests(SynchronousTestCase):
    """
    An upstream answer whose body ends with its connection is complete
    when the upstream closes the connection, and truncated (never passed on
    as complete) when the connection is reset.
    """

    def setUp(self) -> None:
        self.harness = RealClientHarness()
        self.logs = LogCapture(self)

    def test_closed_is_complete(self) -> None:
        """
        Closed by the upstream: the client's chunked answer ends with its
        last chunk, and its connection stays open.
        """
        h = self.harness
        h.ask(get(b"/kv/x"))
        h.answer(CLOSE_DELIMITED)
        h.upstream_lost(ConnectionDone())
        [response] = parse_responses(h.client.value())
        self.assertEqual((response.code, response.body), (200, b"hello"))
        self.assertTrue(response.complete)
        self.assertFalse(h.client.disconnecting)

    def test_reset_is_truncated(self) -> None:
        """
        Reset: the client's chunked answer lacks its last chunk and its
        connection is closed; the log says why.
        """
        h = self.harness
        h.ask(get(b"/kv/x"))
        h.answer(CLOSE_DELIMITED)
        h.upstream_lost(ConnectionLost("Connection reset by peer"))
        [response] = parse_responses(h.client.value())
        self.assertEqual((response.code, response.body), (200, b"hello"))
        self.assertFalse(response.complete)
        self.assertNotIn(b"0\r\n\r\n", h.client.value())
        self.assertTrue(h.client.disconnecting)
        self.assertIn("failed mid-body", self.logs.text())
        self.assertIn("Connection reset by peer", self.logs.text())

    def test_reset_http10_aborts(self) -> None:
        """
        Reset, for an HTTP/1.0 client whose answer also ends with its
        connection: the client's connection is aborted, not closed.
        """
        h = self.harness
        h.ask(b"GET /kv/x HTTP/1.0\r\n\r\n")
        h.answer(CLOSE_DELIMITED)
        h.upstream_lost(ConnectionLost("Connection reset by peer"))
        self.assertTrue(h.client.disconnected)

    def test_closed_http10_ends_cleanly(self) -> None:
        """
        Closed, for an HTTP/1.0 client: its connection is closed (the end
        of the answer), not aborted.
        """
        h = self.harness
        h.ask(b"GET /kv/x HTTP/1.0\r\n\r\n")
        h.answer(CLOSE_DELIMITED)
        h.upstream_lost(ConnectionDone())
        self.assertTrue(h.client.value().endswith(b"\r\n\r\nhello"))
        self.assertTrue(h.client.disconnecting)
        self.assertFalse(h.client.disconnected)


class ConnectionNamedHeadersTests(SynchronousTestCase):
    """
    Headers the upstream's answer names in its ``Connection`` header are
    hop-by-hop (RFC 9110 §7.6.1): not passed to the client.
    """

    def test_named_headers_dropped(self) -> None:
        """
        ``Connection: X-Secret, keep-alive``: ``X-Secret`` and
        ``Connection`` stay behind; the other headers come through.
        """
        h = RealClientHarness()
        h.ask(get(b"/kv/x"))
        h.answer(
            b"HTTP/1.1 200 OK\r\nConnection: X-Secret, keep-alive\r\n"
            b"X-Secret: 1\r\nX-Kept: 2\r\nContent-Length: 2\r\n\r\nok"
        )
        [response] = parse_responses(h.client.value())
        self.assertEqual((response.code, response.body), (200, b"ok"))
        self.assertIsNone(response.header(b"x-secret"))
        self.assertIsNone(response.header(b"connection"))
        self.assertEqual(response.header(b"x-kept"), b"2")


class StockBaseTests(SynchronousTestCase):
    """
    :class:`GatewayProxyResource` is a ``ReverseProxyResource`` whose
    description of the upstream is the service URL's.
    """

    def make(self, base_url: Any) -> GatewayProxyResource:
        clock = MemoryReactorClock()
        return GatewayProxyResource(
            route_for([b"build"]),  # type: ignore[arg-type]
            base_url,
            RequestTraversalAgent(Resource()),
            TokenAuthority(SECRET, clock.seconds),
            clock,
        )

    def test_upstream_described(self) -> None:
        """
        ``host``, ``port`` and ``path`` are the service URL's (the path
        without its trailing slash), ``reactor`` the clock.
        """
        proxy = self.make("https://build.internal:8443/api/v1/")
        self.assertIsInstance(proxy, ReverseProxyResource)
        self.assertEqual(
            (proxy.host, proxy.port, proxy.path),
            ("build.internal", 8443, b"/api/v1"),
        )
        self.assertIs(proxy.reactor, proxy.clock)

    def test_default_ports(self) -> None:
        """
        Without a port, the scheme's default is the port.
        """
        self.assertEqual(self.make("http://kv.internal").port, 80)
        self.assertEqual(self.make("https://kv.internal").port, 443)

    def test_child_is_self(self) -> None:
        """
        Unlike the stock class, no new resource is made per segment.
        """
        proxy = self.make("http://build.internal")
        self.assertIs(proxy.getChild(b"x", None), proxy)  # type: ignore[arg-type]
