"""
Tests for :mod:`metagateway.observability.tracing` (W3C trace context) and
:mod:`metagateway.observability.otel` (the OpenTelemetry bridge).
"""

from __future__ import annotations

import json
import re
from typing import Any, Optional

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from metagateway.observability.accesslog import AccessLog
from metagateway.observability.otel import (
    OpenTelemetryTracing,
    TracingRecorder,
    exporter_configured,
    tracing_from_environ,
)
from metagateway.observability.tracing import (
    TraceContext,
    new_span_id,
    new_trace_id,
    parse_traceparent,
    start_trace,
)
from metagateway.testing import (
    PASSWORD,
    USERNAME,
    ChannelHarness,
    FakeResponse,
    GatewayHarness,
)

try:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
        InMemorySpanExporter,
    )
    from opentelemetry.trace import SpanKind, StatusCode

    OTEL: Optional[str] = None
except ImportError:  # pragma: no cover
    OTEL = "the otel extra (opentelemetry-sdk) is not installed"

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
VALID = ("00-%s-%s-01" % (TRACE, PARENT)).encode()
NEW_TRACE = re.compile(rb"\A00-[0-9a-f]{32}-[0-9a-f]{16}-01\Z")


def get(path: bytes, headers: bytes = b"") -> bytes:
    """
    A ``GET`` request's bytes.
    """
    return b"GET " + path + b" HTTP/1.1\r\nHost: gateway.test\r\n" + headers + b"\r\n"


class ParseTests(SynchronousTestCase):
    """
    :func:`parse_traceparent` follows W3C Trace Context.
    """

    def test_valid(self) -> None:
        """
        A version-00 value gives its trace id, parent id and flags.
        """
        self.assertEqual(parse_traceparent(VALID), (TRACE, PARENT, "01"))
        self.assertEqual(parse_traceparent(VALID[:-2] + b"00"), (TRACE, PARENT, "00"))

    def test_surrounding_whitespace(self) -> None:
        """
        Spaces and tabs around the value (optional whitespace) are allowed.
        """
        self.assertEqual(
            parse_traceparent(b" \t" + VALID + b" "), (TRACE, PARENT, "01")
        )

    def test_invalid(self) -> None:
        """
        Every malformed value is refused: wrong lengths, upper-case or
        non-hex digits, missing or extra fields, other separators.
        """
        for value in [
            b"",
            b"00",
            VALID[:-1],
            VALID + b"0",
            VALID + b"-extra",
            VALID.upper(),
            VALID.replace(b"4bf9", b"4BF9"),
            VALID.replace(b"4bf9", b"4bg9"),
            VALID.replace(b"-01", b"-0x"),
            VALID.replace(b"-", b"_"),
            b"00-%s-%s" % (TRACE.encode(), PARENT.encode()),
            b"00-%s-%s-01" % (TRACE[:-1].encode(), PARENT.encode()),
            b"00-%s-%s-01" % (TRACE.encode(), PARENT[:-1].encode()),
            b"0-%s-%s-01" % (TRACE.encode(), PARENT.encode()),
            b"000-%s-%s-01" % (TRACE.encode(), PARENT.encode()),
            VALID + b"\n",
            b"\x00" + VALID,
        ]:
            self.assertIsNone(parse_traceparent(value), value)

    def test_version_ff(self) -> None:
        """
        Version ``ff`` is forbidden.
        """
        self.assertIsNone(parse_traceparent(b"ff" + VALID[2:]))

    def test_future_version(self) -> None:
        """
        A later version is read for its version-00 fields, and may carry
        more after a ``-`` (but not run on without one).
        """
        later = b"cc" + VALID[2:]
        self.assertEqual(parse_traceparent(later), (TRACE, PARENT, "01"))
        self.assertEqual(
            parse_traceparent(later + b"-what-comes-next"), (TRACE, PARENT, "01")
        )
        self.assertIsNone(parse_traceparent(later + b"x"))

    def test_zero_ids(self) -> None:
        """
        An all-zero trace id or parent id is invalid.
        """
        self.assertIsNone(
            parse_traceparent(b"00-%s-%s-01" % (b"0" * 32, PARENT.encode()))
        )
        self.assertIsNone(
            parse_traceparent(b"00-%s-%s-01" % (TRACE.encode(), b"0" * 16))
        )


class StartTests(SynchronousTestCase):
    """
    :func:`start_trace` continues a caller's trace or starts one.
    """

    def test_continued(self) -> None:
        """
        A valid ``traceparent`` is continued: same trace id and flags, the
        caller's span as parent, a new span id of the gateway's own, and
        the ``tracestate`` kept (several headers joined).
        """
        headers = Headers(
            {
                b"traceparent": [VALID[:-2] + b"00"],
                b"tracestate": [b"a=1,b=2", b"c=3"],
            }
        )
        trace = start_trace(headers)
        self.assertEqual(
            (trace.trace_id, trace.parent_id, trace.flags, trace.state),
            (TRACE, PARENT, "00", b"a=1,b=2,c=3"),
        )
        self.assertRegex(trace.span_id, r"\A[0-9a-f]{16}\Z")
        self.assertNotEqual(trace.span_id, PARENT)
        self.assertEqual(
            trace.traceparent(), ("00-%s-%s-00" % (TRACE, trace.span_id)).encode()
        )

    def test_future_version_sent_as_00(self) -> None:
        """
        A later version is continued as version ``00``.
        """
        trace = start_trace(Headers({b"traceparent": [b"cc" + VALID[2:] + b"-x"]}))
        self.assertTrue(trace.traceparent().startswith(b"00-" + TRACE.encode()))

    def test_new_trace(self) -> None:
        """
        Without a valid ``traceparent``, a new trace starts (sampled), and
        an incoming ``tracestate`` is dropped with the invalid parent.
        """
        for headers in [
            Headers(),
            Headers({b"traceparent": [b"ff" + VALID[2:]], b"tracestate": [b"a=1"]}),
            Headers({b"traceparent": [VALID, VALID]}),
        ]:
            trace = start_trace(headers)
            self.assertIsNone(trace.parent_id)
            self.assertIsNone(trace.state)
            self.assertNotEqual(trace.trace_id, TRACE)
            self.assertRegex(trace.traceparent(), NEW_TRACE)

    def test_ids(self) -> None:
        """
        New ids are lower-case hex of the right length, and differ.
        """
        traces = {new_trace_id() for _ in range(100)}
        spans = {new_span_id() for _ in range(100)}
        self.assertEqual((len(traces), len(spans)), (100, 100))
        for trace_id in traces:
            self.assertRegex(trace_id, r"\A[0-9a-f]{32}\Z")
        for span_id in spans:
            self.assertRegex(span_id, r"\A[0-9a-f]{16}\Z")

    def test_set_headers(self) -> None:
        """
        :meth:`TraceContext.set_headers` replaces both headers; a new trace
        leaves no ``tracestate``.
        """
        headers = Headers({b"traceparent": [b"x"], b"tracestate": [b"y"]})
        TraceContext(TRACE, PARENT).set_headers(headers)
        self.assertEqual(
            headers.getRawHeaders(b"traceparent"),
            [("00-%s-%s-01" % (TRACE, PARENT)).encode()],
        )
        self.assertFalse(headers.hasHeader(b"tracestate"))


class ProxiedTests(SynchronousTestCase):
    """
    What the upstream gets, and the access log.
    """

    def test_upstream_continues(self) -> None:
        """
        The upstream gets the caller's trace with the gateway's span as
        parent, the same flags, the ``tracestate`` unchanged.
        """
        harness = ChannelHarness()
        harness.send(
            get(
                b"/kv/a",
                b"traceparent: " + VALID[:-2] + b"00\r\n"
                b"tracestate: vendor=x, other=y\r\n",
            )
        )
        [call] = harness.agent.calls
        [sent] = call.headers.getRawHeaders(b"traceparent", [])
        match = re.match(rb"\A00-([0-9a-f]{32})-([0-9a-f]{16})-00\Z", sent)
        assert match is not None, sent
        self.assertEqual(match.group(1), TRACE.encode())
        self.assertNotEqual(match.group(2), PARENT.encode())
        self.assertEqual(
            call.headers.getRawHeaders(b"tracestate"), [b"vendor=x, other=y"]
        )

    def test_upstream_new_trace(self) -> None:
        """
        An invalid ``traceparent`` starts a new trace upstream, and its
        ``tracestate`` is not passed on; so does a missing one.
        """
        harness = ChannelHarness()
        harness.send(
            get(b"/kv/a", b"traceparent: 00-zz-00-01\r\ntracestate: vendor=x\r\n")
        )
        harness.agent.calls[0].answer(FakeResponse(200, Headers(), length=0)).finish()
        harness.send(get(b"/kv/b"))
        first, second = harness.agent.calls
        for call in (first, second):
            [sent] = call.headers.getRawHeaders(b"traceparent", [])
            self.assertRegex(sent, NEW_TRACE)
            self.assertFalse(call.headers.hasHeader(b"tracestate"))
        self.assertNotEqual(
            first.headers.getRawHeaders(b"traceparent"),
            second.headers.getRawHeaders(b"traceparent"),
        )

    def test_trace_of_kept(self) -> None:
        """
        A request's trace context is made once and kept in its notes.
        """
        harness = GatewayHarness()
        harness.request(self, "GET", "/kv/x", headers={"traceparent": VALID.decode()})
        [request] = harness.upstream.requests
        sent = request[2].getRawHeaders(b"traceparent")[0]
        self.assertTrue(sent.startswith(b"00-" + TRACE.encode()))

    def test_access_log_trace_id(self) -> None:
        """
        The access line holds the request's trace id: the caller's when
        continued, else the new one sent upstream.
        """
        events: list[dict[str, Any]] = []
        harness = ChannelHarness()
        harness.gateway.recorder.access_log = _log(events)
        harness.send(get(b"/kv/a", b"traceparent: " + VALID + b"\r\n"))
        harness.agent.calls[0].answer(FakeResponse(200, Headers(), length=0)).finish()
        harness.send(get(b"/kv/b"))
        harness.agent.calls[1].answer(FakeResponse(200, Headers(), length=0)).finish()
        harness.send(get(b"/health"))
        self.assertEqual(events[0]["trace_id"], TRACE)
        [sent] = harness.agent.calls[1].headers.getRawHeaders(b"traceparent", [])
        self.assertEqual(events[1]["trace_id"].encode(), sent.split(b"-")[1])
        self.assertRegex(events[2]["trace_id"], r"\A[0-9a-f]{32}\Z")
        self.assertIn("trace=%s" % (TRACE,), str(events[0]["access_line"]))


def _log(events: list[dict[str, Any]]) -> AccessLog:
    """
    A text access log whose events go to ``events``.
    """
    return AccessLog("text", observer=events.append)  # type: ignore[arg-type]


class EnvironmentTests(SynchronousTestCase):
    """
    Which ``OTEL_*`` settings turn spans on.
    """

    def test_off(self) -> None:
        """
        No exporter named, or one turned off: no spans, nothing imported.
        """
        for environ in [
            {},
            {"OTEL_SERVICE_NAME": "x"},
            {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"},
            {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"},
        ]:
            self.assertIsNone(exporter_configured(environ), environ)
            self.assertIsNone(tracing_from_environ(environ))

    def test_on(self) -> None:
        """
        An OTLP endpoint, or an exporter named, turns spans on.
        """
        self.assertEqual(
            exporter_configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}), "otlp"
        )
        self.assertEqual(
            exporter_configured({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://x"}),
            "otlp",
        )
        self.assertEqual(exporter_configured({"OTEL_TRACES_EXPORTER": "otlp"}), "otlp")
        self.assertEqual(
            exporter_configured({"OTEL_TRACES_EXPORTER": "console"}), "console"
        )

    def test_bridge_made(self) -> None:
        """
        With the extra installed and an endpoint set, a bridge is made.
        """
        if OTEL is not None:
            raise self.skipTest(OTEL)
        tracing = tracing_from_environ(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}
        )
        assert tracing is not None
        self.addCleanup(tracing.shutdown)
        self.assertEqual(
            tracing.provider.resource.attributes["service.name"], "metagateway"
        )


class SpanTests(SynchronousTestCase):
    """
    The spans a gateway records through the bridge.
    """

    def setUp(self) -> None:
        if OTEL is not None:
            raise self.skipTest(OTEL)
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.addCleanup(provider.shutdown)
        self.harness = GatewayHarness()
        gateway = self.harness.gateway
        tracing = OpenTelemetryTracing(provider)
        # The bridge as the daemon gives it: a recorder that opens spans.
        gateway.recorder = TracingRecorder(
            gateway.metrics, self.harness.clock.seconds, None, tracing=tracing
        )
        gateway.root.recorder = gateway.recorder

    def spans(self) -> dict[str, Any]:
        """
        The finished spans by name.
        """
        return {span.name: span for span in self.exporter.get_finished_spans()}

    def test_proxied(self) -> None:
        """
        A proxied request makes a server span (route, status, user,
        upstream) continuing the caller's trace, and a client span for the
        upstream call whose id is the upstream's parent.
        """
        token = self.harness.login(self)
        self.exporter.clear()
        response, _ = self.harness.request(
            self,
            "GET",
            "/build/x?q=1",
            headers={"traceparent": VALID.decode(), "Authorization": "Bearer " + token},
        )
        self.assertEqual(response.code, 200)
        spans = self.spans()
        server = spans["GET BUILD"]
        client = spans["upstream"]
        self.assertEqual(server.kind, SpanKind.SERVER)
        self.assertEqual(client.kind, SpanKind.CLIENT)
        self.assertEqual("%032x" % (server.context.trace_id,), TRACE)
        self.assertEqual("%016x" % (server.parent.span_id,), PARENT)
        self.assertEqual(client.parent.span_id, server.context.span_id)
        attributes = dict(server.attributes)
        self.assertEqual(attributes["metagateway.route"], "BUILD")
        self.assertEqual(attributes["http.response.status_code"], 200)
        self.assertEqual(attributes["enduser.id"], USERNAME)
        self.assertTrue(attributes["metagateway.upstream"].endswith("/x"))
        self.assertNotIn("q=1", attributes["metagateway.upstream"])
        self.assertEqual(dict(client.attributes)["http.response.status_code"], 200)
        [request] = self.harness.upstream.requests
        sent = request[2].getRawHeaders(b"traceparent")[0]
        self.assertEqual(
            sent, ("00-%s-%016x-01" % (TRACE, client.context.span_id)).encode()
        )

    def test_login(self) -> None:
        """
        A login's server span has child spans for the credential lookup
        and the password check.
        """
        response, body = self.harness.request(
            self,
            "POST",
            "/auth/login",
            data=json.dumps({"username": USERNAME, "password": PASSWORD}).encode(),
        )
        self.assertEqual(response.code, 200, body)
        spans = self.spans()
        server = spans["POST AUTH"]
        for name in ("credentials.lookup", "password.check"):
            self.assertEqual(spans[name].parent.span_id, server.context.span_id)
            self.assertEqual(spans[name].context.trace_id, server.context.trace_id)
        self.assertIsNone(server.parent)
        self.assertEqual(dict(server.attributes)["enduser.id"], USERNAME)

    def test_upstream_failure(self) -> None:
        """
        A failed upstream call ends its span with an error status, and a
        5xx answer marks the server span as an error.
        """
        config_harness = self.harness
        config_harness.gateway.proxies["KV"].agent = _Refusing()  # type: ignore[assignment]
        response, _ = config_harness.request(self, "GET", "/kv/x")
        self.assertEqual(response.code, 502)
        spans = self.spans()
        self.assertEqual(spans["upstream"].status.status_code, StatusCode.ERROR)
        self.assertEqual(spans["GET KV"].status.status_code, StatusCode.ERROR)


class _Refusing:
    """
    An agent whose every connection is refused.
    """

    def request(self, *args: Any, **kwargs: Any) -> Any:
        """
        Fail at once, as a refused connection does.
        """
        from twisted.internet.defer import fail
        from twisted.internet.error import ConnectionRefusedError

        return fail(ConnectionRefusedError())


class CredentialStoreTraceTests(SynchronousTestCase):
    """
    The credential store's calls carry the login's trace.
    """

    def test_r2_lookup(self) -> None:
        """
        A login's R2 lookup sends the login's ``traceparent``: its trace,
        the gateway's span as parent. Other R2 calls send none.
        """
        from metagateway.auth.passwords import make_record
        from metagateway.credentials.r2 import R2CredentialStore
        from metagateway.testing import FakeS3, StubTreq
        from metagateway.testing.s3 import SETTINGS

        harness = GatewayHarness()
        s3 = FakeS3(harness.clock)
        store = R2CredentialStore(SETTINGS, StubTreq(s3), harness.clock)  # type: ignore[arg-type]
        s3.objects["auth/admins/%s.json" % (USERNAME,)] = make_record(
            USERNAME, PASSWORD, "admin"
        ).to_json()
        harness.gateway.auth.store = store
        response, body = harness.request(
            self,
            "POST",
            "/auth/login",
            data=json.dumps({"username": USERNAME, "password": PASSWORD}).encode(),
            headers={"traceparent": VALID.decode()},
        )
        self.assertEqual(response.code, 200, body)
        [(method, _, headers)] = s3.requests
        self.assertEqual(method, "GET")
        sent = {k.lower(): v for k, v in headers.items()}["traceparent"]
        self.assertRegex(sent, r"\A00-%s-[0-9a-f]{16}-01\Z" % (TRACE,))
        self.assertNotIn(PARENT, sent)
        self.successResultOf(store.lookup(USERNAME))
        harness.clock.advance(0)
        later = {k.lower() for k in s3.requests[-1][2]}
        self.assertNotIn("traceparent", later)
