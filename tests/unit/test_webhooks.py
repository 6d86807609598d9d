"""
Tests for ``/webhooks/…`` (:ref:`contract-endpoints`): the Notion webhook fan-out to
fake targets behind a ``RequestTraversalAgent``, and the path, method and
signature errors.
"""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any, Optional

from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent

from twisted.internet.defer import Deferred
from twisted.internet.task import Cooperator
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import FileBodyProducer, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from twisted.web.resource import IResource
from twisted.web.vhost import NameVirtualHost

from metagateway.credentials.memory import MemoryCredentialStore
from metagateway.gateway import Gateway
from metagateway.proxy.webhooks import (
    DEFAULT_TARGETS,
    WebhooksResource,
    forwarded_headers,
    select_targets,
)
from metagateway.testing import GatewayHarness, RecordingUpstream, StubTreq, make_config
from tests.helpers import assert_cancelled_quietly, assert_json, assert_json_error

NOTION_SECRET = "notion-shared-secret"

#: The test services, as :func:`metagateway.testing.make_config` sets them.
SERVICES = {
    "BUILD": "http://build.test/base/",
    "KV": "http://kv.test",
    "CORE": "http://core.test",
    "BASE": "http://base.test/hq-root",
}


class Target(RecordingUpstream):
    """
    A fake webhook target: records each request and answers with a fixed
    status, or never, or by dropping the connection.

    :ivar requests: ``(method, path, headers, body)`` of each request.
    :ivar pending: the requests left unanswered while :attr:`hang` is set.
    :ivar headers: response headers it answers with.
    """

    def __init__(self, code: int = 200) -> None:
        super().__init__(b'{"ok":true}', code)
        self.headers = {}


class Targets:
    """
    One fake target per test service, served by host name.

    :ivar by_name: target name (``KV_SERVICE`` ...) to its fake.
    :ivar hosts: the vhost to give the harness as ``outside``.
    """

    def __init__(self) -> None:
        self.by_name = {
            "BUILD_SERVICE": Target(),
            "KV_SERVICE": Target(201),
            "CORE_SERVICE": Target(),
            "BASE_SERVICE": Target(204),
        }
        self.hosts = NameVirtualHost()
        for name, target in self.by_name.items():
            self.hosts.addHost(name.split("_")[0].lower().encode() + b".test", target)

    def __getitem__(self, name: str) -> Target:
        return self.by_name[name]


def header_map(headers: Headers) -> dict[bytes, list[bytes]]:
    """
    ``headers`` as lower-cased name to values, for comparing whole sets.
    """
    return {name.lower(): list(values) for name, values in headers.getAllRawHeaders()}


def send_exactly(
    resource: IResource,
    clock: MemoryReactorClock,
    headers: dict[bytes, list[bytes]],
    body: bytes,
) -> tuple[RequestTraversalAgent, Deferred[IResponse]]:
    """
    Start a ``POST /webhooks/notion`` to ``resource`` carrying exactly
    ``headers`` and the framing the client's ``Agent`` adds (``Host``,
    ``Content-Length``, ``Connection: close``): not through treq, whose
    client adds ``Accept-Encoding: gzip`` to every request.

    :param clock: turns the cooperator writing the body.
    :return: the client, to flush, and its response Deferred.
    """
    client = RequestTraversalAgent(resource)
    bodies = Cooperator(
        scheduler=lambda work: clock.callLater(0, work)  # type: ignore[no-any-return]
    )
    d = client.request(
        b"POST",
        b"http://gateway.test/webhooks/notion",
        Headers(headers),
        FileBodyProducer(BytesIO(body), cooperator=bodies),
    )
    return client, d


def notion_config(**overrides: Any) -> Any:
    """
    A test configuration with the Notion secret set.
    """
    settings: dict[str, Any] = {"notion_webhook_secret": NOTION_SECRET}
    settings.update(overrides)
    return make_config(**settings)


class NotionWebhookTests(SynchronousTestCase):
    """
    ``POST /webhooks/notion`` through a whole in-memory gateway.
    """

    def setUp(self) -> None:
        self.targets = Targets()
        self.upstream = RecordingUpstream()
        self.harness = GatewayHarness(
            notion_config(), upstream=self.upstream, outside=self.targets.hosts
        )
        self.logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.logged.append)  # type: ignore[arg-type]
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)  # type: ignore[arg-type]

    def post(
        self,
        path: str = "/webhooks/notion",
        body: bytes = b'{"type":"page.updated"}',
        headers: Optional[dict[str, Any]] = None,
        signature: Optional[str] = NOTION_SECRET,
        harness: Optional[GatewayHarness] = None,
    ) -> Any:
        sent = {"Content-Type": "application/json"}
        if signature is not None:
            sent["X-Notion-Signature"] = signature
        sent.update(headers or {})
        return (harness or self.harness).request(
            self, "POST", path, data=body, headers=sent
        )

    def start(self, **headers: Any) -> Any:
        """
        Start a webhook without waiting for its answer.
        """
        sent = {"X-Notion-Signature": NOTION_SECRET}
        sent.update(headers)
        d = self.harness.client.request(
            "POST", "http://gateway.test/webhooks/notion", data=b"{}", headers=sent
        )
        self.harness.flush()
        return d

    def finish(self, d: Any) -> Any:
        return self.harness.finish(self, d)

    def post_exactly(
        self, headers: dict[bytes, list[bytes]], body: bytes = b'{"type":"x"}'
    ) -> Any:
        """
        POST a webhook with :func:`send_exactly`.

        :return: ``(response, body)``.
        """
        client, d = send_exactly(
            self.harness.gateway.resource, self.harness.clock, headers, body
        )
        for _ in range(3):
            self.harness.flush()
            client.flush()
        response = self.successResultOf(d)
        read = readBody(response)
        client.flush()
        return response, self.successResultOf(read)

    def assert_forwarded(self, response: Any, body: bytes, expected: list[Any]) -> None:
        self.assertEqual(response.code, 202, body)
        assert_json(self, response)
        self.assertEqual(
            json.loads(body),
            {
                "success": True,
                "forwarded": [{"target": t, "status": s} for t, s in expected],
            },
        )

    def test_accept_encoding_passed_on(self) -> None:
        """
        The client's ``Accept-Encoding`` reaches every target as sent, with
        nothing added beside it (the gateway never decodes a target's
        answer: it discards it).
        """
        response, body = self.post_exactly(
            {
                b"X-Notion-Signature": [NOTION_SECRET.encode()],
                b"Accept-Encoding": [b"br"],
            }
        )
        self.assert_forwarded(
            response,
            body,
            [("BASE_SERVICE", 204), ("KV_SERVICE", 201), ("CORE_SERVICE", 200)],
        )
        for name in DEFAULT_TARGETS:
            [(_, _, headers, _)] = self.targets[name].requests
            self.assertEqual(headers.getRawHeaders(b"accept-encoding"), [b"br"], name)

    def test_no_accept_encoding(self) -> None:
        """
        A client that sends no ``Accept-Encoding`` has none sent for it.
        """
        response, body = self.post_exactly(
            {b"X-Notion-Signature": [NOTION_SECRET.encode()]}
        )
        self.assertEqual(response.code, 202, body)
        for name in DEFAULT_TARGETS:
            [(_, _, headers, _)] = self.targets[name].requests
            self.assertIsNone(headers.getRawHeaders(b"accept-encoding"), name)

    def test_exact_headers(self) -> None:
        """
        A target gets exactly the request's end-to-end headers (repeated
        ones as sent) less ``Authorization`` and any ``X-Gateway-*``, plus
        ``X-Gateway-Source: notion``, and the framing of the gateway's own
        request to it: its ``Host`` and ``Content-Length`` (and, here,
        ``Connection: close`` from the in-memory agent, whose connections
        are not kept alive). Hop-by-hop headers, those named in
        ``Connection``, and the client's ``Host`` and ``Content-Length``
        are not passed on.
        """
        body = b'{"type":"page.created"}'
        response, answer = self.post_exactly(
            {
                b"X-Notion-Signature": [NOTION_SECRET.encode()],
                b"Content-Type": [b"application/json"],
                b"Authorization": [b"Bearer not-for-targets"],
                b"Accept-Encoding": [b"gzip, br"],
                b"User-Agent": [b"Notion-Webhooks/1"],
                b"Cookie": [b"client=1"],
                b"X-Trace": [b"one", b"two"],
                b"traceparent": [
                    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                ],
                b"tracestate": [b"vendor=1"],
                b"X-Gateway-Webhook-Targets": [b"KV_SERVICE"],
                b"X-Gateway-User": [b"forged"],
                b"Connection": [b"X-Hop"],
                b"X-Hop": [b"dropped"],
                b"TE": [b"trailers"],
            },
            body,
        )
        self.assert_forwarded(response, answer, [("KV_SERVICE", 201)])
        [(method, path, headers, sent)] = self.targets["KV_SERVICE"].requests
        self.assertEqual((method, path, sent), (b"POST", b"/webhooks/notion", body))
        sent_headers = header_map(headers)
        # The trace is continued: same trace id and flags, a new parent.
        [traceparent] = sent_headers.pop(b"traceparent")
        self.assertRegex(
            traceparent, rb"\A00-4bf92f3577b34da6a3ce929d0e0e4736-[0-9a-f]{16}-01\Z"
        )
        self.assertNotIn(b"00f067aa0ba902b7", traceparent)
        self.assertEqual(
            sent_headers,
            {
                b"x-notion-signature": [NOTION_SECRET.encode()],
                b"content-type": [b"application/json"],
                b"accept-encoding": [b"gzip, br"],
                b"user-agent": [b"Notion-Webhooks/1"],
                b"cookie": [b"client=1"],
                b"x-trace": [b"one", b"two"],
                b"x-gateway-source": [b"notion"],
                b"tracestate": [b"vendor=1"],
                b"host": [b"kv.test"],
                b"content-length": [str(len(body)).encode()],
                b"connection": [b"close"],
            },
        )

    def test_no_cookies_kept(self) -> None:
        """
        A cookie a target sets is never sent back, to it or to another
        target: a target gets only the cookies the client sent.
        """
        self.targets["KV_SERVICE"].headers = {
            b"Set-Cookie": [b"target=1; Path=/"],
        }
        for _ in range(2):
            response, body = self.post(
                headers={"X-Gateway-Webhook-Targets": "KV_SERVICE, BUILD_SERVICE"}
            )
            self.assertEqual(response.code, 202, body)
        for name in ("KV_SERVICE", "BUILD_SERVICE"):
            for _, _, headers, _ in self.targets[name].requests:
                self.assertIsNone(headers.getRawHeaders(b"cookie"), name)

    def test_redirect_not_followed(self) -> None:
        """
        A target's redirect is reported with its status, not followed, and
        its compressed answer is discarded without being decoded.
        """
        self.targets["KV_SERVICE"].code = 302
        self.targets["KV_SERVICE"].headers = {
            b"Location": [b"http://core.test/elsewhere"],
            b"Content-Encoding": [b"gzip"],
        }
        response, body = self.post(headers={"X-Gateway-Webhook-Targets": "KV_SERVICE"})
        self.assert_forwarded(response, body, [("KV_SERVICE", 302)])
        self.assertEqual(len(self.targets["KV_SERVICE"].requests), 1)
        self.assertEqual(self.targets["CORE_SERVICE"].requests, [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_default_targets(self) -> None:
        """
        Without ``X-Gateway-Webhook-Targets`` the body goes to the base, KV
        and core services' ``/webhooks/notion`` (the service URL's path
        kept, its trailing slash dropped), and the answer is ``202`` listing
        each with the status it gave.
        """
        response, body = self.post(body=b'{"event":1}')
        self.assert_forwarded(
            response,
            body,
            [("BASE_SERVICE", 204), ("KV_SERVICE", 201), ("CORE_SERVICE", 200)],
        )
        self.assertEqual(
            [r[:2] for r in self.targets["BASE_SERVICE"].requests],
            [(b"POST", b"/hq-root/webhooks/notion")],
        )
        for name in ("KV_SERVICE", "CORE_SERVICE"):
            self.assertEqual(
                [r[:2] for r in self.targets[name].requests],
                [(b"POST", b"/webhooks/notion")],
            )
            self.assertEqual(self.targets[name].requests[0][3], b'{"event":1}')
        self.assertEqual(self.targets["BUILD_SERVICE"].requests, [])
        self.assertEqual(self.upstream.requests, [])
        self.assertEqual(
            DEFAULT_TARGETS, ("BASE_SERVICE", "KV_SERVICE", "CORE_SERVICE")
        )

    def test_forwarded_headers(self) -> None:
        """
        Targets get the request's end-to-end headers except
        ``Authorization``; hop-by-hop headers (and those ``Connection``
        names), ``Host``, incoming ``X-Gateway-*`` are not passed on, and
        ``X-Gateway-Source: notion`` is set.
        """
        self.post(
            headers={
                "Authorization": "Bearer something",
                "X-Custom": "kept",
                "Notion-Version": "2022-06-28",
                "Connection": "X-Hop",
                "X-Hop": "dropped",
                "Keep-Alive": "timeout=5",
                "X-Gateway-User": "mallory",
                "X-Gateway-Source": "forged",
                "X-Gateway-Webhook-Targets": "KV_SERVICE",
            }
        )
        [(_, _, headers, _)] = self.targets["KV_SERVICE"].requests
        self.assertEqual(headers.getRawHeaders(b"x-custom"), [b"kept"])
        self.assertEqual(headers.getRawHeaders(b"notion-version"), [b"2022-06-28"])
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(
            headers.getRawHeaders(b"x-notion-signature"), [NOTION_SECRET.encode()]
        )
        self.assertEqual(headers.getRawHeaders(b"x-gateway-source"), [b"notion"])
        self.assertEqual(headers.getRawHeaders(b"host"), [b"kv.test"])
        for name in (
            b"authorization",
            b"x-hop",
            b"keep-alive",
            b"x-gateway-user",
            b"x-gateway-webhook-targets",
        ):
            self.assertIsNone(headers.getRawHeaders(name), name)

    def test_named_targets(self) -> None:
        """
        ``X-Gateway-Webhook-Targets`` picks the targets: a comma list,
        matched without regard to case or spaces, each named once, in the
        order given.
        """
        response, body = self.post(
            headers={
                "X-Gateway-Webhook-Targets": " build_service,KV_Service , kv_service"
            }
        )
        self.assert_forwarded(
            response, body, [("BUILD_SERVICE", 200), ("KV_SERVICE", 201)]
        )
        self.assertEqual(
            [r[1] for r in self.targets["BUILD_SERVICE"].requests],
            [b"/base/webhooks/notion"],
        )
        self.assertEqual(self.targets["CORE_SERVICE"].requests, [])
        self.assertEqual(self.targets["BASE_SERVICE"].requests, [])

    def test_unknown_target_names_ignored(self) -> None:
        """
        Names other than the four service names are ignored: they never
        select a variable or a URL.
        """
        response, body = self.post(
            headers={
                "X-Gateway-Webhook-Targets": (
                    "GATEWAY_JWT_SECRET, KV_SERVICE_URL, http://evil.test, KV, CORE_SERVICE"
                )
            }
        )
        self.assert_forwarded(response, body, [("CORE_SERVICE", 200)])

    def test_only_unknown_names(self) -> None:
        """
        A header naming no known target is ``502 NO_TARGETS``.
        """
        response, body = self.post(headers={"X-Gateway-Webhook-Targets": "EVIL"})
        assert_json_error(self, response, body, 502, "NO_TARGETS", route="WEBHOOK")

    def test_blank_header(self) -> None:
        """
        A header holding no names counts as absent: the default targets.
        """
        response, body = self.post(headers={"X-Gateway-Webhook-Targets": " , "})
        self.assert_forwarded(
            response,
            body,
            [("BASE_SERVICE", 204), ("KV_SERVICE", 201), ("CORE_SERVICE", 200)],
        )

    def test_unconfigured_targets_dropped(self) -> None:
        """
        A target whose service URL is unset is left out.
        """
        harness = GatewayHarness(
            notion_config(services={"KV": "http://kv.test/"}),
            outside=self.targets.hosts,
        )
        response, body = self.post(harness=harness)
        self.assert_forwarded(response, body, [("KV_SERVICE", 201)])
        self.assertEqual(
            [r[1] for r in self.targets["KV_SERVICE"].requests], [b"/webhooks/notion"]
        )

    def test_no_targets(self) -> None:
        """
        No configured target left: ``502 NO_TARGETS``, route ``WEBHOOK``.
        """
        harness = GatewayHarness(
            notion_config(services={"BUILD": "http://build.test"}),
            outside=self.targets.hosts,
        )
        response, body = self.post(harness=harness)
        assert_json_error(self, response, body, 502, "NO_TARGETS", route="WEBHOOK")
        self.assertEqual(self.targets["BUILD_SERVICE"].requests, [])

    def test_target_errors_reported(self) -> None:
        """
        A target's own error status is reported as is; the others still get
        the webhook.
        """
        self.targets["KV_SERVICE"].code = 500
        response, body = self.post()
        self.assert_forwarded(
            response,
            body,
            [("BASE_SERVICE", 204), ("KV_SERVICE", 500), ("CORE_SERVICE", 200)],
        )

    def test_target_down(self) -> None:
        """
        A target whose connection fails is listed with ``502``; the others
        still get the webhook.
        """
        self.targets["KV_SERVICE"].drop = True
        response, body = self.post()
        self.assert_forwarded(
            response,
            body,
            [("BASE_SERVICE", 204), ("KV_SERVICE", 502), ("CORE_SERVICE", 200)],
        )
        messages = [formatEvent(e) for e in self.logged]
        self.assertTrue(any("KV_SERVICE" in m for m in messages), messages)

    def test_target_unknown_host(self) -> None:
        """
        A target URL nobody answers for is reported with the status it got
        (here the vhost's ``404``), not as a gateway error.
        """
        harness = GatewayHarness(
            notion_config(services={"CORE": "http://nowhere.test"}),
            outside=self.targets.hosts,
        )
        response, body = self.post(harness=harness)
        self.assert_forwarded(response, body, [("CORE_SERVICE", 404)])

    def test_target_timeout(self) -> None:
        """
        A target that does not answer in time is listed with ``504``; the
        answer waits for it no longer than its timeout.
        """
        self.targets["CORE_SERVICE"].hang = True
        d = self.start()
        self.harness.run_to_timeout(self, d)
        response, body = self.finish(d)
        self.assert_forwarded(
            response,
            body,
            [("BASE_SERVICE", 204), ("KV_SERVICE", 201), ("CORE_SERVICE", 504)],
        )

    def test_parallel(self) -> None:
        """
        Every target is called at once: all hold a request before any has
        answered, and each times out on its own clock.
        """
        for name in DEFAULT_TARGETS:
            self.targets[name].hang = True
        d = self.start()
        for name in DEFAULT_TARGETS:
            self.assertEqual(len(self.targets[name].pending), 1, name)
        self.assertNoResult(d)
        self.harness.clock.advance(self.harness.gateway.config.upstream_timeout)
        response, body = self.finish(d)
        self.assert_forwarded(response, body, [(n, 504) for n in DEFAULT_TARGETS])

    def test_source_case_insensitive(self) -> None:
        """
        The source name is matched without regard to case, also when
        percent-encoded; a trailing slash is allowed.
        """
        for path in (
            "/webhooks/Notion",
            "/webhooks/NOTION",
            "/webhooks/%6Eotion",
            "/webhooks/notion/",
        ):
            response, body = self.post(
                path, headers={"X-Gateway-Webhook-Targets": "CORE_SERVICE"}
            )
            self.assert_forwarded(response, body, [("CORE_SERVICE", 200)])

    def test_secret_missing(self) -> None:
        """
        Without ``NOTION_WEBHOOK_SECRET``: ``500 NOTION_SECRET_MISSING``,
        route ``WEBHOOK``, whatever signature is sent; nothing forwarded.
        """
        harness = GatewayHarness(make_config(), outside=self.targets.hosts)
        for signature in (None, "", "anything"):
            response, body = self.post(harness=harness, signature=signature)
            assert_json_error(
                self, response, body, 500, "NOTION_SECRET_MISSING", route="WEBHOOK"
            )
        self.assertEqual(self.targets["CORE_SERVICE"].requests, [])

    def test_bad_signature(self) -> None:
        """
        A missing, empty, wrong or repeated ``X-Notion-Signature``: ``401
        INVALID_SIGNATURE``, route ``WEBHOOK``; nothing forwarded, and the
        secret is not in the answer.
        """
        for signature in (None, "", "wrong", NOTION_SECRET + "x", NOTION_SECRET[:-1]):
            response, body = self.post(signature=signature)
            assert_json_error(
                self, response, body, 401, "INVALID_SIGNATURE", route="WEBHOOK"
            )
            self.assertNotIn(NOTION_SECRET, body.decode())
        d = self.harness.client.request(
            "POST",
            "http://gateway.test/webhooks/notion",
            data=b"{}",
            headers=Headers({b"X-Notion-Signature": [NOTION_SECRET.encode(), b"x"]}),
        )
        response, body = self.finish(d)
        assert_json_error(
            self, response, body, 401, "INVALID_SIGNATURE", route="WEBHOOK"
        )
        for name in DEFAULT_TARGETS:
            self.assertEqual(self.targets[name].requests, [])

    def test_no_source(self) -> None:
        """
        ``/webhooks/`` alone (also spelt with dot segments): ``400
        INVALID_SOURCE``, route ``WEBHOOK``.
        """
        for path in ("/webhooks/", "/webhooks/.", "/webhooks/x/.."):
            response, body = self.post(path)
            assert_json_error(
                self, response, body, 400, "INVALID_SOURCE", route="WEBHOOK"
            )

    def test_no_slash(self) -> None:
        """
        ``/webhooks`` without the slash is not a webhook path, whatever the
        method: ``404 NOT_FOUND`` "Route not handled", route ``CORE``;
        nothing is forwarded or proxied.
        """
        for method in ("GET", "POST"):
            response, body = self.harness.request(
                self, method, "/webhooks", headers={"X-Notion-Signature": NOTION_SECRET}
            )
            assert_json_error(
                self,
                response,
                body,
                404,
                "NOT_FOUND",
                route="CORE",
                message="Route not handled",
            )
        self.assertEqual(self.upstream.requests, [])
        for name in DEFAULT_TARGETS:
            self.assertEqual(self.targets[name].requests, [])

    def test_unknown_source(self) -> None:
        """
        Another source: ``404 UNKNOWN_SOURCE``, route ``WEBHOOK``, whatever
        the method.
        """
        for method, path in (
            ("POST", "/webhooks/github"),
            ("POST", "/webhooks/notionx"),
            ("GET", "/webhooks/stripe/events"),
        ):
            response, body = self.harness.request(self, method, path)
            assert_json_error(
                self, response, body, 404, "UNKNOWN_SOURCE", route="WEBHOOK"
            )

    def test_other_methods(self) -> None:
        """
        Another method than ``POST`` on ``/webhooks/notion``, or a path below
        it: ``404 NOT_FOUND``, route ``WEBHOOK``; never proxied.
        """
        for method, path in (
            ("GET", "/webhooks/notion"),
            ("PUT", "/webhooks/notion"),
            ("DELETE", "/webhooks/notion"),
            ("HEAD", "/webhooks/notion"),
            ("POST", "/webhooks/notion/extra"),
        ):
            response, body = self.harness.request(
                self, method, path, headers={"X-Notion-Signature": NOTION_SECRET}
            )
            self.assertEqual(response.code, 404, (method, path))
            if method != "HEAD":
                assert_json_error(
                    self, response, body, 404, "NOT_FOUND", route="WEBHOOK"
                )
        self.assertEqual(self.upstream.requests, [])
        self.assertEqual(self.targets["CORE_SERVICE"].requests, [])

    def test_options(self) -> None:
        """
        ``OPTIONS /webhooks/notion`` is the CORS preflight answer.
        """
        response, _ = self.harness.request(self, "OPTIONS", "/webhooks/notion")
        self.assertEqual(response.code, 204)
        self.assertEqual(
            response.headers.getRawHeaders(b"access-control-allow-origin"), [b"*"]
        )

    def test_body_limit(self) -> None:
        """
        A body of 1 MiB is forwarded whole; a larger one is ``413
        PAYLOAD_TOO_LARGE``, route ``WEBHOOK``, and not forwarded.
        """
        body = b"x" * (1024 * 1024)
        response, answer = self.post(
            body=body, headers={"X-Gateway-Webhook-Targets": "CORE_SERVICE"}
        )
        self.assert_forwarded(response, answer, [("CORE_SERVICE", 200)])
        self.assertEqual(self.targets["CORE_SERVICE"].requests[0][3], body)
        response, answer = self.post(
            body=body + b"x", headers={"X-Gateway-Webhook-Targets": "KV_SERVICE"}
        )
        assert_json_error(
            self, response, answer, 413, "PAYLOAD_TOO_LARGE", route="WEBHOOK"
        )
        self.assertEqual(self.targets["KV_SERVICE"].requests, [])

    def test_secret_not_logged(self) -> None:
        """
        Neither the Notion secret nor a bearer token sent along is logged.
        """
        self.targets["KV_SERVICE"].drop = True
        self.post(headers={"Authorization": "Bearer sekrit-token"})
        self.post(signature="wrong")
        for event in self.logged:
            for rendered in (formatEvent(event), repr(event)):
                self.assertNotIn(NOTION_SECRET, rendered)
                self.assertNotIn("sekrit-token", rendered)

    def test_client_gone(self) -> None:
        """
        A client that goes away while targets are called gets nothing
        written, and nothing fails.
        """
        self.targets["CORE_SERVICE"].hang = True
        d = self.start()
        assert_cancelled_quietly(self, self.harness, d)


class WebhooksResourceTests(SynchronousTestCase):
    """
    :class:`WebhooksResource` on its own, as a leaf at the root.
    """

    def test_standalone(self) -> None:
        """
        Mounted as a leaf, it reads the path from ``postpath`` and forwards
        through the client it is given, with its own body limit.
        """
        targets = Targets()
        outside = RequestTraversalAgent(targets.hosts)
        clock = MemoryReactorClock()
        bodies = Cooperator(
            scheduler=lambda work: clock.callLater(0, work)  # type: ignore[no-any-return]
        )
        resource = WebhooksResource(
            NOTION_SECRET,
            {"KV": "http://kv.test"},
            outside,
            clock,
            bodies,
            5,
            max_body=10,
        )
        client = StubTreq(resource)
        d = client.post(
            "http://gw.test/webhooks/notion",
            data=b"0123456789",
            headers={"X-Notion-Signature": NOTION_SECRET},
        )
        for _ in range(5):
            clock.advance(0)
            client.flush()
            outside.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 202)
        self.assertEqual(
            json.loads(self.successResultOf(client.content(response))),
            {"success": True, "forwarded": [{"target": "KV_SERVICE", "status": 201}]},
        )
        d = client.post(
            "http://gw.test/webhooks/notion",
            data=b"0123456789a",
            headers={"X-Notion-Signature": NOTION_SECRET},
        )
        client.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(client.content(response))
        assert_json_error(
            self, response, body, 413, "PAYLOAD_TOO_LARGE", route="WEBHOOK"
        )


class DefaultAgentTests(SynchronousTestCase):
    """
    A :class:`~metagateway.gateway.Gateway` given no ``webhook_agent``.
    """

    def test_http_client_only(self) -> None:
        """
        An embedder that passes only ``http_client`` still has its webhooks
        sent: by a plain ``Agent`` on the gateway's own reactor and pool,
        never through that treq client. On the wire the target gets the
        client's end-to-end headers, ``X-Gateway-Source``, and the
        ``Agent``'s ``Host`` and ``Content-Length``: no ``Accept-Encoding``
        but the client's, no ``Connection`` (the pool keeps connections
        alive).
        """
        reactor = MemoryReactorClock()
        outside = RecordingUpstream()
        gateway = Gateway(
            notion_config(services={"KV": "http://127.0.0.1:9003/kv/"}),
            reactor,
            store=MemoryCredentialStore([]),
            http_client=HTTPClient(RequestTraversalAgent(outside)),
        )
        body = b'{"type":"page.deleted"}'
        client, d = send_exactly(
            gateway.resource,
            reactor,
            {
                b"X-Notion-Signature": [NOTION_SECRET.encode()],
                b"Accept-Encoding": [b"br"],
                b"X-Trace": [b"one"],
            },
            body,
        )
        for _ in range(3):
            reactor.advance(0)
            client.flush()
        self.assertEqual(len(reactor.tcpClients), 1)
        host, port, factory, _, _ = reactor.tcpClients[0]
        self.assertEqual((host, port), ("127.0.0.1", 9003))
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        reactor.advance(0)
        head, _, sent = transport.value().partition(b"\r\n\r\n")
        request_line, *lines = head.split(b"\r\n")
        fields = [line.split(b": ", 1) for line in lines]
        # A new trace, since the client sent none.
        [traceparent] = [v for n, v in fields if n.lower() == b"traceparent"]
        self.assertRegex(traceparent, rb"\A00-[0-9a-f]{32}-[0-9a-f]{16}-01\Z")
        fields = [f for f in fields if f[0].lower() != b"traceparent"]
        self.assertEqual(
            (request_line, sent), (b"POST /kv/webhooks/notion HTTP/1.1", body)
        )
        self.assertEqual(
            sorted((name.lower(), value) for name, value in fields),
            [
                (b"accept-encoding", b"br"),
                (b"content-length", b"%d" % (len(body),)),
                (b"host", b"127.0.0.1:9003"),
                (b"x-gateway-source", b"notion"),
                (b"x-notion-signature", NOTION_SECRET.encode()),
                (b"x-trace", b"one"),
            ],
        )
        protocol.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        for _ in range(3):
            reactor.advance(0)
            client.flush()
        response = self.successResultOf(d)
        answer = readBody(response)
        client.flush()
        self.assertEqual(
            json.loads(self.successResultOf(answer)),
            {"success": True, "forwarded": [{"target": "KV_SERVICE", "status": 204}]},
        )
        self.assertEqual(outside.requests, [])


class SelectTargetsTests(SynchronousTestCase):
    """
    :func:`select_targets`.
    """

    def test_default(self) -> None:
        """
        No header: base, KV and core, each with its URL.
        """
        self.assertEqual(
            select_targets(None, SERVICES),
            [
                ("BASE_SERVICE", SERVICES["BASE"]),
                ("KV_SERVICE", SERVICES["KV"]),
                ("CORE_SERVICE", SERVICES["CORE"]),
            ],
        )

    def test_several_header_values(self) -> None:
        """
        Repeated headers are read as one comma list.
        """
        self.assertEqual(
            select_targets([b"kv_service", b"BUILD_SERVICE,core_service"], SERVICES),
            [
                ("KV_SERVICE", SERVICES["KV"]),
                ("BUILD_SERVICE", SERVICES["BUILD"]),
                ("CORE_SERVICE", SERVICES["CORE"]),
            ],
        )

    def test_non_ascii(self) -> None:
        """
        Bytes that are not ASCII never match.
        """
        self.assertEqual(select_targets([b"KV_SERVIC\xc9"], SERVICES), [])


class ForwardedHeadersTests(SynchronousTestCase):
    """
    :func:`forwarded_headers`.
    """

    def test_drops(self) -> None:
        """
        ``Content-Length``, ``Host`` and ``Transfer-Encoding`` are the
        gateway's own business; ``Accept-Encoding`` is the client's, passed
        on as sent.
        """
        headers = forwarded_headers(
            Headers(
                {
                    b"Content-Length": [b"3"],
                    b"Host": [b"gw"],
                    b"Accept-Encoding": [b"gzip"],
                    b"Transfer-Encoding": [b"chunked"],
                    b"X-Keep": [b"1"],
                }
            ),
            b"notion",
        )
        self.assertEqual(
            sorted(headers.getAllRawHeaders()),
            [
                (b"Accept-Encoding", [b"gzip"]),
                (b"X-Gateway-Source", [b"notion"]),
                (b"X-Keep", [b"1"]),
            ],
        )
