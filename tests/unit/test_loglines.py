"""
Tests for :mod:`metagateway.observability.loglines`' text lines: the
buffered ``text`` access log writes, byte for byte, what ``twistd``'s text
log wrote for the same requests when each was an event through the global
log publisher.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import formatEventAsClassicLogText, textFileLogObserver
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from metagateway.observability.accesslog import AccessLog, TextLines
from metagateway.observability.loglines import JSON_FIELDS
from metagateway.testing import (
    PASSWORD,
    USERNAME,
    ChannelHarness,
    FakeResponse,
    post_head,
)

#: The start of a line ``twistd`` writes: its time, to the second.
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} ")

#: The trace id ending a text line.
TRACE = re.compile(r" trace=[0-9a-f]{32}$", re.M)


def drive(harness: ChannelHarness) -> None:
    """
    Send the same mix of requests through ``harness``: proxied with a
    token and a client-chosen request id holding a space and a ``%``, a
    404, the health check, an upstream that refuses, logins that pass and
    fail, a method and a path with awkward bytes, and a client that leaves
    part-way through its body.
    """
    token = harness.gateway.tokens.issue(USERNAME, "BUILD", ["admin"], "production")
    auth = b"Authorization: Bearer " + token.encode() + b"\r\n"
    harness.send(
        post_head(b"/build/a?token=x", 5, auth + b"X-Request-Id: a b%c\r\n") + b"hello"
    )
    harness.clock.advance(0.0125)
    harness.agent.calls[-1].answer(FakeResponse(201, Headers(), length=0)).finish()
    # Request ids are random unless the client sends one.
    harness.send(b"GET /nowhere HTTP/1.1\r\nHost: g\r\nX-Request-Id: 2\r\n\r\n")
    harness.send(b"HEAD /health HTTP/1.1\r\nHost: g\r\nX-Request-Id: 3\r\n\r\n")
    harness.send(
        b"GET /build/x HTTP/1.1\r\nHost: g\r\nX-Request-Id: 4\r\n" + auth + b"\r\n"
    )
    harness.agent.calls[-1].fail(ConnectionRefusedError())
    for index, password in enumerate((PASSWORD, "wrong")):
        body = json.dumps({"username": USERNAME, "password": password}).encode()
        harness.send(
            post_head(
                b"/auth/login",
                len(body),
                b"Content-Type: application/json\r\nX-Request-Id: 5.%d\r\n" % (index,),
            )
            + body
        )
    harness.send(b"PURGE /%7e/a%20b HTTP/1.1\r\nHost: g\r\nX-Request-Id: 6\r\n\r\n")
    _, channel = harness.connect()
    channel.dataReceived(
        post_head(b"/build/up", 10, auth + b"X-Request-Id: 7\r\n") + b"abc"
    )
    channel.connectionLost(Failure(ConnectionDone()))


class TextLinesTests(SynchronousTestCase):
    """
    :class:`TextLines` and the buffered ``text`` access log.
    """

    def old_and_new(self) -> tuple[list[str], list[str]]:
        """
        The lines of :func:`drive`'s requests as ``twistd``'s text observer
        wrote their events (the old path), and as the buffered text log
        writes them.
        """
        old = io.StringIO()
        harness = ChannelHarness()
        harness.gateway.recorder.access_log = AccessLog(
            "text", observer=textFileLogObserver(old)
        )
        drive(harness)
        new = io.StringIO()
        harness = ChannelHarness()
        access_log = AccessLog("text", new, clock=Clock())
        harness.gateway.recorder.access_log = access_log
        drive(harness)
        self.assertEqual(new.getvalue(), "")
        access_log.flush()
        return old.getvalue().splitlines(True), new.getvalue().splitlines(True)

    def test_same_lines(self) -> None:
        """
        For the same requests, the buffered text log writes the lines the
        old path wrote, less their time (the wall clock at each request).
        """
        old, new = self.old_and_new()
        self.assertEqual(len(old), 8)
        for line in old + new:
            self.assertRegex(line, TIME)
            self.assertTrue(line.endswith("\n"))

        # The wall clock's second may tick between the two runs, and each
        # request starts a trace of its own (a random id) in each run.
        def same(line: str) -> str:
            return TRACE.sub(" trace=T", TIME.sub("", line))

        for line in new:
            self.assertRegex(line, TRACE)
        self.assertEqual([same(x) for x in old], [same(x) for x in new])
        joined = "".join(new)
        for text in (
            " [metagateway.access#info] 10.0.0.7 ",
            ' "POST /build/a" BUILD 201 in=5 out=0 12.5ms upstream=201 error=- ',
            "subject=%s id=a%%20b%%25c trace=" % (USERNAME,),
            "upstream=unavailable error=UPSTREAM_UNAVAILABLE",
            "AUTH 401 in=",
            "error=CLIENT_CLOSED",
            " 499 ",
        ):
            self.assertIn(text, joined)

    def test_same_text_for_an_event(self) -> None:
        """
        Formatting an event's fields, with its time, gives exactly what
        ``formatEventAsClassicLogText`` (``twistd``'s text log) gives for
        the event, in every second of a day (the time's text is remade
        when the second changes).
        """
        events: list[dict[str, Any]] = []
        harness = ChannelHarness()
        harness.gateway.recorder.access_log = AccessLog(
            "text",
            observer=events.append,  # type: ignore[arg-type]
        )
        drive(harness)
        lines = TextLines()
        for index, event in enumerate(events):
            for when in (1.8e9 + index * 3600.5, 1.8e9 + index * 3600.75):
                event["log_time"] = when
                self.assertEqual(lines(event), formatEventAsClassicLogText(event))
                fields = tuple(event[name] for name in JSON_FIELDS)
                self.assertEqual(
                    lines.request_line(when, fields), formatEventAsClassicLogText(event)
                )

    def test_newline_in_value(self) -> None:
        """
        A newline inside the text (a subject, say) is followed by a tab, as
        ``twistd`` writes it, so the next line cannot pass for a record.
        """
        fields = ("id", "c", "GET", "/", "AUTH", 200, 0, 1, 1.0, None, None, None)
        trace = "0af7651916cd43dd8448eb211c80319c"
        line = TextLines().request_line(0.0, fields + ("a\nb", trace))
        self.assertTrue(line.endswith("subject=a\n\tb id=id trace=%s\n" % (trace,)))
        self.assertEqual(line.count("\n"), 2)

    def test_buffered(self) -> None:
        """
        A buffered text log writes nothing until its delay has passed, then
        every line at once; nothing goes to the global log publisher.
        """
        from twisted.logger import globalLogPublisher

        seen: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(seen.append)  # type: ignore[arg-type]
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)  # type: ignore[arg-type]
        out = io.StringIO()
        clock = Clock()
        harness = ChannelHarness()
        harness.gateway.recorder.access_log = AccessLog(
            "text", out, clock=clock, flush_delay=0.5
        )
        harness.send(b"GET /health HTTP/1.1\r\nHost: g\r\n\r\n")
        self.assertEqual(out.getvalue(), "")
        clock.advance(0.5)
        self.assertIn('"GET /health" HEALTH 200', out.getvalue())
        self.assertEqual(
            [e for e in seen if e.get("log_namespace") == "metagateway.access"], []
        )

    def test_unbuffered_stream(self) -> None:
        """
        Given a stream and no clock, a text log writes each line as it
        comes, in the same form.
        """
        out = io.StringIO()
        harness = ChannelHarness()
        harness.gateway.recorder.access_log = AccessLog("text", out)
        harness.send(b"GET /health HTTP/1.1\r\nHost: g\r\n\r\n")
        self.assertRegex(out.getvalue(), TIME)
        self.assertIn(
            ' [metagateway.access#info] 10.0.0.7 "GET /health" HEALTH 200 ',
            out.getvalue(),
        )
