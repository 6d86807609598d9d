"""
Tests for :mod:`metagateway.http.body`, :mod:`metagateway.http.channel` and
:mod:`metagateway.http.request`: the streaming request body, and the
gateway's channel and request (early routing, flow control both ways, caps,
framing, header limits, graceful close), driven through fake transports and
a fake upstream ``Agent`` on a ``MemoryReactorClock``.

The fakes are in :mod:`metagateway.testing`.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import HTTPChannel, datetimeToString
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.server import version as server_version
from twisted.web.test.requesthelper import DummyChannel, DummyRequest

from metagateway.http.body import BodyListener, BodyTooLarge, StreamingBody
from metagateway.http.channel import GatewayChannel
from metagateway.http.request import when_done
from metagateway.http.site import GatewayRequest, GatewaySite, HTTPDate
from metagateway.testing import (
    CLIENT,
    PASSWORD,
    SERVER,
    USERNAME,
    ChannelHarness,
    FakeResponse,
    RecordingConsumer,
    chunk,
    parse_responses,
    post_head,
)


class Listener(BodyListener):
    """
    Records what a body tells its listener.
    """

    def __init__(self) -> None:
        self.events: list[str] = []

    def upstream_waiting(self) -> None:
        self.events.append("waiting")

    def upstream_reading(self) -> None:
        self.events.append("reading")

    def body_too_large(self) -> None:
        self.events.append("too large")


class StreamingBodyTests(SynchronousTestCase):
    """
    :class:`StreamingBody` between a client (pause/resume callbacks) and
    the upstream (an ``IConsumer`` that pauses it).
    """

    def setUp(self) -> None:
        self.client: list[str] = []
        self.body = StreamingBody(
            None,
            lambda: self.client.append("pause"),
            lambda: self.client.append("resume"),
        )
        self.listener = Listener()
        self.body.listener = self.listener
        self.consumer = RecordingConsumer()

    def test_length(self) -> None:
        """
        A declared length is the body's length; a chunked body's is unknown.
        """
        self.assertIs(self.body.length, UNKNOWN_LENGTH)
        sized = StreamingBody(10, lambda: None, lambda: None)
        self.assertEqual(sized.length, 10)

    def test_client_held_until_upstream_starts(self) -> None:
        """
        Reading from the client pauses until the upstream takes the body;
        what arrived meanwhile is written first, then reading resumes.
        """
        self.assertEqual(self.client, ["pause"])
        self.body.feed(b"early")
        self.assertEqual(self.client[-1], "pause")
        d = self.body.startProducing(self.consumer)
        self.assertEqual(self.consumer.data, [b"early"])
        self.assertEqual(self.client[-1], "resume")
        self.assertNoResult(d)
        self.assertEqual(self.listener.events, ["reading"])

    def test_pieces_pass_through_as_they_arrive(self) -> None:
        """
        Each piece fed goes to the upstream at once; the Deferred fires
        when the client's body ends.
        """
        d = self.body.startProducing(self.consumer)
        self.body.feed(b"one")
        self.assertEqual(self.consumer.data, [b"one"])
        self.body.feed(b"two")
        self.assertEqual(self.consumer.data, [b"one", b"two"])
        self.assertNoResult(d)
        self.body.end()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.body.received, 6)
        self.assertEqual(self.listener.events, ["reading", "waiting"])

    def test_upstream_pause_pauses_client(self) -> None:
        """
        When the upstream pauses the body, reading from the client pauses;
        when it resumes, reading resumes.
        """
        self.body.startProducing(self.consumer)
        del self.client[:]
        self.body.pauseProducing()
        self.assertEqual(self.client, ["pause"])
        self.body.resumeProducing()
        self.assertEqual(self.client, ["pause", "resume"])
        self.assertEqual(self.listener.events, ["reading", "waiting", "reading"])

    def test_data_while_paused_pauses_again(self) -> None:
        """
        Data that still arrives while the upstream is paused (someone else
        resumed reading) is written, and the client is paused again.
        """
        self.body.startProducing(self.consumer)
        self.body.pauseProducing()
        del self.client[:]
        self.body.feed(b"late")
        self.assertEqual(self.consumer.data, [b"late"])
        self.assertEqual(self.client, ["pause"])

    def test_complete_before_start(self) -> None:
        """
        A body complete before the upstream starts is written whole and the
        Deferred fires at once.
        """
        self.body.feed(b"all")
        self.body.end()
        d = self.body.startProducing(self.consumer)
        self.assertEqual(self.consumer.body(), b"all")
        self.assertIsNone(self.successResultOf(d))

    def test_fail_errbacks(self) -> None:
        """
        A body that cannot complete fails the Deferred, so the ``Agent``
        drops the upstream connection; later data is dropped.
        """
        d = self.body.startProducing(self.consumer)
        self.body.fail(Failure(ConnectionDone()))
        self.failureResultOf(d, ConnectionDone)
        self.body.feed(b"more")
        self.assertEqual(self.consumer.data, [])

    def test_fail_before_start(self) -> None:
        """
        A body that failed before the upstream started fails at once.
        """
        self.body.fail(Failure(ConnectionDone()))
        self.failureResultOf(self.body.startProducing(self.consumer), ConnectionDone)

    def test_limit(self) -> None:
        """
        Past its limit the body tells its listener, fails, and writes
        nothing more.
        """
        self.body.limit = 5
        d = self.body.startProducing(self.consumer)
        self.body.feed(b"12345")
        self.body.feed(b"6")
        self.assertEqual(self.consumer.data, [b"12345"])
        self.assertIn("too large", self.listener.events)
        self.failureResultOf(d, BodyTooLarge)

    def test_stop_producing(self) -> None:
        """
        After ``stopProducing`` the Deferred never fires and data is
        dropped.
        """
        d = self.body.startProducing(self.consumer)
        self.body.stopProducing()
        self.body.feed(b"x")
        self.body.end()
        self.assertNoResult(d)
        self.assertEqual(self.consumer.data, [])

    def test_cancel(self) -> None:
        """
        Cancelling the Deferred stops the body.
        """
        d = self.body.startProducing(self.consumer)
        d.cancel()
        self.failureResultOf(d)
        self.assertTrue(self.body.stopped)

    def test_abandon(self) -> None:
        """
        Abandoning an incomplete body fails it; a complete one is left be.
        """
        d = self.body.startProducing(self.consumer)
        self.body.abandon()
        self.failureResultOf(d)
        done = StreamingBody(1, lambda: None, lambda: None)
        done.feed(b"x")
        done.end()
        done.abandon()
        self.successResultOf(done.startProducing(RecordingConsumer()))


class EarlyRoutingTests(SynchronousTestCase):
    """
    A proxied request is dispatched once its headers are in, and its body
    streams upstream with flow control both ways.
    """

    def setUp(self) -> None:
        self.h = ChannelHarness()

    def test_dispatched_before_body(self) -> None:
        """
        The upstream is called as soon as the headers are in, before any
        of the body has arrived, and the client waits (not read) until the
        upstream takes the body.
        """
        self.h.send(post_head(b"/kv/items?x=1", 10))
        [call] = self.h.agent.calls
        self.assertEqual(call.method, b"POST")
        self.assertEqual(call.uri, b"http://kv.test/items?x=1")
        self.assertEqual(call.body.length, 10)  # type: ignore[union-attr]
        self.assertFalse(self.h.reading)
        call.start_body()
        self.assertTrue(self.h.reading)

    def test_body_flows_as_it_arrives(self) -> None:
        """
        Each piece of a ``Content-Length`` body reaches the upstream when
        it arrives; the upstream's answer is relayed once it is all sent.
        """
        self.h.send(post_head(b"/kv/items", 10))
        [call] = self.h.agent.calls
        producing = call.start_body()
        self.h.send(b"01234")
        self.assertEqual(call.consumer.body(), b"01234")
        self.assertNoResult(producing)
        self.h.send(b"56789")
        self.assertEqual(call.consumer.body(), b"0123456789")
        self.successResultOf(producing)
        response = call.answer(FakeResponse(201, length=2))
        response.send(b"ok")
        response.finish()
        answer = self.h.response()
        self.assertEqual((answer.code, answer.body), (201, b"ok"))
        self.assertIsNone(answer.header(b"connection"))

    def test_chunked_body(self) -> None:
        """
        A chunked body streams with an unknown length, piece by piece.
        """
        self.h.send(post_head(b"/kv/items"))
        [call] = self.h.agent.calls
        self.assertIs(call.body.length, UNKNOWN_LENGTH)  # type: ignore[union-attr]
        producing = call.start_body()
        self.h.send(chunk(b"hello "))
        self.assertEqual(call.consumer.body(), b"hello ")
        self.h.send(chunk(b"world") + b"0\r\n\r\n")
        self.assertEqual(call.consumer.body(), b"hello world")
        self.successResultOf(producing)

    def test_slow_upstream_pauses_client(self) -> None:
        """
        When the upstream stops taking the body, the gateway stops reading
        from the client, and reads again when the upstream takes more.
        """
        self.h.send(post_head(b"/kv/items", 10))
        [call] = self.h.agent.calls
        call.start_body()
        self.h.send(b"01")
        call.body.pauseProducing()  # type: ignore[union-attr]
        self.assertFalse(self.h.reading)
        call.body.resumeProducing()  # type: ignore[union-attr]
        self.assertTrue(self.h.reading)

    def test_slow_upstream_wins_over_channel_resume(self) -> None:
        """
        If the channel resumes reading (its client caught up with its
        answer) while the upstream is paused, the next piece of body puts
        the client on hold again.
        """
        self.h.send(post_head(b"/kv/items", 10))
        [call] = self.h.agent.calls
        call.start_body()
        call.body.pauseProducing()  # type: ignore[union-attr]
        self.h.transport.resumeProducing()
        self.h.send(b"0123")
        self.assertFalse(self.h.reading)
        self.assertEqual(call.consumer.body(), b"0123")

    def test_idle_timeout_spares_held_client(self) -> None:
        """
        The client idle timeout does not close a connection whose body the
        gateway holds back for a slow upstream (the upstream timeout bounds
        that); a client that itself stops sending is timed out.
        """
        h = ChannelHarness(upstream_timeout=0.0)
        h.send(post_head(b"/kv/items", 10))
        [call] = h.agent.calls
        call.start_body()
        call.body.pauseProducing()  # type: ignore[union-attr]
        h.clock.advance(200)
        self.assertFalse(h.transport.disconnecting)
        call.body.resumeProducing()  # type: ignore[union-attr]
        h.clock.advance(61)
        self.assertTrue(h.transport.disconnecting)

    def test_keep_alive_after_streamed_request(self) -> None:
        """
        After a streamed request is answered, the connection serves the
        next request.
        """
        self.h.send(post_head(b"/kv/a", 3))
        [call] = self.h.agent.calls
        call.start_body()
        self.h.send(b"abc")
        response = call.answer(FakeResponse(200, length=0))
        response.finish()
        self.h.send(b"GET /kv/b HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
        self.assertEqual(len(self.h.agent.calls), 2)
        self.assertEqual(self.h.agent.calls[1].uri, b"http://kv.test/b")

    def test_bodiless_request_not_early(self) -> None:
        """
        A request without a body takes Twisted's ordinary path.
        """
        self.h.send(b"GET /kv/a HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
        [call] = self.h.agent.calls
        self.assertIsNone(call.body)
        self.assertTrue(self.h.reading)

    def test_expect_continue(self) -> None:
        """
        ``Expect: 100-continue`` is answered by the gateway once the
        upstream takes the body (not before), and never sent upstream.
        """
        self.h.send(post_head(b"/kv/a", 3, b"Expect: 100-continue\r\n"))
        [call] = self.h.agent.calls
        self.assertFalse(call.headers.hasHeader(b"expect"))
        self.assertEqual(self.h.transport.value(), b"")
        call.start_body()
        self.assertEqual(self.h.transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        self.h.send(b"abc")
        call.answer(FakeResponse(200, Headers(), length=0)).finish()
        self.assertEqual(call.consumer.body(), b"abc")
        self.assertEqual(self.h.transport.value().count(b"100 Continue"), 1)

    def test_expect_continue_refused_head(self) -> None:
        """
        A request refused on its head (no token on ``/build``) is answered
        at once, without a "100 Continue" that would invite its body.
        """
        self.h.send(post_head(b"/build/x", 3, b"Expect: 100-continue\r\n"))
        wire = self.h.transport.value()
        self.assertTrue(wire.startswith(b"HTTP/1.1 401 "), wire)
        self.assertNotIn(b"100 Continue", wire)
        self.assertEqual(self.h.agent.calls, [])

    def test_expect_continue_http10(self) -> None:
        """
        An HTTP/1.0 client is never sent "100 Continue".
        """
        self.h.send(
            b"POST /kv/a HTTP/1.0\r\nHost: gateway.test\r\nContent-Length: 3\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        [call] = self.h.agent.calls
        call.start_body()
        self.assertNotIn(b"100 Continue", self.h.transport.value())

    def test_answer_before_body_closes(self) -> None:
        """
        An answer given before the body is all in (a missing token) says
        ``Connection: close``; the rest of the body is read and dropped,
        never parsed as a next request, and the connection closes after
        the linger period.
        """
        self.h.send(post_head(b"/build/x", 100))
        answer = self.h.response()
        self.assertEqual(answer.code, 401)
        self.assertEqual(answer.header(b"connection"), b"close")
        self.assertEqual(self.h.agent.calls, [])
        self.assertTrue(self.h.reading)
        self.h.transport.clear()
        self.h.send(b"GET /kv/smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(self.h.transport.value(), b"")
        self.assertEqual(self.h.agent.calls, [])
        self.assertFalse(self.h.transport.disconnecting)
        self.h.clock.advance(GatewayChannel.linger_seconds)
        self.assertTrue(self.h.transport.disconnecting)

    def test_client_gone_mid_upload(self) -> None:
        """
        A client that disconnects mid-body cancels the upstream call; the
        body fails, so the upstream never sees it whole.
        """
        self.h.send(post_head(b"/kv/a", 10))
        [call] = self.h.agent.calls
        producing = call.start_body()
        self.h.send(b"01234")
        self.h.channel.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(call.cancelled)
        self.failureResultOf(producing)

    def test_draining_closes_connection(self) -> None:
        """
        Answers given while the gateway drains close their connection.
        """
        self.h.gateway.in_flight.draining = True
        self.h.send(b"GET /kv/a HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
        [call] = self.h.agent.calls
        call.answer(FakeResponse(200, length=0)).finish()
        self.assertEqual(self.h.response().header(b"connection"), b"close")
        self.assertTrue(self.h.transport.disconnecting)


class BufferedTests(SynchronousTestCase):
    """
    The gateway's own endpoints keep Twisted's buffered path, with caps.
    """

    def setUp(self) -> None:
        self.h = ChannelHarness()

    def test_login_buffered(self) -> None:
        """
        A login body is buffered and answered as usual.
        """
        body = json.dumps({"username": USERNAME, "password": PASSWORD}).encode()
        self.h.send(post_head(b"/auth/login", len(body)) + body)
        self.h.clock.advance(0)
        answer = self.h.response()
        self.assertEqual(answer.code, 200, answer.body)
        self.assertIn("token", answer.json())

    def test_declared_too_large(self) -> None:
        """
        A login declaring a body over the cap is answered ``413`` in the
        contract's JSON without reading it, and without ``100 Continue``.
        """
        self.h.send(post_head(b"/auth/login", 10_000_000, b"Expect: 100-continue\r\n"))
        answer = self.h.response()
        self.assertEqual(answer.code, 413)
        self.assertEqual(answer.json()["code"], "PAYLOAD_TOO_LARGE")
        self.assertEqual(answer.json()["route"], "AUTH")
        self.assertEqual(answer.header(b"content-type"), b"application/json")
        self.assertEqual(answer.header(b"connection"), b"close")

    def test_chunked_too_large(self) -> None:
        """
        A chunked login body is counted as it arrives: past the cap,
        ``413`` and the connection closes.
        """
        self.h.send(post_head(b"/core/auth/login"))
        self.h.send(chunk(b"x" * 40_000))
        self.assertEqual(self.h.responses(), [])
        self.h.send(chunk(b"x" * 40_000))
        answer = self.h.response()
        self.assertEqual((answer.code, answer.json()["route"]), (413, "CORE"))
        self.assertEqual(answer.header(b"connection"), b"close")

    def test_not_found_capped(self) -> None:
        """
        A path the gateway does not handle is buffered with the small cap.
        """
        self.h.send(post_head(b"/nowhere", 10_000_000))
        self.assertEqual(self.h.response().code, 413)
        self.h2 = ChannelHarness()
        self.h2.send(post_head(b"/nowhere", 2) + b"{}")
        self.assertEqual(self.h2.response().code, 404)

    def test_stock_site_fallback(self) -> None:
        """
        Mounted in a host ``Site`` with Twisted's own request, the proxy
        reads the buffered body and still relays it.
        """
        host = Resource()
        host.putChild(b"api", self.h.gateway.resource)
        site = Site(host, reactor=self.h.clock)
        channel = site.buildProtocol(CLIENT)
        transport = StringTransport(hostAddress=SERVER, peerAddress=CLIENT)
        channel.makeConnection(transport)
        channel.dataReceived(post_head(b"/api/kv/a", 5) + b"hello")
        [call] = self.h.agent.calls
        self.assertEqual(call.uri, b"http://kv.test/a")
        self.assertEqual(call.body.length, 5)  # type: ignore[union-attr]


class HostileInputTests(SynchronousTestCase):
    """
    Ambiguous framing, oversized heads and malformed request lines are
    refused in JSON, never reach an upstream, and close the connection.
    """

    def setUp(self) -> None:
        self.h = ChannelHarness(max_body=0)

    def refused(self, data: bytes, status: int, code: str) -> None:
        self.h.send(data)
        answer = self.h.response()
        self.assertEqual(answer.code, status, answer.body)
        self.assertEqual(answer.json()["code"], code)
        self.assertEqual(answer.header(b"content-type"), b"application/json")
        self.assertEqual(answer.header(b"connection"), b"close")
        self.assertEqual(self.h.agent.calls, [])
        # Whatever follows is dropped, and the connection closes.
        self.h.send(b"GET /kv/after HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(self.h.agent.calls, [])
        self.h.clock.advance(GatewayChannel.linger_seconds)
        self.assertTrue(self.h.transport.disconnecting)

    def test_both_framings(self) -> None:
        """
        ``Content-Length`` with ``Transfer-Encoding``: ``400``.
        """
        self.refused(
            b"POST /kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            "BAD_REQUEST",
        )

    def test_framings_other_order(self) -> None:
        """
        ``Transfer-Encoding`` then ``Content-Length``: ``400``.
        """
        self.refused(
            b"POST /kv/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Length: 3\r\n\r\nabc",
            400,
            "BAD_REQUEST",
        )

    def test_identity_coding(self) -> None:
        """
        ``Transfer-Encoding: identity`` (which Twisted would let through):
        ``400``.
        """
        self.refused(
            b"POST /kv/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n"
            b"Content-Length: 3\r\n\r\nabc",
            400,
            "BAD_REQUEST",
        )

    def test_stacked_codings(self) -> None:
        """
        ``Transfer-Encoding: gzip, chunked``: ``400``.
        """
        self.refused(
            b"POST /kv/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            400,
            "BAD_REQUEST",
        )

    def test_two_lengths(self) -> None:
        """
        Two ``Content-Length`` headers: ``400``.
        """
        self.refused(
            b"POST /kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Content-Length: 3\r\n\r\nabc",
            400,
            "BAD_REQUEST",
        )

    def test_bad_length(self) -> None:
        """
        A ``Content-Length`` that is not a number: ``400``.
        """
        self.refused(
            b"POST /kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            400,
            "BAD_REQUEST",
        )

    def test_malformed_request_line(self) -> None:
        """
        A request line that is not ``METHOD target HTTP/1.x``: ``400``.
        """
        self.refused(b"GARBAGE\r\n\r\n", 400, "BAD_REQUEST")

    def test_bad_version(self) -> None:
        """
        An HTTP version other than 1.0 or 1.1: ``400``.
        """
        self.refused(b"GET / HTTP/2.0\r\n\r\n", 400, "BAD_REQUEST")

    def test_bad_chunk(self) -> None:
        """
        A malformed chunk size mid-body: ``400``, and the upstream's copy of
        the body fails (never looks complete).
        """
        self.h.send(post_head(b"/kv/a"))
        [call] = self.h.agent.calls
        producing = call.start_body()
        self.h.send(chunk(b"abc") + b"zz\r\n")
        self.assertEqual(self.h.response().code, 400)
        self.assertTrue(call.cancelled)
        self.failureResultOf(producing)

    def test_too_many_headers(self) -> None:
        """
        More header lines than ``max_headers``: ``431``.
        """
        headers = b"".join(b"X-H%d: v\r\n" % (i,) for i in range(101))
        self.refused(
            b"GET /kv/a HTTP/1.1\r\n" + headers + b"\r\n", 431, "HEADERS_TOO_LARGE"
        )

    def test_head_too_large(self) -> None:
        """
        A head over ``max_header_bytes``: ``431``.
        """
        headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(17))
        self.refused(
            b"GET /kv/a HTTP/1.1\r\n" + headers + b"\r\n", 431, "HEADERS_TOO_LARGE"
        )

    def test_header_line_too_long(self) -> None:
        """
        One header line longer than the whole head may be: ``431``.
        """
        self.refused(
            b"GET /kv/a HTTP/1.1\r\nX-Big: " + b"v" * 20000 + b"\r\n\r\n",
            431,
            "HEADERS_TOO_LARGE",
        )

    def test_target_too_long(self) -> None:
        """
        A request line longer than the head may be: ``414``.
        """
        self.refused(
            b"GET /kv/" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n", 414, "URI_TOO_LONG"
        )

    def test_configured_limits(self) -> None:
        """
        The site's limits apply to its channels.
        """
        self.h.site.max_headers = 2
        self.h.transport, self.h.channel = self.h.connect()
        self.refused(
            b"GET /kv/a HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n",
            431,
            "HEADERS_TOO_LARGE",
        )

    def test_missing_host(self) -> None:
        """
        An HTTP/1.1 request without ``Host``: ``400`` (RFC 9112, 3.2).
        """
        self.refused(b"GET /kv/a HTTP/1.1\r\nAccept: */*\r\n\r\n", 400, "BAD_REQUEST")

    def test_two_hosts(self) -> None:
        """
        Two ``Host`` headers: ``400``, whatever the version.
        """
        self.refused(
            b"GET /kv/a HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
            400,
            "BAD_REQUEST",
        )
        self.h.transport, self.h.channel = self.h.connect()
        self.refused(
            b"GET /kv/a HTTP/1.0\r\nHost: a.test\r\nHost: a.test\r\n\r\n",
            400,
            "BAD_REQUEST",
        )

    def test_missing_host_before_continue(self) -> None:
        """
        A body's request without ``Host`` is refused before the gateway
        asks for the body (no ``100 Continue``) or routes it.
        """
        self.refused(
            b"POST /kv/a HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n",
            400,
            "BAD_REQUEST",
        )
        self.assertNotIn(b"100 Continue", self.h.transport.value())

    def test_http10_without_host(self) -> None:
        """
        An HTTP/1.0 request may leave ``Host`` out.
        """
        self.h.send(b"GET /kv/a HTTP/1.0\r\n\r\n")
        [call] = self.h.agent.calls
        self.assertEqual(call.uri, b"http://kv.test/a")

    def test_bare_lf_head(self) -> None:
        """
        A head whose lines end in a bare LF (which Twisted's parser never
        completes) is refused at once with ``400``, in one read or several.
        """
        self.refused(
            b"GET /kv/x HTTP/1.1\nHost: x\n\n",
            400,
            "BAD_REQUEST",
        )
        self.h.transport, self.h.channel = self.h.connect()
        self.h.send(b"GET /kv/x HTTP/1.1\r\n")
        self.assertEqual(self.h.transport.value(), b"")
        self.refused(b"Host: x\n", 400, "BAD_REQUEST")

    def test_bare_cr_head(self) -> None:
        """
        So is a head whose lines end in a bare CR.
        """
        self.refused(b"GET /kv/x HTTP/1.1\rHost: x\r\r", 400, "BAD_REQUEST")

    def test_crlf_split_across_reads(self) -> None:
        """
        A CRLF split between two reads is a line end like any other.
        """
        for piece in (b"GET /kv/x HTTP/1.1\r", b"\nHost: x\r", b"\n\r", b"\n"):
            self.h.send(piece)
        self.assertEqual(self.h.transport.value(), b"")
        [call] = self.h.agent.calls
        self.assertEqual(call.uri, b"http://kv.test/x")

    def test_lf_in_bodies(self) -> None:
        """
        Line feeds in bodies, including a pipelined request's, are body.
        """
        self.h.send(
            post_head(b"/nowhere", 2) + b"a\n" + post_head(b"/nowhere", 3) + b"\nb\n"
        )
        self.assertEqual([r.code for r in self.h.responses()], [404, 404])
        self.assertFalse(self.h.transport.disconnecting)

    def test_within_limits(self) -> None:
        """
        A request at the limits is served.
        """
        headers = b"".join(b"X-H%d: v\r\n" % (i,) for i in range(99))
        self.h.send(b"GET /kv/a HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        self.assertEqual(len(self.h.agent.calls), 1)


#: The head timeout's default, in seconds.
HEAD_SECONDS = 30

#: A request head that never ends.
ENDLESS_HEAD = b"GET /kv/a HTTP/1.1\r\nHost: gateway.test\r\nX-Slow: " + b"y" * 200


class HeadTimeoutTests(SynchronousTestCase):
    """
    A request head must arrive whole within the head timeout of its first
    byte, however it trickles in (slowloris); idle connections and bodies
    are left to the other timeouts.
    """

    def setUp(self) -> None:
        self.h = ChannelHarness()

    def trickle(self, seconds: int, data: bytes = ENDLESS_HEAD) -> bytes:
        """
        Send one byte of ``data`` a second for ``seconds`` seconds, the
        first at once; return the rest.
        """
        for i in range(seconds):
            self.h.send(data[i : i + 1])
            self.h.clock.advance(1)
        return data[seconds:]

    def assert_timed_out(self, calls: int = 0) -> None:
        """
        The client got the JSON ``408`` and its connection closes; the
        upstream saw nothing beyond ``calls`` earlier requests.
        """
        answer = self.h.response()
        self.assertEqual(answer.code, 408, answer.body)
        self.assertEqual(answer.header(b"content-type"), b"application/json")
        self.assertEqual(answer.header(b"connection"), b"close")
        body = answer.json()
        self.assertEqual(
            {k: body[k] for k in ("route", "status", "code", "message")},
            {
                "route": "CORE",
                "status": 408,
                "code": "REQUEST_TIMEOUT",
                "message": "Request head not received in time",
            },
        )
        self.assertEqual(body["requestId"].encode(), answer.header(b"x-request-id"))
        self.assertIn("timestamp", body)
        self.h.send(b"\r\n\r\n")
        self.assertEqual(len(self.h.agent.calls), calls)
        self.h.clock.advance(GatewayChannel.linger_seconds)
        self.assertTrue(self.h.transport.disconnecting)
        self.h.channel.connectionLost(Failure(ConnectionDone()))

    def test_default(self) -> None:
        """
        The limit is 30 seconds, on the channel and the site.
        """
        self.assertEqual(GatewayChannel.head_timeout, HEAD_SECONDS)
        self.assertEqual(GatewaySite.head_timeout, HEAD_SECONDS)
        self.assertEqual(self.h.channel.head_timeout, HEAD_SECONDS)

    def test_slow_head(self) -> None:
        """
        A head sent a byte a second is answered ``408`` thirty seconds
        after its first byte, although the idle timeout never fires.
        """
        self.trickle(HEAD_SECONDS - 1)
        self.assertEqual(self.h.transport.value(), b"")
        self.assertFalse(self.h.transport.disconnecting)
        self.h.clock.advance(1)
        self.assert_timed_out()

    def test_silent_after_first_bytes(self) -> None:
        """
        A head that stops part-way is timed out by the head timeout, before
        the idle timeout would close the connection without a word.
        """
        self.h.send(b"GET /kv/a HTTP/1.1\r\nHost: gateway.test\r\n")
        self.h.clock.advance(HEAD_SECONDS - 0.5)
        self.assertEqual(self.h.transport.value(), b"")
        self.h.clock.advance(0.5)
        self.assert_timed_out()

    def test_from_first_byte(self) -> None:
        """
        The time counts from the head's first byte, not from the connection:
        a connection idle a while, then sending slowly, gets its full 30
        seconds.
        """
        self.h.clock.advance(50)
        self.trickle(HEAD_SECONDS - 1)
        self.assertEqual(self.h.transport.value(), b"")
        self.h.clock.advance(1)
        self.assert_timed_out()

    def test_slow_head_in_time(self) -> None:
        """
        A head that arrives slowly but whole within the limit is served,
        and leaves no timeout behind it.
        """
        head = b"GET /kv HTTP/1.1\r\nHost: g\r\n\r\n"
        self.assertLess(len(head), HEAD_SECONDS)
        self.trickle(len(head), head)
        [call] = self.h.agent.calls
        call.answer(FakeResponse(200, length=0)).finish()
        self.h.clock.advance(HEAD_SECONDS)
        self.assertEqual([r.code for r in self.h.responses()], [200])
        self.assertFalse(self.h.transport.disconnecting)

    def test_idle_keep_alive(self) -> None:
        """
        A kept-alive connection with nothing of a next request is left to
        the idle timeout (60 seconds): no ``408``, closed without a word.
        """
        self.h.send(b"GET /kv/a HTTP/1.1\r\nHost: g\r\n\r\n")
        [call] = self.h.agent.calls
        call.answer(FakeResponse(200, length=0)).finish()
        self.h.clock.advance(59)
        self.assertFalse(self.h.transport.disconnecting)
        self.h.clock.advance(1)
        self.assertTrue(self.h.transport.disconnecting)
        self.assertEqual([r.code for r in self.h.responses()], [200])

    def test_next_head_on_kept_alive_connection(self) -> None:
        """
        On a kept-alive connection, each head has its own 30 seconds from
        its first byte, whenever it comes.
        """
        self.h.send(b"GET /kv/a HTTP/1.1\r\nHost: g\r\n\r\n")
        [call] = self.h.agent.calls
        call.answer(FakeResponse(200, length=0)).finish()
        self.h.clock.advance(20)
        self.trickle(HEAD_SECONDS - 1)
        self.assertEqual([r.code for r in self.h.responses()], [200])
        self.h.transport.clear()
        self.h.clock.advance(1)
        self.assert_timed_out(calls=1)

    def test_head_behind_answered_request(self) -> None:
        """
        Bytes of a next head sent with a request answered at once (no
        complete line of it yet) are timed from then.
        """
        self.h.send(b"GET /nowhere HTTP/1.1\r\nHost: g\r\n\r\nGET /kv/b HT")
        self.assertEqual([r.code for r in self.h.responses()], [404])
        self.h.transport.clear()
        self.trickle(HEAD_SECONDS - 1, b"TP/1.1\r\nHost: g\r\nX-Slow: " + b"y" * 50)
        self.assertEqual(self.h.transport.value(), b"")
        self.h.clock.advance(1)
        self.assert_timed_out()

    def test_pipelined_head(self) -> None:
        """
        Bytes of a next head sent while a request is being answered are
        timed from the end of that request.
        """
        self.h.send(b"GET /kv/a HTTP/1.1\r\nHost: g\r\n\r\nGET /kv/b HT")
        [call] = self.h.agent.calls
        self.h.clock.advance(20)
        call.answer(FakeResponse(200, length=0)).finish()
        self.h.transport.clear()
        self.trickle(HEAD_SECONDS - 1, b"TP/1.1\r\nHost: g\r\nX-Slow: " + b"y" * 50)
        self.assertEqual(self.h.transport.value(), b"")
        self.h.clock.advance(1)
        self.assert_timed_out(calls=1)

    def test_bodies_not_covered(self) -> None:
        """
        A body may take longer than the head timeout, a byte at a time.
        """
        self.h.send(post_head(b"/kv/items", 10))
        [call] = self.h.agent.calls
        producing = call.start_body()
        for byte in b"0123456789":
            self.h.clock.advance(10)
            self.h.send(bytes([byte]))
        self.successResultOf(producing)
        self.assertEqual(call.consumer.body(), b"0123456789")
        self.assertEqual(self.h.transport.value(), b"")

    def test_configured(self) -> None:
        """
        The site's ``head_timeout`` applies to its channels; ``0`` turns
        the limit off.
        """
        self.h.site.head_timeout = 5
        self.h.transport, self.h.channel = self.h.connect()
        self.trickle(4)
        self.assertEqual(self.h.transport.value(), b"")
        self.h.clock.advance(1)
        self.assert_timed_out()
        self.h.site.head_timeout = 0
        self.h.transport, self.h.channel = self.h.connect()
        self.trickle(150)
        self.assertEqual(self.h.transport.value(), b"")
        self.assertFalse(self.h.transport.disconnecting)

    def test_one_timer_per_connection(self) -> None:
        """
        A head that arrives in one read arms no timer; heads that take
        several reads on a kept-alive connection share one.
        """
        before = len(self.h.clock.getDelayedCalls())
        for _ in range(3):
            self.h.send(b"GET /nowhere HTTP/1.1\r\nHost: g\r\n\r\n")
        self.assertEqual(len(self.h.clock.getDelayedCalls()), before)
        for _ in range(3):
            self.h.send(b"GET /nowhere HTTP/1.1\r\n")
            self.h.clock.advance(1)
            self.h.send(b"Host: g\r\n\r\n")
            self.assertEqual(len(self.h.clock.getDelayedCalls()), before + 1)
        self.assertEqual([r.code for r in self.h.responses()], [404] * 6)


class DoneHookTests(SynchronousTestCase):
    """
    :func:`~metagateway.http.request.when_done`: the gateway's request calls
    its hooks directly, once, as ``notifyFinish`` would fire.
    """

    def request(self) -> Any:
        request = GatewayRequest(DummyChannel(), False)
        request.method = b"GET"
        request.uri = request.path = b"/x"
        request.clientproto = b"HTTP/1.1"
        return request

    def test_finished(self) -> None:
        """
        Hooks are called in order with ``None`` (and their arguments) when
        the answer is finished, and only once.
        """
        request = self.request()
        calls: list[tuple[str, Any, tuple[Any, ...]]] = []
        when_done(request, lambda result, *args: calls.append(("a", result, args)), 1)
        when_done(request, lambda result, *args: calls.append(("b", result, args)))
        request.finish()
        request.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(calls, [("a", None, (1,)), ("b", None, ())])

    def test_connection_lost(self) -> None:
        """
        A connection lost before the answer finished calls each hook once
        with its ``Failure``.
        """
        request = self.request()
        results: list[Any] = []
        when_done(request, results.append)
        reason = Failure(ConnectionLost())
        request.connectionLost(reason)
        self.assertEqual(results, [reason])

    def test_late_hook(self) -> None:
        """
        A hook added once the request is over is called at once, with the
        same result.
        """
        request = self.request()
        request.finish()
        results: list[Any] = []
        when_done(request, results.append)
        self.assertEqual(results, [None])

    def test_failing_hook_logged(self) -> None:
        """
        A hook that raises is logged; the next hooks still run, and
        ``finish`` completes.
        """
        request = self.request()
        results: list[Any] = []

        def broken(result: Any) -> None:
            raise RuntimeError("hook broke")

        when_done(request, broken)
        when_done(request, results.append)
        request.finish()
        self.assertEqual(results, [None])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(request.finished)

    def test_other_requests_use_notify_finish(self) -> None:
        """
        Any other request is watched through ``notifyFinish``.
        """
        request = DummyRequest([b"x"])
        results: list[Any] = []
        when_done(request, lambda result, extra: results.append((result, extra)), 7)
        self.assertEqual(results, [])
        request.finish()
        self.assertEqual(results, [(None, 7)])


class ProcessTests(SynchronousTestCase):
    """
    The gateway's request skips Twisted's resource traversal under a
    gateway root, and answers exactly as before.
    """

    def test_default_headers_and_routing(self) -> None:
        """
        An answer still carries Twisted's ``Server`` and ``Date`` (the
        upstream's own replace them on proxied answers), and the gateway
        routes the request from its raw path.
        """
        h = ChannelHarness()
        h.send(b"GET /health HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
        answer = h.response()
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.header(b"server"), server_version)
        self.assertRegex(answer.header(b"date") or b"", rb"^\w{3}, \d\d \w{3} \d{4} ")
        h.send(b"GET /kv/a%2Fb/./c?x=1 HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
        [call] = h.agent.calls
        self.assertTrue(call.uri.endswith(b"/a%2Fb/c?x=1"), call.uri)

    def test_preflight_bytes(self) -> None:
        """
        A preflight's ``204`` on the wire: the CORS headers, no
        ``Content-Length`` (a 204 may not carry one), no body.
        """
        h = ChannelHarness()
        h.send(b"OPTIONS /build/x HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
        wire = h.transport.value()
        head, _, body = wire.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 204 "), head)
        self.assertIn(b"Access-Control-Max-Age: 86400", head)
        self.assertNotIn(b"content-length", head.lower())
        self.assertEqual(body, b"")
        self.assertEqual(h.agent.calls, [])

    def test_star_target(self) -> None:
        """
        ``OPTIONS *`` is answered as a preflight on a path is: ``204`` with
        the same CORS headers, no body; no upstream is called.
        """
        h = ChannelHarness()
        h.send(b"OPTIONS /build/x HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
        [path] = h.responses()
        h.transport.clear()
        h.send(b"OPTIONS * HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
        [star] = h.responses()
        self.assertEqual((star.code, star.body), (204, b""))
        self.assertIsNone(star.header(b"content-length"))
        for name in (
            b"Access-Control-Allow-Origin",
            b"Access-Control-Allow-Headers",
            b"Access-Control-Allow-Methods",
            b"Access-Control-Max-Age",
        ):
            self.assertIsNotNone(star.header(name), name)
        names = sorted(name for name, _ in path.headers.getAllRawHeaders())
        self.assertEqual(
            sorted(name for name, _ in star.headers.getAllRawHeaders()), names
        )
        for name in names:
            if name not in (b"Date", b"X-Request-Id"):
                self.assertEqual(star.header(name), path.header(name), name)
        self.assertEqual(h.agent.calls, [])

    def test_star_other_methods(self) -> None:
        """
        ``*`` with any other method is the gateway's JSON ``400``; the
        connection serves on.
        """
        h = ChannelHarness()
        h.send(b"GET * HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
        h.send(post_head(b"*", 2) + b"{}")
        h.send(b"GET /nowhere HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
        get, post, after = h.responses()
        for answer in (get, post):
            self.assertEqual(answer.code, 400, answer.body)
            self.assertEqual(answer.header(b"content-type"), b"application/json")
            body = answer.json()
            self.assertEqual(
                (body["status"], body["code"], body["route"]),
                (400, "BAD_REQUEST", "CORE"),
            )
            self.assertIsNone(answer.header(b"connection"))
        self.assertEqual(after.code, 404)
        self.assertEqual(h.agent.calls, [])

    def test_star_other_root(self) -> None:
        """
        Under another root resource the ``*`` target stays Twisted's.
        """
        site = GatewaySite(Resource(), reactor=MemoryReactorClock())
        channel = site.buildProtocol(CLIENT)
        transport = StringTransport(hostAddress=SERVER, peerAddress=CLIENT)
        channel.makeConnection(transport)
        channel.dataReceived(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
        channel.dataReceived(b"GET * HTTP/1.1\r\nHost: x\r\n\r\n")
        options, get = parse_responses(transport.value())
        self.assertEqual((options.code, options.body), (200, b""))
        self.assertEqual(get.code, 405)

    def test_other_root(self) -> None:
        """
        Under another root resource the request is Twisted's: traversed,
        with the unquoted ``postpath``.
        """
        seen: list[list[bytes]] = []

        class Leaf(Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> bytes:
                seen.append(list(request.postpath))
                return b"ok"

        site = GatewaySite(Leaf())
        channel = site.buildProtocol(CLIENT)
        transport = StringTransport(hostAddress=SERVER, peerAddress=CLIENT)
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /a%20b/c HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(seen, [[b"a b", b"c"]])
        self.assertIn(b"\r\n\r\nok", transport.value())


class ConnectionCostTests(SynchronousTestCase):
    """
    What a kept-alive connection does once rather than for every request:
    its idle timer, its addresses and the ``Date`` header.
    """

    @staticmethod
    def idle_calls(h: ChannelHarness) -> list[Any]:
        return [
            call
            for call in h.clock.getDelayedCalls()
            if call.func == h.channel._idle_due  # type: ignore[attr-defined]
        ]

    def get(self, h: ChannelHarness, path: bytes = b"/kv/a") -> None:
        h.send(b"GET " + path + b" HTTP/1.1\r\nHost: g\r\n\r\n")
        h.agent.calls[-1].answer(FakeResponse(200, length=0)).finish()

    def test_one_idle_timer(self) -> None:
        """
        Many requests on one connection keep a single idle timer: no timer
        is cancelled and made anew for each.
        """
        h = ChannelHarness()
        [idle] = self.idle_calls(h)
        for _ in range(20):
            self.get(h)
            h.clock.advance(1)
        self.assertEqual(self.idle_calls(h), [idle])
        self.assertEqual([r.code for r in h.responses()], [200] * 20)

    def test_idle_counts_from_last_activity(self) -> None:
        """
        The connection closes 60 seconds after it was last active, whether
        that was a read, an answer, or a request in progress.
        """
        h = ChannelHarness(upstream_timeout=0.0)
        h.clock.advance(50)
        h.send(b"GET /kv/a HTTP/1.1\r\n")
        h.clock.advance(20)
        self.assertFalse(h.transport.disconnecting)
        h.send(b"Host: g\r\n\r\n")
        # No idle timeout while the request is being answered.
        h.clock.advance(500)
        self.assertFalse(h.transport.disconnecting)
        h.agent.calls[-1].answer(FakeResponse(200, length=0)).finish()
        h.clock.advance(59.5)
        self.assertFalse(h.transport.disconnecting)
        h.clock.advance(0.5)
        self.assertTrue(h.transport.disconnecting)

    def test_no_timer_left(self) -> None:
        """
        A closed connection leaves no timer behind.
        """
        h = ChannelHarness()
        self.get(h)
        self.assertEqual(len(self.idle_calls(h)), 1)
        h.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.idle_calls(h), [])

    def test_shorter_timeout(self) -> None:
        """
        A timeout set shorter than the one pending takes effect at once.
        """
        h = ChannelHarness()
        h.channel.setTimeout(5)
        h.clock.advance(5)
        self.assertTrue(h.transport.disconnecting)

    def test_without_clock(self) -> None:
        """
        A channel the site did not give a clock keeps Twisted's own idle
        timeout.
        """
        clock = MemoryReactorClock()
        channel = GatewayChannel()
        channel.callLater = clock.callLater  # type: ignore[assignment, method-assign]
        channel.timeOut = 10
        transport = StringTransport(hostAddress=SERVER, peerAddress=CLIENT)
        channel.makeConnection(transport)
        clock.advance(9)
        channel.dataReceived(b"GET /")
        clock.advance(9)
        self.assertFalse(transport.disconnecting)
        clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_addresses_asked_once(self) -> None:
        """
        The transport is asked for the connection's addresses once, not
        for every request; every request still sees them.
        """
        h = ChannelHarness()
        asked: list[str] = []
        transport = h.transport
        host, peer = transport.getHost, transport.getPeer

        def count(name: str, ask: Any) -> Any:
            def asking() -> Any:
                asked.append(name)
                return ask()

            return asking

        transport.getHost = count("host", host)  # type: ignore[method-assign]
        transport.getPeer = count("peer", peer)  # type: ignore[method-assign]
        for _ in range(3):
            self.get(h)
        self.assertEqual(sorted(asked), ["host", "peer"])
        [call] = h.agent.calls[-1:]
        self.assertEqual(call.headers.getRawHeaders(b"x-forwarded-for"), [b"10.0.0.7"])
        for request in h.channel.requests:
            self.assertEqual(request.getHost(), SERVER)

    def test_date_once_a_second(self) -> None:
        """
        The ``Date`` header is formatted once a second and is what Twisted
        would write.
        """
        now = [1_800_000_000.2]
        date = HTTPDate(lambda: now[0])
        first = date()
        self.assertEqual(first, datetimeToString(1_800_000_000))
        now[0] += 0.7
        self.assertIs(date(), first)
        now[0] += 0.2
        self.assertEqual(date(), datetimeToString(1_800_000_001))

    def test_upstream_headers_answer(self) -> None:
        """
        A proxied answer carries the upstream's end-to-end headers, its own
        ``Server`` and ``Date`` over the gateway's, no hop-by-hop header, the
        CORS header and the length; an upstream that sends no ``Server`` or
        ``Date`` gets the gateway's.
        """
        h = ChannelHarness()
        h.send(b"GET /kv/a HTTP/1.1\r\nHost: g\r\n\r\n")
        own = Headers(
            {
                b"Server": [b"upstream/1"],
                b"Date": [b"Sun, 06 Nov 1994 08:49:37 GMT"],
                b"Keep-Alive": [b"timeout=5"],
                b"X-Thing": [b"a", b"b"],
            }
        )
        response = h.agent.calls[-1].answer(FakeResponse(200, own, length=2))
        response.send(b"ok")
        response.finish()
        h.send(b"GET /kv/b HTTP/1.1\r\nHost: g\r\n\r\n")
        h.agent.calls[-1].answer(FakeResponse(200, Headers(), length=0)).finish()
        first, second = h.responses()
        self.assertEqual(
            sorted(first.headers.getAllRawHeaders()),
            [
                (b"Access-Control-Allow-Origin", [b"*"]),
                (b"Content-Length", [b"2"]),
                (b"Date", [b"Sun, 06 Nov 1994 08:49:37 GMT"]),
                (b"Server", [b"upstream/1"]),
                (b"X-Thing", [b"a", b"b"]),
            ],
        )
        self.assertEqual(second.header(b"server"), server_version)
        self.assertRegex(second.header(b"date") or b"", rb"^\w{3}, \d\d \w{3} \d{4} ")

    def test_head_written_whole(self) -> None:
        """
        The channel writes a response head as one string, byte for byte
        what Twisted's channel writes, repeated values included; a head
        given as pairs (Twisted's older form) is Twisted's.
        """
        headers = Headers(
            {
                b"Server": [b"upstream/1"],
                b"X-Thing": [b"a", b"b"],
                b"Content-Length": [b"2"],
            }
        )
        pairs = [(b"X-Pair", b"1"), (b"X-Pair", b"2")]

        class Counting(StringTransport):
            calls: list[str] = []

            def write(self, data: bytes) -> None:
                self.calls.append("write")
                super().write(data)

            def writeSequence(self, seq: Any) -> None:
                self.calls.append("writeSequence")
                super().writeSequence(seq)

        heads = []
        for given in (headers, pairs):
            ours, theirs = GatewayChannel(), HTTPChannel()
            ours.makeConnection(Counting())
            theirs.makeConnection(StringTransport())
            Counting.calls = []
            ours.writeHeaders(b"HTTP/1.1", b"200", b"OK", given)
            theirs.writeHeaders(b"HTTP/1.1", b"200", b"OK", given)
            head = ours.transport.value()  # type: ignore[attr-defined]
            self.assertEqual(head, theirs.transport.value())  # type: ignore[attr-defined]
            heads.append(head)
            if given is headers:
                self.assertEqual(Counting.calls, ["write"])
            for channel in (ours, theirs):
                channel.connectionLost(Failure(ConnectionDone()))
        self.assertIn(b"\r\nX-Thing: a\r\nX-Thing: b\r\n", heads[0])
        self.assertTrue(heads[0].startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(heads[0].endswith(b"\r\n\r\n"))
        self.assertIn(b"X-Pair: 1\r\nX-Pair: 2\r\n", heads[1])
