"""
Tests for :mod:`metagateway.observability.accesslog`: one event per request with the
fields operators need, and never a token, an ``Authorization`` value, a
password or a query string; text and JSON forms.
"""

from __future__ import annotations

import io
import json
from typing import Any

from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from metagateway.observability.accesslog import (
    ATOMIC_WRITE,
    NAMESPACE,
    TEXT_FIELDS,
    TEXT_LINE,
    AccessLine,
    AccessLog,
    BufferedLines,
    JSONLines,
    json_line,
    logged_path,
)
from metagateway.testing import (
    PASSWORD,
    SECRET,
    USERNAME,
    ChannelHarness,
    FakeResponse,
    GatewayHarness,
    chunk,
    post_head,
)

#: A trace id a client sends in its ``traceparent``.
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def get(path: bytes, headers: bytes = b"") -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: gateway.test\r\n" + headers + b"\r\n"


class Events:
    """
    An access log whose events are kept in a list.
    """

    def __init__(self, form: str = "text") -> None:
        self.events: list[dict[str, Any]] = []
        self.access_log = AccessLog(form, observer=self.events.append)  # type: ignore[arg-type]

    def one(self, case: SynchronousTestCase) -> dict[str, Any]:
        case.assertEqual(len(self.events), 1, self.events)
        return self.events[0]


def channel_harness(form: str = "text", **config: Any) -> tuple[ChannelHarness, Events]:
    """
    A gateway behind its own ``Site`` (see ``tests/unit/test_streaming.py``) whose
    access log is kept.
    """
    harness = ChannelHarness(**config)
    events = Events(form)
    harness.gateway.recorder.access_log = events.access_log
    return harness, events


def assert_clean(case: SynchronousTestCase, text: str, *secrets: str) -> None:
    """
    Assert ``text`` holds none of ``secrets``, no bearer token and no
    query string.
    """
    for secret in (SECRET, PASSWORD, "Bearer", "eyJ", "?") + secrets:
        case.assertNotIn(secret, text)


class ProxiedRequestTests(SynchronousTestCase):
    """
    The event of a proxied request.
    """

    def setUp(self) -> None:
        self.harness, self.events = channel_harness()
        self.token = self.harness.gateway.tokens.issue(
            USERNAME, "BUILD", ["admin"], "production"
        )

    def send(self, request: bytes) -> None:
        self.harness.send(request)

    def test_fields(self) -> None:
        """
        A proxied request's event names the request id, client, method,
        path without the query, route, status, bytes both ways, duration,
        upstream status and the token's subject.
        """
        self.send(
            post_head(
                b"/build/a/b?token=query-secret&password=query-password",
                5,
                b"Authorization: Bearer " + self.token.encode() + b"\r\n",
            )
            + b"hello"
        )
        call = self.harness.agent.calls[0]
        call.start_body()
        self.harness.clock.advance(0.25)
        response = call.answer(FakeResponse(201, Headers(), length=4))
        response.send(b"done")
        response.finish()
        answer = self.harness.response()
        self.assertEqual(answer.code, 201)
        event = self.events.one(self)
        self.assertEqual(event["log_namespace"], NAMESPACE)
        [sent_id] = call.headers.getRawHeaders(b"x-request-id")  # type: ignore[misc]
        self.assertEqual(event["request_id"], sent_id.decode())
        self.assertEqual(event["client"], "10.0.0.7")
        self.assertEqual(event["method"], "POST")
        self.assertEqual(event["path"], "/build/a/b")
        self.assertEqual(event["route"], "BUILD")
        self.assertEqual(event["status"], 201)
        self.assertEqual(event["bytes_in"], 5)
        self.assertEqual(event["bytes_out"], 4)
        self.assertEqual(event["duration_ms"], 250.0)
        self.assertEqual(event["upstream"], 201)
        self.assertEqual(event["upstream_status"], 201)
        self.assertIsNone(event["error"])
        self.assertEqual(event["subject"], USERNAME)
        text = formatEvent(event)
        self.assertIn('10.0.0.7 "POST /build/a/b" BUILD 201 in=5 out=4', text)
        self.assertIn("subject=%s" % (USERNAME,), text)
        assert_clean(self, text, self.token, "query-secret", "query-password")

    def test_chunked_body_counted(self) -> None:
        """
        A chunked body streamed upstream is counted as it was received.
        """
        self.send(post_head(b"/kv/x", None) + chunk(b"abc") + chunk(b"de") + chunk(b""))
        call = self.harness.agent.calls[0]
        call.start_body()
        call.answer(FakeResponse(200, Headers(), length=0)).finish()
        self.assertEqual(self.events.one(self)["bytes_in"], 5)

    def test_refused_mid_body(self) -> None:
        """
        A body refused part-way (a malformed chunk) is logged with the
        ``400 BAD_REQUEST`` the client was answered, not as a client that
        went away.
        """
        self.send(post_head(b"/kv/x", None) + chunk(b"abc") + b"zz\r\n")
        event = self.events.one(self)
        self.assertEqual((event["status"], event["error"]), (400, "BAD_REQUEST"))
        self.assertIn(b"400", self.harness.transport.value().split(b"\r\n")[0])

    def test_token_refused(self) -> None:
        """
        A refused token: the error code, no subject, no upstream.
        """
        self.send(get(b"/build/x", b"Authorization: Bearer not-a-token\r\n"))
        event = self.events.one(self)
        self.assertEqual(
            (event["status"], event["error"], event["subject"], event["upstream"]),
            (403, "INVALID_TOKEN", None, None),
        )
        assert_clean(self, formatEvent(event), "not-a-token")

    def test_upstream_refused(self) -> None:
        """
        An upstream that refuses the connection reads ``upstream=unavailable``.
        """
        self.send(get(b"/kv/x"))
        self.harness.agent.calls[0].fail(ConnectionRefusedError())
        event = self.events.one(self)
        self.assertEqual(event["upstream"], "unavailable")
        self.assertEqual(event["error"], "UPSTREAM_UNAVAILABLE")
        self.assertEqual(event["status"], 502)
        self.flushLoggedErrors()

    def test_upstream_timeout(self) -> None:
        """
        An upstream that does not answer in time reads ``upstream=timeout``.
        """
        self.send(get(b"/kv/x"))
        self.harness.clock.advance(31)
        event = self.events.one(self)
        self.assertEqual((event["status"], event["upstream"]), (504, "timeout"))

    def test_upstream_breaks_off(self) -> None:
        """
        An upstream body that breaks off reads ``upstream=truncated``.
        """
        self.send(get(b"/kv/x"))
        response = self.harness.agent.calls[0].answer(
            FakeResponse(200, Headers(), length=10)
        )
        response.send(b"abc")
        response.break_off()
        # The gateway aborted the client's connection.
        self.assertTrue(self.harness.transport.disconnecting)
        self.harness.channel.connectionLost(Failure(ConnectionDone()))
        event = self.events.one(self)
        self.assertEqual((event["status"], event["upstream"]), (200, "truncated"))
        self.assertEqual((event["upstream_status"], event["error"]), (200, None))
        self.flushLoggedErrors()

    def test_client_gone(self) -> None:
        """
        A client that leaves before the answer: status ``499`` and
        ``CLIENT_CLOSED``.
        """
        self.send(get(b"/kv/x"))
        self.harness.channel.connectionLost(Failure(ConnectionDone()))
        event = self.events.one(self)
        self.assertEqual((event["status"], event["error"]), (499, "CLIENT_CLOSED"))

    def test_unhandled_path(self) -> None:
        """
        A path no route handles is logged under route ``CORE``, the
        ``route`` of its ``404`` body.
        """
        self.send(get(b"/nowhere?x=1"))
        event = self.events.one(self)
        self.assertEqual(
            (event["route"], event["status"], event["path"]),
            ("CORE", 404, "/nowhere"),
        )

    def test_preflight(self) -> None:
        """
        An ``OPTIONS`` preflight is logged under route ``PREFLIGHT``.
        """
        self.send(b"OPTIONS /build/x HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
        event = self.events.one(self)
        self.assertEqual((event["route"], event["status"]), ("PREFLIGHT", 204))


class JSONTests(SynchronousTestCase):
    """
    ``--access-log json``: one JSON object per line.
    """

    #: the event keys of a line and their JSON names, in order.
    KEYS = [
        ("request_id", "requestId"),
        ("client", "client"),
        ("method", "method"),
        ("path", "path"),
        ("route", "route"),
        ("status", "status"),
        ("bytes_in", "bytesIn"),
        ("bytes_out", "bytesOut"),
        ("duration_ms", "durationMs"),
        ("upstream_status", "upstreamStatus"),
        ("upstream_error", "upstreamError"),
        ("error", "error"),
        ("subject", "subject"),
        ("trace_id", "traceId"),
    ]

    def test_line(self) -> None:
        """
        A JSON line carries every field under its JSON name, ``null`` for
        what is missing, and a timestamp.
        """
        harness, events = channel_harness("json")
        harness.send(
            get(
                b"/kv/a?secret=1",
                b"X-Request-Id: abc-123\r\n"
                b"traceparent: 00-" + TRACE.encode() + b"-00f067aa0ba902b7-01\r\n",
            )
        )
        harness.agent.calls[0].answer(FakeResponse(200, Headers(), length=0)).finish()
        line = json_line(events.one(self))
        self.assertTrue(line.endswith("\n"))
        self.assertEqual(line.count("\n"), 1)
        document = json.loads(line)
        self.assertEqual(
            {k: v for k, v in document.items() if k not in ("time", "durationMs")},
            {
                "requestId": "abc-123",
                "client": "10.0.0.7",
                "method": "GET",
                "path": "/kv/a",
                "route": "KV",
                "status": 200,
                "bytesIn": 0,
                "bytesOut": 0,
                "upstreamStatus": 200,
                "upstreamError": None,
                "error": None,
                "subject": None,
                "traceId": TRACE,
            },
        )
        self.assertRegex(document["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertIsInstance(document["durationMs"], float)

    def test_same_as_json_dumps(self) -> None:
        """
        A line is byte for byte what ``json.dumps`` with compact separators
        writes, for awkward values too: quotes, backslashes, control and
        non-ASCII characters, big and negative numbers, floats, and types
        an event does not usually hold.
        """
        values: list[Any] = [
            None,
            "",
            'a"b\\c',
            "\x00\x1f\n\t\u2028é😀",
            0,
            -1,
            2**70,
            0.1,
            1e-7,
            123456789.125,
            float("nan"),
            float("inf"),
            True,
            False,
            ["x", 1],
        ]
        for offset in range(len(values)):
            event: dict[str, Any] = {"log_time": 1700000000.25}
            expected: dict[str, Any] = {"time": "2023-11-14T22:13:20.250Z"}
            for i, (key, name) in enumerate(self.KEYS):
                event[key] = expected[name] = values[(offset + i) % len(values)]
            self.assertEqual(
                json_line(event),
                json.dumps(expected, separators=(",", ":")) + "\n",
            )

    def test_request_line_same_as_line(self) -> None:
        """
        The recorder's direct formatting writes what :meth:`JSONLines.line`
        writes (so what ``json.dumps`` writes), with its optional fields
        set or ``None``, awkward texts, and, falling back to ``line``,
        fields of other types than the recorder's (a non-finite or whole
        duration, a float status, a text byte count).
        """
        lines = JSONLines()
        base = (
            "6f1c2a9e-0000-4000-8000-000000000000",
            "127.0.0.1",
            "GET",
            "/build/x",
            "BUILD",
            200,
            0,
            53,
            0.412,
            200,
            None,
            None,
            "benchuser",
            TRACE,
        )
        variants = [
            base,
            base[:6]
            + (None, 0, 1e-7, None, "truncated", "UPSTREAM_TIMEOUT", None, TRACE),
            ('a"b\\c', "::1", "PÖST", "/\x00\u2028é😀", "NONE", 499)
            + (2**70, -1, 123456789.125, 502, None, "CLIENT_CLOSED", "é", 'é"\\'),
            base[:8] + (float("nan"),) + base[9:],
            base[:8] + (float("-inf"),) + base[9:],
            base[:8] + (3,) + base[9:],
            base[:5] + (200.5,) + base[6:],
            base[:6] + ("12",) + base[7:],
        ]
        for fields in variants:
            expected = lines.line(1700000000.25, fields)
            self.assertEqual(lines.request_line(1700000000.25, fields), expected)
            document = {"time": "2023-11-14T22:13:20.250Z"}
            document.update(zip([n for _, n in self.KEYS], fields))  # type: ignore[arg-type]
            self.assertEqual(
                expected, json.dumps(document, separators=(",", ":")) + "\n"
            )
        # The usual fields are written directly, not through line().
        usual = lines.request_line(1700000000.25, variants[0])
        lines.line = lambda *args: self.fail("fell back")  # type: ignore[method-assign]
        for fields in variants[:3]:
            lines.request_line(1700000000.25, fields)
        self.assertIn('"status":200,', usual)

    def test_stream(self) -> None:
        """
        A JSON access log writes each event to its stream as one line.
        """
        out = io.StringIO()
        harness = ChannelHarness()
        harness.gateway.recorder.access_log = AccessLog("json", out)
        harness.send(get(b"/nowhere"))
        harness.send(get(b"/health"))
        lines = out.getvalue().splitlines()
        self.assertEqual(
            [json.loads(line)["route"] for line in lines], ["CORE", "HEALTH"]
        )

    def test_buffered_stream(self) -> None:
        """
        Given a clock, a JSON access log holds its lines for at most its
        delay, then writes them; :meth:`AccessLog.flush` writes what waits.
        """
        out = io.StringIO()
        clock = Clock()
        harness = ChannelHarness()
        access_log = AccessLog("json", out, clock=clock, flush_delay=0.5)
        harness.gateway.recorder.access_log = access_log
        harness.send(get(b"/nowhere"))
        harness.send(get(b"/health"))
        self.assertEqual(out.getvalue(), "")
        clock.advance(0.5)
        lines = out.getvalue().splitlines()
        self.assertEqual(
            [json.loads(line)["route"] for line in lines], ["CORE", "HEALTH"]
        )
        harness.send(get(b"/nowhere"))
        access_log.flush()
        self.assertEqual(len(out.getvalue().splitlines()), 3)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_buffered_same_fields(self) -> None:
        """
        A buffered JSON log writes its lines straight from the request's
        fields, with the same values as the line made from its event.
        """
        lines = []
        for clock in (None, Clock()):
            out = io.StringIO()
            harness = ChannelHarness()
            access_log = AccessLog("json", out, clock=clock)
            harness.gateway.recorder.access_log = access_log
            token = harness.gateway.tokens.issue(
                USERNAME, "BUILD", ["admin"], "production"
            )
            harness.send(
                post_head(
                    b"/build/a/%2e%2e/b?token=x",
                    5,
                    b"Authorization: Bearer " + token.encode() + b"\r\n"
                    b"X-Request-Id: same-id\r\n"
                    b"traceparent: 00-" + TRACE.encode() + b"-00f067aa0ba902b7-01\r\n",
                )
                + b"hello"
            )
            harness.agent.calls[0].answer(
                FakeResponse(201, Headers(), length=0)
            ).finish()
            access_log.flush()
            [line] = out.getvalue().splitlines()
            document = json.loads(line)
            self.assertRegex(
                document.pop("time"), r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"
            )
            self.assertIsInstance(document.pop("durationMs"), float)
            lines.append(document)
        self.assertEqual(lines[0], lines[1])
        self.assertEqual(
            lines[1],
            {
                "requestId": "same-id",
                "client": "10.0.0.7",
                "method": "POST",
                "path": "/build/a/%2e%2e/b",
                "route": "BUILD",
                "status": 201,
                "bytesIn": 5,
                "bytesOut": 0,
                "upstreamStatus": 201,
                "upstreamError": None,
                "error": None,
                "subject": USERNAME,
                "traceId": TRACE,
            },
        )

    def test_bad_form(self) -> None:
        """
        Only ``text`` and ``json`` are forms; JSON needs a stream.
        """
        self.assertRaises(ValueError, AccessLog, "xml")
        self.assertRaises(ValueError, AccessLog, "json")


class LoginTests(SynchronousTestCase):
    """
    Logins are logged with the subject on success, and never the password.
    """

    def setUp(self) -> None:
        self.harness = GatewayHarness()
        self.events = Events()
        self.harness.gateway.recorder.access_log = self.events.access_log

    def login(self, password: str) -> Any:
        return self.harness.request(
            self,
            "POST",
            "/auth/login?next=/x",
            data=json.dumps({"username": USERNAME, "password": password}).encode(),
        )

    def test_success(self) -> None:
        """
        A login's event names the user (the new token's subject), never the
        password or the token.
        """
        response, body = self.login(PASSWORD)
        self.assertEqual(response.code, 200)
        event = self.events.one(self)
        self.assertEqual(
            (event["route"], event["status"], event["subject"], event["path"]),
            ("AUTH", 200, USERNAME, "/auth/login"),
        )
        assert_clean(self, formatEvent(event), json.loads(body)["token"])

    def test_failure(self) -> None:
        """
        A failed login has its error code and no subject.
        """
        self.login("wrong password")
        event = self.events.one(self)
        self.assertEqual(
            (event["status"], event["error"], event["subject"]),
            (401, "INVALID_CREDENTIALS", None),
        )
        assert_clean(self, formatEvent(event), "wrong password")

    def test_session(self) -> None:
        """
        ``/core/session`` logs the verified token's subject.
        """
        token = self.harness.login(self)
        self.harness.request(
            self, "GET", "/core/session", headers={"Authorization": "Bearer " + token}
        )
        event = self.events.events[-1]
        self.assertEqual((event["route"], event["subject"]), ("AUTH", USERNAME))
        assert_clean(self, formatEvent(event), token)


class OffTests(SynchronousTestCase):
    """
    ``--access-log off``.
    """

    def test_nothing_emitted(self) -> None:
        """
        Without an access log no event is emitted, and the request is still
        counted in the metrics.
        """
        harness = GatewayHarness()
        self.assertIsNotNone(harness.gateway.recorder.access_log)
        harness.gateway.recorder.access_log = None
        from twisted.logger import globalLogPublisher

        seen: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(seen.append)  # type: ignore[arg-type]
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)  # type: ignore[arg-type]
        harness.request(self, "GET", "/health")
        self.assertEqual([e for e in seen if e.get("log_namespace") == NAMESPACE], [])
        self.assertEqual(
            harness.gateway.metrics.requests, {("HEALTH", "GET", "2xx"): 1}
        )


class FormatTests(SynchronousTestCase):
    """
    How paths and missing values read.
    """

    def test_missing_values(self) -> None:
        """
        The text form reads ``-`` for what is missing.
        """
        harness, events = channel_harness()
        harness.send(get(b"/health"))
        self.assertRegex(
            formatEvent(events.one(self)),
            r'^10\.0\.0\.7 "GET /health" HEALTH 200 in=0 out=\d+ \d+\.\dms '
            r"upstream=- error=- subject=- id=[0-9a-f-]{36} trace=[0-9a-f]{32}$",
        )

    def test_text_line(self) -> None:
        """
        The text line is made of fields every event has, and is formatted
        only when asked.
        """
        harness, events = channel_harness()
        harness.send(get(b"/health"))
        event = events.one(self)
        line = event["access_line"]
        self.assertIsInstance(line, AccessLine)
        self.assertEqual(line.values, tuple(event[name] for name in TEXT_FIELDS))
        self.assertEqual(TEXT_LINE.count("%"), len(TEXT_FIELDS))
        self.assertEqual(formatEvent(event), str(line))

    def test_text_values_one_word(self) -> None:
        """
        A request id, subject or forwarded address holding spaces cannot
        pass for other fields of the text line: spaces are written ``%20``
        (and ``%`` as ``%25``); the path is left as it is.
        """
        values = list(TEXT_FIELDS)
        line = AccessLine(
            (
                "1.2.3.4 x",
                "GET",
                "/kv/a%2Fb",
                "KV",
                200,
                0,
                2,
                1.0,
                200,
                None,
                "eve subject=root",
                "abc def id=forged 100%",
                TRACE,
            )
        )
        self.assertEqual(len(line.values), len(values))
        self.assertEqual(
            str(line),
            '1.2.3.4%20x "GET /kv/a%2Fb" KV 200 in=0 out=2 1.0ms upstream=200 '
            "error=- subject=eve%20subject=root id=abc%20def%20id=forged%20100%25 "
            "trace=" + TRACE,
        )

    def test_json_form_has_no_line(self) -> None:
        """
        JSON events carry the fields only.
        """
        harness, events = channel_harness("json")
        harness.send(get(b"/health"))
        self.assertNotIn("access_line", events.one(self))

    def test_logged_path(self) -> None:
        """
        The logged path has no query, no scheme or host, and no raw control
        or non-ASCII bytes.
        """

        class Target:
            def __init__(self, uri: bytes) -> None:
                self.uri = uri

        cases = [
            (b"/a/b?c=d", "/a/b"),
            (b"http://host.test/kv/x?y=1", "/kv/x"),
            (b"http://host.test", "/"),
            (b"/caf\xc3\xa9", "/caf\\xc3\\xa9"),
            (b"/a\x1bb", "/a\\x1bb"),
            (b"/" + b"x" * 5000 + b"?q", "/" + "x" * 1023 + "..."),
        ]
        for uri, expected in cases:
            self.assertEqual(logged_path(Target(uri)), expected)  # type: ignore[arg-type]


class Writes(io.StringIO):
    """
    A stream that remembers each flushed write.
    """

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []
        self.pending = ""

    def write(self, text: str) -> int:
        self.pending += text
        return len(text)

    def flush(self) -> None:
        if self.pending:
            self.writes.append(self.pending)
        self.pending = ""


class BufferedLinesTests(SynchronousTestCase):
    """
    :class:`BufferedLines` writes whole lines in batches, each write small
    enough to stay atomic on a pipe.
    """

    def observer(self, **kwargs: Any) -> tuple[BufferedLines, Writes, Clock]:
        out, clock = Writes(), Clock()
        return BufferedLines(out, lambda e: e["line"], clock, **kwargs), out, clock

    def test_delay(self) -> None:
        """
        Lines wait for the delay, then go in one write; one timer at a time.
        """
        lines, out, clock = self.observer(delay=1.0)
        lines({"line": "a\n"})
        clock.advance(0.5)
        lines({"line": "b\n"})
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        self.assertEqual(out.writes, [])
        clock.advance(0.5)
        self.assertEqual(out.writes, ["a\nb\n"])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_nothing(self) -> None:
        """
        An event formatted as nothing writes nothing and starts no timer.
        """
        lines, out, clock = self.observer()
        lines({"line": None})
        lines.flush()
        self.assertEqual((out.writes, clock.getDelayedCalls()), ([], []))

    def test_atomic_writes(self) -> None:
        """
        Each write holds whole lines and at most ``ATOMIC_WRITE`` characters
        (a single longer line goes alone).
        """
        lines, out, clock = self.observer()
        line = "x" * 999 + "\n"
        for _ in range(10):
            lines({"line": line})
        lines({"line": "y" * ATOMIC_WRITE + "\n"})
        lines({"line": "z\n"})
        lines.flush()
        self.assertEqual(
            [len(w) for w in out.writes], [4000, 4000, 2000, ATOMIC_WRITE + 1, 2]
        )
        self.assertEqual("".join(out.writes), line * 10 + "y" * ATOMIC_WRITE + "\nz\n")

    def test_max_buffered(self) -> None:
        """
        Past ``max_buffered`` characters, the lines are written at once.
        """
        lines, out, clock = self.observer(max_buffered=10)
        lines({"line": "12345\n"})
        self.assertEqual(out.writes, [])
        lines({"line": "67890\n"})
        self.assertEqual(out.writes, ["12345\n67890\n"])
        self.assertEqual(clock.getDelayedCalls(), [])
