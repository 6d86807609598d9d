"""
Observability through the real daemon: the status page on
``--metrics-listen``, and OpenTelemetry spans exported to a real OTLP/HTTP
receiver started by the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.web.resource import Resource
from twisted.web.server import Site

from metagateway import __version__
from metagateway.testing import SECRET
from tests.daemon import PASSWORD, USER, http_client, serve_world, start_daemon
from tests.integration.test_ops import METRICS_PORT, DaemonCase, wait_for

try:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    NO_OTLP = None
except ImportError:  # pragma: no cover
    NO_OTLP = (
        "the otel extra (opentelemetry-exporter-otlp-proto-http, which brings "
        "opentelemetry-proto) is not installed"
    )

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = "00-%s-00f067aa0ba902b7-01" % (TRACE,)


class StatusDaemonCase(DaemonCase):
    """
    The daemon with ``--metrics-listen``, whose URL is :attr:`metrics`.
    """

    timeout = 60
    options = ("--metrics-listen", "tcp:0:interface=127.0.0.1")

    async def started(self) -> None:
        [match] = await wait_for(self.child, METRICS_PORT)
        self.metrics = "http://127.0.0.1:%d" % (int(match.group(1)),)

    async def document(self) -> dict[str, Any]:
        """
        The daemon's ``/status.json``.
        """
        r = await self.http.get(self.metrics + "/status.json")
        self.assertEqual(r.code, 200)
        self.assertEqual(
            r.headers.getRawHeaders(b"content-type"), [b"application/json"]
        )
        document: dict[str, Any] = json.loads(await r.content())
        return document


class StatusDaemonTests(StatusDaemonCase):
    """
    ``/status`` and ``/status.json`` on the daemon's ``--metrics-listen``.
    """

    def test_status(self) -> Deferred[None]:
        """
        The document names the version, the listener and the route with
        its upstream; after requests, the counts and the rate of the last
        minute show them; the page shows the same and refreshes itself.
        """

        async def go() -> None:
            before = await self.document()
            self.assertEqual(before["version"], __version__)
            self.assertEqual(before["listeners"], ["tcp:0:interface=127.0.0.1"])
            [build] = [r for r in before["routes"] if r["name"] == "BUILD"]
            self.assertEqual(len(build["upstreams"]), 1)
            self.assertTrue(build["upstreams"][0]["healthy"])
            for _ in range(5):
                r = await self.http.get(self.base + "/nowhere")
                await r.content()
            r = await self.http.post(
                self.base + "/auth/login",
                json.dumps({"username": USER, "password": "wrong"}).encode(),
            )
            await r.content()
            await deferLater(reactor, 0.2, lambda: None)
            after = await self.document()
            self.assertEqual(
                after["totals"]["requests"], before["totals"]["requests"] + 6
            )
            self.assertEqual(after["totals"]["loginFailures"], 1)
            self.assertGreater(after["lastMinute"]["requestsPerSecond"], 0)
            self.assertGreater(after["uptime"], before["uptime"])
            r = await self.http.get(self.metrics + "/status")
            self.assertEqual(r.code, 200)
            page = (await r.content()).decode("utf-8")
            self.assertIn('http-equiv="refresh"', page)
            self.assertIn("BUILD", page)
            self.assertNotRegex(page, r"<script|<link|src=")

        return ensureDeferred(go())


class Receiver(Resource):
    """
    An OTLP/HTTP trace receiver: ``POST /v1/traces`` with a protobuf
    ``ExportTraceServiceRequest``, decoded and kept.

    :ivar spans: every span received, with its resource's attributes.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[tuple[dict[str, Any], Any]] = []
        self.paths: list[bytes] = []

    def render_POST(self, request: Any) -> bytes:
        """
        Decode one export.
        """
        self.paths.append(request.path)
        message = ExportTraceServiceRequest()
        message.ParseFromString(request.content.read())
        for resource_spans in message.resource_spans:
            resource = {
                a.key: a.value.string_value for a in resource_spans.resource.attributes
            }
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.spans.append((resource, span))
        request.setHeader(b"Content-Type", b"application/x-protobuf")
        return b""


def attributes(span: Any) -> dict[str, Any]:
    """
    A protobuf span's attributes as a dict.
    """
    found: dict[str, Any] = {}
    for attribute in span.attributes:
        value = attribute.value
        found[attribute.key] = getattr(value, value.WhichOneof("value"))
    return found


class OtlpTests(DaemonCase):
    """
    Spans from the real daemon reach a real OTLP/HTTP receiver.
    """

    timeout = 60

    def setUp(self) -> Any:
        if NO_OTLP is not None:
            raise self.skipTest(NO_OTLP)
        self.receiver = Receiver()
        port = reactor.listenTCP(  # type: ignore[attr-defined]
            0,
            Site(self.receiver),  # type: ignore[arg-type]
            interface="127.0.0.1",
        )
        self.addCleanup(port.stopListening)
        self.endpoint = "http://127.0.0.1:%d" % (port.getHost().port,)  # type: ignore[attr-defined]
        return ensureDeferred(self._start_traced())

    async def _start_traced(self) -> None:
        self.http = http_client(self)
        self.accounts, self.upstream, base = serve_world(self)
        env = {
            "GATEWAY_JWT_SECRET": SECRET,
            "BUILD_SERVICE_URL": base + "/svc",
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint,
            "OTEL_SERVICE_NAME": "gateway-under-test",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        self.child, self.base = await start_daemon(
            self, env, "--accounts-dir", self.accounts.path
        )

    def test_trace_end_to_end(self) -> Deferred[None]:
        """
        A request continuing a client's trace: the receiver gets the
        gateway's server span in that trace (route, status, user) with its
        client span for the upstream call, whose id is the parent the
        upstream was given; a login's span has its lookup and password
        check children.
        """

        async def go() -> None:
            r = await self.http.post(
                self.base + "/auth/login",
                json.dumps({"username": USER, "password": PASSWORD}).encode(),
            )
            token = json.loads(await r.content())["token"]
            r = await self.http.get(
                self.base + "/build/x",
                headers={
                    "traceparent": TRACEPARENT,
                    "tracestate": "vendor=1",
                    "Authorization": "Bearer " + token,
                },
            )
            self.assertEqual(r.code, 200)
            await r.content()
            names: set[str] = set()
            for _ in range(200):
                names = {span.name for _, span in self.receiver.spans}
                if {"GET BUILD", "upstream", "POST AUTH"} <= names:
                    break
                await deferLater(reactor, 0.05, lambda: None)
            self.assertTrue({"GET BUILD", "upstream", "POST AUTH"} <= names, names)
            self.assertEqual(set(self.receiver.paths), {b"/v1/traces"})
            spans = {
                span.name: (resource, span) for resource, span in self.receiver.spans
            }
            resource, server = spans["GET BUILD"]
            self.assertEqual(resource["service.name"], "gateway-under-test")
            self.assertEqual(server.trace_id.hex(), TRACE)
            self.assertEqual(server.parent_span_id.hex(), "00f067aa0ba902b7")
            found = attributes(server)
            self.assertEqual(found["metagateway.route"], "BUILD")
            self.assertEqual(found["http.response.status_code"], 200)
            self.assertEqual(found["enduser.id"], USER)
            self.assertTrue(found["metagateway.upstream"].endswith("/svc/x"))
            _, client = spans["upstream"]
            self.assertEqual(client.parent_span_id, server.span_id)
            [request] = self.upstream.requests
            [sent] = request[2].getRawHeaders(b"traceparent")
            self.assertEqual(
                sent, ("00-%s-%s-01" % (TRACE, client.span_id.hex())).encode()
            )
            self.assertEqual(request[2].getRawHeaders(b"tracestate"), [b"vendor=1"])
            _, login = spans["POST AUTH"]
            for name in ("credentials.lookup", "password.check"):
                _, child = spans[name]
                self.assertEqual(child.parent_span_id, login.span_id)
            self.assertTrue(re.fullmatch(r"[0-9a-f]{32}", login.trace_id.hex()))

        return ensureDeferred(go())


def chromium() -> Optional[str]:
    """
    The headless browser to use, if one is installed.
    """
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


#: The flags every headless run gets: no network of its own, no first-run
#: work, a profile of its own.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


class BrowserTests(StatusDaemonCase):
    """
    The status page in a real headless Chromium.
    """

    timeout = 120

    def setUp(self) -> Any:
        if chromium() is None:
            raise self.skipTest(
                "no chromium installed (apt-get install -y chromium) to render "
                "the status page in"
            )
        return super().setUp()

    async def render(self, *extra: str) -> str:
        """
        Load ``/status`` in Chromium and return the DOM it rendered.
        """
        browser = chromium()
        assert browser is not None
        profile = self.mktemp()
        os.makedirs(profile)
        out, err, code = await getProcessOutputAndValue(
            browser,
            [
                *CHROMIUM_FLAGS,
                "--user-data-dir=" + profile,
                *extra,
                "--dump-dom",
                self.metrics + "/status",
            ],
            env={"HOME": profile, "PATH": os.environ.get("PATH", "")},
            reactor=reactor,
        )
        self.assertEqual(code, 0, err)
        return out.decode("utf-8")

    def test_renders_and_moves(self) -> Deferred[None]:
        """
        The page renders in a real browser; after load, its numbers have
        moved. With ``METAGATEWAY_STATUS_SCREENSHOT`` set, a screenshot of
        the loaded page is written there (for the docs).
        """

        async def go() -> None:
            before = await self.render()
            self.assertIn("metagateway", before)
            first = card(before, "requests-total")
            for _ in range(40):
                r = await self.http.get(self.base + "/nowhere")
                await r.content()
            after = await self.render()
            self.assertGreaterEqual(card(after, "requests-total"), first + 40)
            self.assertGreater(float(card_text(after, "requests-per-second")), 0)
            shot = os.environ.get("METAGATEWAY_STATUS_SCREENSHOT")
            if shot:
                await self.render("--window-size=1100,760", "--screenshot=" + shot)

        return ensureDeferred(go())


def card_text(dom: str, ident: str) -> str:
    """
    The text of the figure ``ident`` on the rendered page.
    """
    match = re.search(r'<b id="%s">([^<]*)</b>' % (re.escape(ident),), dom)
    assert match is not None, dom
    return match.group(1)


def card(dom: str, ident: str) -> int:
    """
    The figure ``ident`` on the rendered page, as a whole number.
    """
    return int(card_text(dom, ident))
