"""
Tests for ``/webhooks/…`` (CONTRACT §4): the Notion webhook fan-out to fake
targets behind a ``RequestTraversalAgent``, and the path, method and
signature errors.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from treq.testing import StubTreq

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.vhost import NameVirtualHost

from metagateway.webhooks import (
    DEFAULT_TARGETS,
    WebhooksResource,
    forwarded_headers,
    select_targets,
)
from tests.helpers import (
    GatewayHarness,
    RecordingUpstream,
    assert_json,
    assert_json_error,
    make_config,
)

NOTION_SECRET = "notion-shared-secret"

#: The test services, as :func:`tests.helpers.make_config` sets them.
SERVICES = {
    "BUILD": "http://build.test/base/",
    "KV": "http://kv.test",
    "CORE": "http://core.test",
    "BASE": "http://base.test/hq-root",
}


class Target(Resource):
    """
    A fake webhook target: records each request and answers with a fixed
    status, or never, or by dropping the connection.

    :ivar requests: ``(method, path, headers, body)`` of each request.
    :ivar pending: the requests left unanswered while :attr:`hang` is set.
    """

    isLeaf = True

    def __init__(self, code: int = 200) -> None:
        super().__init__()
        self.code = code
        self.hang = False
        self.drop = False
        self.requests: list[tuple[bytes, bytes, Headers, bytes]] = []
        self.pending: list[IRequest] = []

    def render(self, request: IRequest) -> Any:
        """
        Record the request and answer it as configured.
        """
        self.requests.append(
            (
                request.method,
                request.uri,
                request.requestHeaders.copy(),
                request.content.read(),
            )
        )
        if self.drop:
            request.channel.transport.abortConnection()
            return NOT_DONE_YET
        if self.hang:
            self.pending.append(request)
            return NOT_DONE_YET
        request.setResponseCode(self.code)
        return b'{"ok":true}'


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
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

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
        ``/webhooks/`` (and ``/webhooks``) alone: ``400 INVALID_SOURCE``,
        route ``WEBHOOK``.
        """
        for path in ("/webhooks/", "/webhooks"):
            response, body = self.post(path)
            assert_json_error(
                self, response, body, 400, "INVALID_SOURCE", route="WEBHOOK"
            )

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
        d.cancel()
        self.harness.flush()
        self.failureResultOf(d)
        self.harness.clock.advance(self.harness.gateway.config.upstream_timeout)
        self.harness.flush()
        self.assertEqual(self.flushLoggedErrors(), [])


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
        outside = StubTreq(targets.hosts)
        clock = MemoryReactorClock()
        resource = WebhooksResource(
            NOTION_SECRET, {"KV": "http://kv.test"}, outside, clock, 5, max_body=10
        )
        client = StubTreq(resource)
        d = client.post(
            "http://gw.test/webhooks/notion",
            data=b"0123456789",
            headers={"X-Notion-Signature": NOTION_SECRET},
        )
        for _ in range(5):
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
        ``Content-Length``, ``Host``, ``Accept-Encoding`` and
        ``Transfer-Encoding`` are the gateway's own business.
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
            sorted(name for name, _ in headers.getAllRawHeaders()),
            [b"X-Gateway-Source", b"X-Keep"],
        )
