"""
Tests for ``POST /core/auth/github``: the GitHub OAuth code exchange
(:ref:`contract-endpoints`), against a fake GitHub behind a ``RequestTraversalAgent``.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from metagateway.config import GitHubSettings
from metagateway.testing import (
    ACCESS_TOKEN,
    API_URL,
    CLIENT_ID,
    CLIENT_SECRET,
    OCTOCAT,
    TOKEN_URL,
    FakeGitHub,
    GatewayHarness,
    RecordingUpstream,
    make_config,
)
from tests.helpers import (
    assert_cancelled_quietly,
    assert_invalid_request,
    assert_json,
    assert_json_error,
)


def github_config(**settings: Any) -> Any:
    """
    A test configuration with GitHub sign-in pointed at the fake.
    """
    values: dict[str, Any] = dict(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        token_url=TOKEN_URL,
        api_url=API_URL,
    )
    values.update(settings)
    return make_config(github=GitHubSettings(**values))


class GitHubSignInTests(SynchronousTestCase):
    """
    ``POST /core/auth/github`` through a whole in-memory gateway.
    """

    def setUp(self) -> None:
        self.github = FakeGitHub()
        self.core = RecordingUpstream(b"from core")
        self.harness = GatewayHarness(
            github_config(), upstream=self.core, outside=self.github.hosts()
        )
        self.logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.logged.append)  # type: ignore[arg-type]
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)  # type: ignore[arg-type]

    def sign_in(self, body: Optional[bytes] = None, **kw: Any) -> Any:
        if body is None:
            body = json.dumps({"code": FakeGitHub.good_code}).encode()
        return self.harness.request(self, "POST", "/core/auth/github", data=body, **kw)

    def start(self, body: Optional[bytes] = None) -> Any:
        """
        Start a sign-in without waiting for it.
        """
        if body is None:
            body = json.dumps({"code": FakeGitHub.good_code}).encode()
        d = self.harness.client.request(
            "POST", "http://gateway.test/core/auth/github", data=body
        )
        self.harness.flush()
        return d

    def finish(self, d: Any) -> Any:
        return self.harness.finish(self, d)

    def assert_failed(self, response: Any, body: bytes) -> None:
        assert_json_error(self, response, body, 502, "GITHUB_AUTH_FAILED", route="CORE")
        self.assert_nothing_leaked(body)

    def assert_nothing_leaked(self, body: bytes) -> None:
        """
        Neither the client secret nor the access token is in ``body`` or in
        any log event.
        """
        text = body.decode("utf-8")
        self.assertNotIn(CLIENT_SECRET, text)
        self.assertNotIn(ACCESS_TOKEN, text)
        for event in self.logged:
            for rendered in (formatEvent(event), repr(event)):
                self.assertNotIn(CLIENT_SECRET, rendered)
                self.assertNotIn(ACCESS_TOKEN, rendered)

    def test_success(self) -> None:
        """
        A good code gets ``200`` with a ``CORE`` token for the GitHub login,
        role ``admin``, and the user's name, avatar and profile URL.
        """
        response, body = self.sign_in()
        self.assertEqual(response.code, 200, body)
        assert_json(self, response)
        document = json.loads(body)
        self.assertEqual(
            document["user"],
            {
                "username": "octocat",
                "role": "admin",
                "name": "The Octocat",
                "avatarUrl": OCTOCAT["avatar_url"],
                "githubUrl": OCTOCAT["html_url"],
            },
        )
        self.assertIs(document["success"], True)
        self.assertEqual(sorted(document), ["success", "token", "user"])
        claims = self.harness.gateway.tokens.verify(document["token"])
        self.assertEqual(claims.project_id, "octocat")
        self.assertEqual(claims.route, "CORE")
        self.assertEqual(claims.scopes, ("admin",))
        self.assertEqual(claims.environment, "production")
        self.assert_nothing_leaked(body)

    def test_session_accepts_the_token(self) -> None:
        """
        The token a GitHub sign-in gets opens a ``/core/session``.
        """
        _, body = self.sign_in()
        token = json.loads(body)["token"]
        response, body = self.harness.request(
            self, "GET", "/core/session", headers={"Authorization": "Bearer " + token}
        )
        self.assertEqual(response.code, 200, body)
        self.assertEqual(
            json.loads(body)["user"], {"username": "octocat", "role": "admin"}
        )

    def test_token_request(self) -> None:
        """
        The code goes to the token URL as a JSON ``POST`` with ``Accept:
        application/json``, with the client id and secret, and the
        ``redirectUri`` as ``redirect_uri``.
        """
        self.sign_in(
            json.dumps(
                {"code": FakeGitHub.good_code, "redirectUri": "https://app.test/cb"}
            ).encode()
        )
        [(method, headers, body)] = self.github.token.requests
        self.assertEqual(method, b"POST")
        self.assertEqual(headers.getRawHeaders(b"accept"), [b"application/json"])
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(
            json.loads(body),
            {
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "code": FakeGitHub.good_code,
                "redirect_uri": "https://app.test/cb",
            },
        )

    def test_no_redirect_uri(self) -> None:
        """
        Without ``redirectUri`` (or with one that is not a string), no
        ``redirect_uri`` is sent.
        """
        self.sign_in()
        self.sign_in(
            json.dumps({"code": FakeGitHub.good_code, "redirectUri": 7}).encode()
        )
        for _, _, body in self.github.token.requests:
            self.assertNotIn("redirect_uri", json.loads(body))

    def test_user_request(self) -> None:
        """
        The user is read with ``GET {GITHUB_API_URL}/user`` (one slash), the
        access token as a bearer token, and a ``User-Agent``.
        """
        self.sign_in()
        [(method, headers, _)] = self.github.user.requests
        self.assertEqual(method, b"GET")
        self.assertEqual(
            headers.getRawHeaders(b"authorization"),
            [b"Bearer " + ACCESS_TOKEN.encode()],
        )
        self.assertTrue(headers.getRawHeaders(b"user-agent")[0])

    def test_name_missing(self) -> None:
        """
        A user without a public name is named by their login; missing
        avatar and profile URLs are ``null``.
        """
        self.github.user.answer(200, {"login": "hubot", "name": None})
        response, body = self.sign_in()
        self.assertEqual(response.code, 200, body)
        self.assertEqual(
            json.loads(body)["user"],
            {
                "username": "hubot",
                "role": "admin",
                "name": "hubot",
                "avatarUrl": None,
                "githubUrl": None,
            },
        )

    def test_missing_code(self) -> None:
        """
        No code, an empty or non-string code, an unreadable body: ``400
        INVALID_REQUEST`` "Missing GitHub code", route ``CORE``; GitHub is
        not asked.
        """
        for body in (
            b"{}",
            b'{"code":""}',
            b'{"code":12}',
            b'{"redirectUri":"x"}',
            b"not json",
            b"[]",
            b"",
            b"[" * 60000,
        ):
            response, answer = self.sign_in(body)
            assert_invalid_request(self, response, answer, "Missing GitHub code")
        self.assertEqual(self.github.token.requests, [])

    def test_not_configured(self) -> None:
        """
        Without the client id or the secret: ``500 GITHUB_NOT_CONFIGURED``,
        route ``CORE``; GitHub is not asked.
        """
        for settings in ({"client_id": None}, {"client_secret": None}):
            harness = GatewayHarness(
                github_config(**settings), outside=self.github.hosts()
            )
            response, body = harness.request(
                self,
                "POST",
                "/core/auth/github",
                data=json.dumps({"code": FakeGitHub.good_code}).encode(),
            )
            assert_json_error(
                self, response, body, 500, "GITHUB_NOT_CONFIGURED", route="CORE"
            )
        self.assertEqual(self.github.token.requests, [])

    def test_bad_code(self) -> None:
        """
        GitHub's ``200 {"error": ...}`` answer to a bad code is ``502
        GITHUB_AUTH_FAILED``.
        """
        response, body = self.sign_in(b'{"code":"expired"}')
        self.assert_failed(response, body)
        self.assertEqual(self.github.user.requests, [])

    def test_token_endpoint_errors(self) -> None:
        """
        A non-2xx answer, an answer that is not JSON or not an object, an
        empty or non-string ``access_token``, or a redirect (not followed)
        from the token endpoint: ``502 GITHUB_AUTH_FAILED``.
        """
        cases = [
            (500, b'{"access_token":"x"}'),
            (401, b"{}"),
            (200, b"<html>"),
            (200, b"[1]"),
            (200, b"[" * 60000),
            (200, b'{"access_token":""}'),
            (200, b'{"access_token":5}'),
            (302, b'{"access_token":"x"}'),
        ]
        for code, answer in cases:
            self.github.token.answer_raw(code, answer)
            response, body = self.sign_in()
            self.assert_failed(response, body)
        self.assertEqual(self.github.user.requests, [])

    def test_user_endpoint_errors(self) -> None:
        """
        A non-2xx answer, an answer that is not a JSON object, or a user
        without a login that can hold a token (at least 4 characters): ``502
        GITHUB_AUTH_FAILED``.
        """
        cases = [
            (401, OCTOCAT),
            (500, OCTOCAT),
            (200, []),
            (200, {"name": "no login"}),
            (200, {"login": 42}),
            (200, {"login": "abc"}),
            (200, {"login": ""}),
        ]
        for code, document in cases:
            self.github.user.answer(code, document)
            response, body = self.sign_in()
            self.assert_failed(response, body)

    def test_answer_too_large(self) -> None:
        """
        A GitHub answer past the read limit is ``502 GITHUB_AUTH_FAILED``.
        """
        self.github.user.answer(200, dict(OCTOCAT, bio="x" * (1024 * 1024)))
        response, body = self.sign_in()
        self.assert_failed(response, body)

    def test_token_endpoint_timeout(self) -> None:
        """
        A token endpoint that does not answer within the timeout is ``502
        GITHUB_AUTH_FAILED``; nothing is answered before then.
        """
        self.github.token.hang = True
        d = self.start()
        self.harness.run_to_timeout(self, d)
        response, body = self.finish(d)
        self.assert_failed(response, body)
        self.assertEqual(self.github.user.requests, [])
        messages = [formatEvent(e) for e in self.logged]
        self.assertIn("GitHub sign-in failed: timed out", messages)

    def test_user_endpoint_timeout(self) -> None:
        """
        The user endpoint has its own timeout: ``502 GITHUB_AUTH_FAILED``.
        """
        self.github.user.hang = True
        d = self.start()
        timeout = self.harness.gateway.config.upstream_timeout
        self.harness.clock.advance(timeout - 1)
        self.harness.flush()
        self.assertNoResult(d)
        self.assertEqual(len(self.github.user.pending), 1)
        self.harness.clock.advance(1)
        response, body = self.finish(d)
        self.assert_failed(response, body)

    def test_connection_lost(self) -> None:
        """
        A dropped connection at either endpoint is ``502
        GITHUB_AUTH_FAILED``.
        """
        for endpoint in (self.github.token, self.github.user):
            endpoint.drop = True
            response, body = self.sign_in()
            self.assert_failed(response, body)
            endpoint.drop = False

    def test_unreachable(self) -> None:
        """
        A GitHub the gateway cannot reach (here: an unknown host, answered
        by a ``404``) is ``502 GITHUB_AUTH_FAILED``.
        """
        harness = GatewayHarness(
            github_config(token_url="http://nowhere.test/x"),
            outside=self.github.hosts(),
        )
        response, body = harness.request(
            self, "POST", "/core/auth/github", data=b'{"code":"good-code"}'
        )
        self.assert_failed(response, body)

    def test_body_too_large(self) -> None:
        """
        A body over the auth endpoints' limit is ``413 PAYLOAD_TOO_LARGE``,
        route ``CORE``.
        """
        big = json.dumps({"code": "x" * (64 * 1024)}).encode()
        response, body = self.sign_in(big)
        assert_json_error(self, response, body, 413, "PAYLOAD_TOO_LARGE", route="CORE")
        self.assertEqual(self.github.token.requests, [])

    def test_other_methods_proxied(self) -> None:
        """
        Another method on ``/core/auth/github`` is proxied to the core
        service, like any ``/core`` path.
        """
        response, body = self.harness.request(self, "GET", "/core/auth/github")
        self.assertEqual((response.code, body), (200, b"from core"))
        self.assertEqual(self.core.requests[-1][1], b"/auth/github")
        self.assertEqual(self.github.token.requests, [])

    def test_failures_logged_without_secrets(self) -> None:
        """
        A failure is logged, naming the cause, with neither the client
        secret nor the access token.
        """
        self.github.user.answer(500, {"message": ACCESS_TOKEN})
        response, body = self.sign_in()
        self.assert_failed(response, body)
        messages = [formatEvent(e) for e in self.logged]
        self.assertTrue(
            any("GitHub sign-in failed" in m and "500" in m for m in messages),
            messages,
        )

    def test_client_gone(self) -> None:
        """
        A client that goes away during the exchange cancels the GitHub call;
        nothing is logged as an error.
        """
        self.github.token.hang = True
        d = self.start()
        self.assertEqual(len(self.github.token.pending), 1)
        assert_cancelled_quietly(self, self.harness, d)
