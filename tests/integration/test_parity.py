"""
End-to-end tests of the endpoints clients of the original gateway call
besides ``/auth/*`` (:ref:`contract-endpoints`): the ``/core/*`` session endpoints,
GitHub sign-in against a fake GitHub server, and the Notion webhook fan-out to real
target servers, all through the real ``twistd metagateway`` daemon on
loopback.
"""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from metagateway.auth.passwords import make_record
from metagateway.credentials.directory import DirectoryCredentialStore
from metagateway.testing import (
    ACCESS_TOKEN,
    CLIENT_SECRET,
    OCTOCAT,
    SECRET,
    FakeGitHub,
    RecordingUpstream,
)
from tests.daemon import http_client, refusing_port, start_daemon

USER, PASSWORD = "operator", "s3cret-pass"
NOTION_SECRET = "notion-integration-secret"

#: Seconds the daemon waits for an upstream, GitHub or a webhook target.
TIMEOUT = 2


class Hanging(Resource):
    """
    A server that never answers.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[IRequest] = []

    def render(self, request: IRequest) -> Any:
        self.pending.append(request)
        return NOT_DONE_YET

    def close(self) -> None:
        """
        Drop every connection still waiting.
        """
        for request in self.pending:
            transport = request.channel.transport if request.channel else None  # type: ignore[attr-defined]
            if transport is not None:
                transport.abortConnection()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + token}


class ParityTestCase(TestCase):
    """
    Helpers: servers on loopback closed in cleanup, and JSON checks.
    """

    timeout = 60

    #: The client, and the daemon's base URL, once ``setUp`` started it.
    http: Any
    base: str

    def serve(self, resource: Resource) -> int:
        """
        Serve ``resource`` on a loopback port until cleanup.
        """
        port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)  # type: ignore[attr-defined]

    def make_accounts(self) -> str:
        accounts = FilePath(self.mktemp())
        DirectoryCredentialStore(accounts).store(make_record(USER, PASSWORD, "admin"))
        return accounts.path

    async def post(
        self, path: str, body: Any = b"", headers: Optional[dict[str, Any]] = None
    ) -> tuple[Any, bytes]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = await self.http.post(self.base + path, data, headers=headers)
        return response, await response.content()

    async def request(
        self, method: str, path: str, headers: Optional[dict[str, Any]] = None
    ) -> tuple[Any, bytes]:
        response = await self.http.request(method, self.base + path, headers=headers)
        return response, await response.content()

    def assert_json(self, response: Any) -> None:
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [b"application/json"]
        )
        self.assertEqual(
            response.headers.getRawHeaders(b"access-control-allow-origin"), [b"*"]
        )

    def assert_error(
        self,
        answer: tuple[Any, bytes],
        status: int,
        code: str,
        route: str,
        message: Optional[str] = None,
    ) -> None:
        response, body = answer
        self.assertEqual(response.code, status, body)
        self.assert_json(response)
        document = json.loads(body)
        self.assertEqual(
            (document["status"], document["code"], document["route"]),
            (status, code, route),
        )
        if message is not None:
            self.assertEqual(document["message"], message)
        self.assertEqual(
            set(document) - {"details"},
            {"route", "status", "code", "message", "requestId", "timestamp"},
        )
        for secret in (SECRET, CLIENT_SECRET, ACCESS_TOKEN, NOTION_SECRET):
            self.assertNotIn(secret, body.decode("utf-8"))


class ConfiguredDaemonTests(ParityTestCase):
    """
    A daemon with GitHub sign-in, the Notion secret and upstreams: base and
    core answer, KV is down, build never answers.
    """

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        self.github = FakeGitHub()
        github_port = self.serve(self.github.root)
        self.base_service = RecordingUpstream(b"base", 200)
        self.core_service = RecordingUpstream(b"from core", 200)
        self.build_service = Hanging()
        self.addCleanup(self.build_service.close)
        env = {
            "GATEWAY_JWT_SECRET": SECRET,
            "GITHUB_CLIENT_ID": "integration-client",
            "GITHUB_CLIENT_SECRET": CLIENT_SECRET,
            "GITHUB_OAUTH_TOKEN_URL": "http://127.0.0.1:%d/login/oauth/access_token"
            % (github_port,),
            "GITHUB_API_URL": "http://127.0.0.1:%d/api" % (github_port,),
            "NOTION_WEBHOOK_SECRET": NOTION_SECRET,
            "BASE_SERVICE_URL": "http://127.0.0.1:%d/hq-root/"
            % (self.serve(self.base_service),),
            "CORE_SERVICE_URL": "http://127.0.0.1:%d"
            % (self.serve(self.core_service),),
            "KV_SERVICE_URL": "http://127.0.0.1:%d" % (refusing_port(self),),
            "BUILD_SERVICE_URL": "http://127.0.0.1:%d"
            % (self.serve(self.build_service),),
        }
        accounts = self.make_accounts()

        async def start() -> None:
            self.http = http_client(self)
            self.child, self.base = await start_daemon(
                self,
                env,
                "--accounts-dir",
                accounts,
                "--upstream-timeout",
                str(TIMEOUT),
            )

        return ensureDeferred(start())

    def test_core_session_rows(self) -> Deferred[None]:
        """
        Core login, session, refresh and logout as §4 says, the revoked
        token then refused on ``/core/session`` and ``/build``; other
        methods on those paths proxied to core, on ``/auth`` paths ``404``.
        """

        async def go() -> None:
            credentials = {"username": USER, "password": PASSWORD}
            response, body = await self.post("/core/auth/login", credentials)
            self.assertEqual(response.code, 200, body)
            self.assert_json(response)
            login = json.loads(body)
            self.assertEqual(login["user"], {"username": USER, "role": "admin"})
            token = login["token"]

            self.assert_error(
                await self.post("/core/auth/login", {"username": USER}),
                400,
                "INVALID_REQUEST",
                "CORE",
                "Username and password are required",
            )
            self.assert_error(
                await self.post(
                    "/core/auth/login", {"username": USER, "password": "wrong"}
                ),
                401,
                "INVALID_CREDENTIALS",
                "CORE",
                "Invalid credentials",
            )

            response, body = await self.request(
                "GET", "/core/session", headers=bearer(token)
            )
            self.assertEqual(response.code, 200, body)
            self.assertEqual(
                json.loads(body),
                {
                    "success": True,
                    "token": token,
                    "user": {"username": USER, "role": "admin"},
                },
            )
            self.assert_error(
                await self.request("GET", "/core/session"),
                401,
                "INVALID_SESSION",
                "CORE",
                "Session invalid or expired",
            )
            self.assert_error(
                await self.request("GET", "/core/session", headers=bearer("x.y.z")),
                403,
                "INVALID_SESSION",
                "CORE",
            )

            response, body = await self.post(
                "/core/session/refresh", headers=bearer(token)
            )
            self.assertEqual(response.code, 200, body)
            refreshed = json.loads(body)
            self.assertEqual(refreshed["user"], {"username": USER, "role": "admin"})
            self.assertNotEqual(refreshed["token"], token)
            self.assert_error(
                await self.post("/core/session/refresh"),
                401,
                "REFRESH_FAILED",
                "CORE",
                "Unable to refresh session",
            )
            self.assert_error(
                await self.post("/core/session/refresh", headers=bearer("x.y.z")),
                403,
                "REFRESH_FAILED",
                "CORE",
            )

            response, body = await self.post("/core/logout")
            self.assertEqual(
                (response.code, json.loads(body)), (200, {"success": True})
            )
            response, body = await self.post("/core/logout", headers=bearer(token))
            self.assertEqual(
                (response.code, json.loads(body)), (200, {"success": True})
            )
            self.assert_error(
                await self.request("GET", "/core/session", headers=bearer(token)),
                403,
                "INVALID_SESSION",
                "CORE",
            )
            self.assert_error(
                await self.request("GET", "/build/x", headers=bearer(token)),
                403,
                "INVALID_TOKEN",
                "BUILD",
            )
            response, _ = await self.request(
                "GET", "/core/session", headers=bearer(refreshed["token"])
            )
            self.assertEqual(response.code, 200)

            response, body = await self.post("/core/session", b"{}")
            self.assertEqual((response.code, body), (200, b"from core"))
            response, body = await self.request("GET", "/core/logout?a=1")
            self.assertEqual((response.code, body), (200, b"from core"))
            self.assertEqual(
                [(m, u) for m, u, _, _ in self.core_service.requests],
                [(b"POST", b"/session"), (b"GET", b"/logout?a=1")],
            )
            for method, path in (("GET", "/auth/login"), ("GET", "/auth/guest")):
                self.assert_error(
                    await self.request(method, path), 404, "NOT_FOUND", "CORE"
                )

        return ensureDeferred(go())

    def test_github_rows(self) -> Deferred[None]:
        """
        GitHub sign-in against the fake GitHub: a good code gets a ``CORE``
        token and the GitHub user; a bad code, or GitHub failing, is ``502
        GITHUB_AUTH_FAILED``; no code is ``400``.
        """

        async def go() -> None:
            response, body = await self.post(
                "/core/auth/github",
                {"code": FakeGitHub.good_code, "redirectUri": "https://app.test/cb"},
            )
            self.assertEqual(response.code, 200, body)
            self.assert_json(response)
            document = json.loads(body)
            self.assertEqual(
                document["user"],
                {
                    "username": OCTOCAT["login"],
                    "role": "admin",
                    "name": OCTOCAT["name"],
                    "avatarUrl": OCTOCAT["avatar_url"],
                    "githubUrl": OCTOCAT["html_url"],
                },
            )
            self.assertNotIn(ACCESS_TOKEN, body.decode())
            [(_, headers, sent)] = self.github.token.requests
            self.assertEqual(headers.getRawHeaders(b"accept"), [b"application/json"])
            self.assertEqual(json.loads(sent)["redirect_uri"], "https://app.test/cb")
            response, body = await self.request(
                "GET", "/core/session", headers=bearer(document["token"])
            )
            self.assertEqual(json.loads(body)["user"]["username"], OCTOCAT["login"])

            self.assert_error(
                await self.post("/core/auth/github", {"code": "stale"}),
                502,
                "GITHUB_AUTH_FAILED",
                "CORE",
            )
            self.assert_error(
                await self.post("/core/auth/github", {}),
                400,
                "INVALID_REQUEST",
                "CORE",
                "Missing GitHub code",
            )
            self.github.user.answer(503, {"message": "unavailable"})
            self.assert_error(
                await self.post("/core/auth/github", {"code": FakeGitHub.good_code}),
                502,
                "GITHUB_AUTH_FAILED",
                "CORE",
            )
            self.assertNotIn(CLIENT_SECRET.encode(), self.child.output)
            self.assertNotIn(ACCESS_TOKEN.encode(), self.child.output)

        return ensureDeferred(go())

    def test_webhook_rows(self) -> Deferred[None]:
        """
        A signed Notion webhook reaches base and core, the KV target (down)
        is listed with ``502``, a target that never answers with ``504``;
        the error rows answer as §4 says.
        """

        async def go() -> None:
            signed = {
                "X-Notion-Signature": NOTION_SECRET,
                "Content-Type": "application/json",
                "Authorization": "Bearer not-for-targets",
            }
            response, body = await self.post(
                "/webhooks/notion", b'{"type":"page.created"}', headers=signed
            )
            self.assertEqual(response.code, 202, body)
            self.assert_json(response)
            self.assertEqual(
                json.loads(body),
                {
                    "success": True,
                    "forwarded": [
                        {"target": "BASE_SERVICE", "status": 200},
                        {"target": "KV_SERVICE", "status": 502},
                        {"target": "CORE_SERVICE", "status": 200},
                    ],
                },
            )
            for service, uri in (
                (self.base_service, b"/hq-root/webhooks/notion"),
                (self.core_service, b"/webhooks/notion"),
            ):
                [(method, seen_uri, headers, sent)] = service.requests
                self.assertEqual((method, seen_uri), (b"POST", uri))
                self.assertEqual(sent, b'{"type":"page.created"}')
                self.assertEqual(
                    headers.getRawHeaders(b"x-gateway-source"), [b"notion"]
                )
                self.assertEqual(
                    headers.getRawHeaders(b"content-type"), [b"application/json"]
                )
                self.assertIsNone(headers.getRawHeaders(b"authorization"))

            response, body = await self.post(
                "/webhooks/NOTION",
                b"{}",
                headers=dict(signed, **{"X-Gateway-Webhook-Targets": "build_service"}),
            )
            self.assertEqual(response.code, 202, body)
            self.assertEqual(
                json.loads(body)["forwarded"],
                [{"target": "BUILD_SERVICE", "status": 504}],
            )

            self.assert_error(
                await self.post(
                    "/webhooks/notion",
                    b"{}",
                    headers=dict(signed, **{"X-Gateway-Webhook-Targets": "EVIL"}),
                ),
                502,
                "NO_TARGETS",
                "WEBHOOK",
            )
            self.assert_error(
                await self.post(
                    "/webhooks/notion", b"{}", headers={"X-Notion-Signature": "no"}
                ),
                401,
                "INVALID_SIGNATURE",
                "WEBHOOK",
            )
            self.assert_error(
                await self.post("/webhooks/notion", b"{}"),
                401,
                "INVALID_SIGNATURE",
                "WEBHOOK",
            )
            self.assert_error(
                await self.post("/webhooks/", b"{}", headers=signed),
                400,
                "INVALID_SOURCE",
                "WEBHOOK",
            )
            for verb in ("GET", "POST"):
                self.assert_error(
                    await self.request(verb, "/webhooks", headers=signed),
                    404,
                    "NOT_FOUND",
                    "CORE",
                )
            self.assert_error(
                await self.post("/webhooks/slack", b"{}", headers=signed),
                404,
                "UNKNOWN_SOURCE",
                "WEBHOOK",
            )
            self.assert_error(
                await self.request("GET", "/webhooks/notion", headers=signed),
                404,
                "NOT_FOUND",
                "WEBHOOK",
            )
            self.assertEqual(len(self.core_service.requests), 1)
            self.assertNotIn(NOTION_SECRET.encode(), self.child.output)

        return ensureDeferred(go())

    def test_webhook_headers(self) -> Deferred[None]:
        """
        Each target gets exactly the client's end-to-end headers less
        ``Authorization`` (and ``X-Gateway-*``), plus ``X-Gateway-Source:
        notion`` and the framing of the daemon's own request (its ``Host``
        and ``Content-Length``; its connections are kept alive, so no
        ``Connection``): the client's ``Accept-Encoding`` as sent, none
        when it sent none, and never a cookie a target set.
        """
        # A plain Agent: treq's client would add Accept-Encoding: gzip.
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        client = Agent(reactor, pool=pool)
        self.base_service.headers[b"Set-Cookie"] = [b"target=1; Path=/"]
        body = b'{"type":"page.updated"}'
        signature = NOTION_SECRET.encode("ascii")
        targets = [b"BASE_SERVICE, CORE_SERVICE"]

        async def send(headers: dict[bytes, list[bytes]]) -> None:
            response = await client.request(
                b"POST",
                (self.base + "/webhooks/notion").encode("ascii"),
                Headers(headers),
                FileBodyProducer(BytesIO(body)),
            )
            answer = await readBody(response)
            self.assertEqual(response.code, 202, answer)
            self.assertEqual(
                json.loads(answer)["forwarded"],
                [
                    {"target": "BASE_SERVICE", "status": 200},
                    {"target": "CORE_SERVICE", "status": 200},
                ],
            )

        def assert_received(expected: dict[bytes, list[bytes]]) -> None:
            for service in (self.base_service, self.core_service):
                _, _, headers, sent = service.requests[-1]
                self.assertEqual(sent, body)
                received = {
                    name.lower(): values for name, values in headers.getAllRawHeaders()
                }
                [host] = received.pop(b"host")
                self.assertRegex(host, rb"\A127\.0\.0\.1:[0-9]+\Z")
                # Each fan-out request carries the trace (a new one here).
                [traceparent] = received.pop(b"traceparent")
                self.assertRegex(traceparent, rb"\A00-[0-9a-f]{32}-[0-9a-f]{16}-01\Z")
                self.assertEqual(
                    received,
                    {
                        **expected,
                        b"content-length": [b"%d" % (len(body),)],
                        b"x-gateway-source": [b"notion"],
                    },
                )

        async def go() -> None:
            await send(
                {
                    b"X-Notion-Signature": [signature],
                    b"Content-Type": [b"application/json"],
                    b"Authorization": [b"Bearer not-for-targets"],
                    b"Accept-Encoding": [b"br"],
                    b"X-Trace": [b"one", b"two"],
                    b"X-Gateway-Webhook-Targets": targets,
                }
            )
            assert_received(
                {
                    b"x-notion-signature": [signature],
                    b"content-type": [b"application/json"],
                    b"accept-encoding": [b"br"],
                    b"x-trace": [b"one", b"two"],
                }
            )
            await send(
                {
                    b"X-Notion-Signature": [signature],
                    b"X-Gateway-Webhook-Targets": targets,
                }
            )
            assert_received({b"x-notion-signature": [signature]})

        return ensureDeferred(go())


class UnconfiguredDaemonTests(ParityTestCase):
    """
    A daemon without GitHub settings or the Notion secret.
    """

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        accounts = self.make_accounts()
        core = self.serve(RecordingUpstream(b"from core"))

        async def start() -> None:
            self.http = http_client(self)
            self.child, self.base = await start_daemon(
                self,
                {
                    "GATEWAY_JWT_SECRET": SECRET,
                    "CORE_SERVICE_URL": "http://127.0.0.1:%d" % (core,),
                },
                "--accounts-dir",
                accounts,
            )

        return ensureDeferred(start())

    def test_not_configured_rows(self) -> Deferred[None]:
        """
        GitHub sign-in is ``500 GITHUB_NOT_CONFIGURED``; a Notion webhook
        is ``500 NOTION_SECRET_MISSING``, signed or not.
        """

        async def go() -> None:
            self.assert_error(
                await self.post("/core/auth/github", {"code": "abc"}),
                500,
                "GITHUB_NOT_CONFIGURED",
                "CORE",
            )
            for headers in ({}, {"X-Notion-Signature": "anything"}):
                self.assert_error(
                    await self.post("/webhooks/notion", b"{}", headers=headers),
                    500,
                    "NOTION_SECRET_MISSING",
                    "WEBHOOK",
                )

        return ensureDeferred(go())
