"""
Tests for the ``/core/*`` rows of :ref:`contract-endpoints`: core login, session,
refresh and logout, and the other methods on those paths (proxied to the
core service), through a whole in-memory gateway.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from metagateway.auth.passwords import make_record
from metagateway.auth.tokens import LIFETIME
from metagateway.credentials.memory import MemoryCredentialStore
from metagateway.testing import PASSWORD, USERNAME, GatewayHarness, RecordingUpstream
from tests.helpers import (
    assert_invalid_credentials,
    assert_invalid_request,
    assert_json,
    assert_json_error,
)


def bearer(token: str) -> dict[str, str]:
    """
    The ``Authorization`` header carrying ``token``.
    """
    return {"Authorization": "Bearer " + token}


class CoreTestCase(SynchronousTestCase):
    """
    A gateway with :data:`USERNAME` (role ``admin``) and ``viewer`` (role
    ``viewer``), and a recording core upstream.
    """

    def setUp(self) -> None:
        self.upstream = RecordingUpstream(b"from core")
        self.harness = GatewayHarness(
            store=MemoryCredentialStore(
                [
                    make_record(USERNAME, PASSWORD, "admin"),
                    make_record("viewer", "viewer-pass", "viewer"),
                ]
            ),
            upstream=self.upstream,
        )

    def request(self, method: str, path: str, **kw: Any) -> Any:
        return self.harness.request(self, method, path, **kw)

    def core_login(self, username: str = USERNAME, password: str = PASSWORD) -> Any:
        return self.request(
            "POST",
            "/core/auth/login",
            data=json.dumps({"username": username, "password": password}).encode(),
        )

    def token(self, path: str = "/core/auth/login") -> str:
        return self.harness.login(self, path)


class CoreLoginTests(CoreTestCase):
    """
    ``POST /core/auth/login``.
    """

    def test_success(self) -> None:
        """
        Good credentials: ``200 {"success","token","user"}``, a ``CORE``
        token for the user and role.
        """
        response, body = self.core_login("viewer", "viewer-pass")
        self.assertEqual(response.code, 200, body)
        assert_json(self, response)
        document = json.loads(body)
        self.assertEqual(sorted(document), ["success", "token", "user"])
        self.assertIs(document["success"], True)
        self.assertEqual(document["user"], {"username": "viewer", "role": "viewer"})
        claims = self.harness.gateway.tokens.verify(document["token"])
        self.assertEqual(
            (claims.project_id, claims.route, claims.scopes, claims.environment),
            ("viewer", "CORE", ("viewer",), "production"),
        )

    def test_missing_fields(self) -> None:
        """
        A missing field or an unreadable body: ``400 INVALID_REQUEST``
        "Username and password are required", route ``CORE``.
        """
        for body in (
            b"{}",
            b'{"username":"alice"}',
            b'{"password":"x"}',
            b'{"username":"","password":"x"}',
            b"nope",
            b"",
            b"[" * 60000,
        ):
            response, answer = self.request("POST", "/core/auth/login", data=body)
            assert_invalid_request(
                self, response, answer, "Username and password are required"
            )

    def test_bad_credentials(self) -> None:
        """
        A wrong password or an unknown user: ``401 INVALID_CREDENTIALS``
        "Invalid credentials", route ``CORE``.
        """
        for username, password in ((USERNAME, "wrong"), ("nobody", PASSWORD)):
            response, body = self.core_login(username, password)
            assert_invalid_credentials(self, response, body, "CORE")

    def test_token_reaches_every_route(self) -> None:
        """
        A ``CORE`` token may reach any route, ``/build`` included.
        """
        token = self.token()
        response, _ = self.request("GET", "/build/x", headers=bearer(token))
        self.assertEqual(response.code, 200)


class SessionTests(CoreTestCase):
    """
    ``GET /core/session``.
    """

    def test_valid(self) -> None:
        """
        A valid token: ``200`` echoing the token, with ``projectId`` as the
        username and the first scope as the role.
        """
        token = self.token()
        response, body = self.request("GET", "/core/session", headers=bearer(token))
        self.assertEqual(response.code, 200, body)
        assert_json(self, response)
        self.assertEqual(
            json.loads(body),
            {
                "success": True,
                "token": token,
                "user": {"username": USERNAME, "role": "admin"},
            },
        )

    def test_core_and_auth_tokens(self) -> None:
        """
        A token that may reach ``CORE`` opens a session: an ``AUTH`` login
        token, and a guest token for ``CORE`` (role ``guest``).
        """
        token = self.token("/auth/login")
        response, body = self.request("GET", "/core/session", headers=bearer(token))
        self.assertEqual(response.code, 200, body)
        _, guest = self.request("POST", "/auth/guest", data=b'{"route":"core"}')
        guest_token = json.loads(guest)["token"]
        response, body = self.request(
            "GET", "/core/session", headers=bearer(guest_token)
        )
        self.assertEqual(response.code, 200, body)
        self.assertEqual(
            json.loads(body)["user"], {"username": "guest", "role": "guest"}
        )

    def test_other_route_token(self) -> None:
        """
        A valid token for another route (``BUILD``, ``KV``, a guest's) is a
        bad token here: ``403 INVALID_SESSION``, route ``CORE``.
        """
        _, guest = self.request("POST", "/auth/guest", data=b'{"route":"kv"}')
        tokens = [
            self.harness.gateway.tokens.issue(USERNAME, "BUILD", ["admin"]),
            self.harness.gateway.tokens.issue(USERNAME, "KV", ["admin"]),
            json.loads(guest)["token"],
        ]
        for token in tokens:
            response, body = self.request("GET", "/core/session", headers=bearer(token))
            assert_json_error(
                self,
                response,
                body,
                403,
                "INVALID_SESSION",
                route="CORE",
                message="Session invalid or expired",
            )

    def test_no_scopes(self) -> None:
        """
        A token without scopes reports the role ``admin``.
        """
        token = self.harness.gateway.tokens.issue("robot", "CORE", [])
        response, body = self.request("GET", "/core/session", headers=bearer(token))
        self.assertEqual(
            json.loads(body)["user"], {"username": "robot", "role": "admin"}
        )

    def test_no_token(self) -> None:
        """
        No token, or an ``Authorization`` that is not Bearer: ``401
        INVALID_SESSION`` "Session invalid or expired", route ``CORE``.
        """
        for headers in (
            {},
            {"Authorization": "Basic YTpi"},
            {"Authorization": "Bearer "},
        ):
            response, body = self.request("GET", "/core/session", headers=headers)
            assert_json_error(
                self,
                response,
                body,
                401,
                "INVALID_SESSION",
                route="CORE",
                message="Session invalid or expired",
            )

    def test_bad_token(self) -> None:
        """
        A malformed, forged or expired token: ``403 INVALID_SESSION``.
        """
        token = self.token()
        forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        for candidate in ("garbage", forged):
            response, body = self.request(
                "GET", "/core/session", headers=bearer(candidate)
            )
            assert_json_error(
                self, response, body, 403, "INVALID_SESSION", route="CORE"
            )
        self.harness.clock.advance(LIFETIME)
        response, body = self.request("GET", "/core/session", headers=bearer(token))
        assert_json_error(self, response, body, 403, "INVALID_SESSION", route="CORE")

    def test_not_proxied(self) -> None:
        """
        The gateway answers ``GET /core/session`` itself.
        """
        self.request("GET", "/core/session")
        self.assertEqual(self.upstream.requests, [])


class RefreshTests(CoreTestCase):
    """
    ``POST /core/session/refresh``.
    """

    def test_fresh_token(self) -> None:
        """
        A valid token gets a new ``CORE`` token for the same user and role,
        answered as a login; the new token is valid.
        """
        _, body = self.request(
            "POST",
            "/auth/login",
            data=json.dumps({"username": "viewer", "password": "viewer-pass"}).encode(),
        )
        old = json.loads(body)["token"]
        self.harness.clock.advance(60)
        response, body = self.request(
            "POST", "/core/session/refresh", headers=bearer(old)
        )
        self.assertEqual(response.code, 200, body)
        assert_json(self, response)
        document = json.loads(body)
        self.assertEqual(sorted(document), ["success", "token", "user"])
        self.assertEqual(document["user"], {"username": "viewer", "role": "viewer"})
        self.assertNotEqual(document["token"], old)
        claims = self.harness.gateway.tokens.verify(document["token"])
        self.assertEqual(
            (claims.project_id, claims.route, claims.scopes),
            ("viewer", "CORE", ("viewer",)),
        )
        old_claims = self.harness.gateway.tokens.verify(old)
        self.assertEqual(claims.expires, old_claims.expires + 60)

    def test_no_token(self) -> None:
        """
        No token: ``401 REFRESH_FAILED`` "Unable to refresh session", route
        ``CORE``.
        """
        response, body = self.request("POST", "/core/session/refresh")
        assert_json_error(
            self,
            response,
            body,
            401,
            "REFRESH_FAILED",
            route="CORE",
            message="Unable to refresh session",
        )

    def test_bad_token(self) -> None:
        """
        An invalid or expired token: ``403 REFRESH_FAILED``.
        """
        token = self.token()
        response, body = self.request(
            "POST", "/core/session/refresh", headers=bearer("x.y.z")
        )
        assert_json_error(self, response, body, 403, "REFRESH_FAILED", route="CORE")
        self.harness.clock.advance(LIFETIME + 1)
        response, body = self.request(
            "POST", "/core/session/refresh", headers=bearer(token)
        )
        assert_json_error(self, response, body, 403, "REFRESH_FAILED", route="CORE")

    def test_other_route_token(self) -> None:
        """
        A valid token for another route is not widened into a ``CORE``
        token: ``403 REFRESH_FAILED``, and no token is answered.
        """
        for route in ("BUILD", "KV", "BASE", "WEBHOOK"):
            token = self.harness.gateway.tokens.issue(USERNAME, route, ["admin"])
            response, body = self.request(
                "POST", "/core/session/refresh", headers=bearer(token)
            )
            assert_json_error(
                self,
                response,
                body,
                403,
                "REFRESH_FAILED",
                route="CORE",
                message="Unable to refresh session",
            )
            self.assertNotIn(b"token", body)


class LogoutTests(CoreTestCase):
    """
    ``POST /core/logout``.
    """

    def test_without_token(self) -> None:
        """
        Without a token (or with an invalid one): ``200 {"success":true}``.
        """
        for headers in ({}, bearer("garbage"), {"Authorization": "Basic YTpi"}):
            response, body = self.request("POST", "/core/logout", headers=headers)
            self.assertEqual(response.code, 200, body)
            assert_json(self, response)
            self.assertEqual(json.loads(body), {"success": True})

    def test_revokes(self) -> None:
        """
        The token sent with a logout is refused from then on: on
        ``/core/session`` (``403 INVALID_SESSION``), on refresh, and on
        ``/build`` (``403 INVALID_TOKEN``); another token of the same user
        still works.
        """
        token = self.token()
        other = self.token()
        response, body = self.request("POST", "/core/logout", headers=bearer(token))
        self.assertEqual((response.code, json.loads(body)), (200, {"success": True}))
        response, body = self.request("GET", "/core/session", headers=bearer(token))
        assert_json_error(self, response, body, 403, "INVALID_SESSION", route="CORE")
        response, body = self.request(
            "POST", "/core/session/refresh", headers=bearer(token)
        )
        assert_json_error(self, response, body, 403, "REFRESH_FAILED", route="CORE")
        response, body = self.request("GET", "/build/x", headers=bearer(token))
        assert_json_error(self, response, body, 403, "INVALID_TOKEN", route="BUILD")
        response, body = self.request("GET", "/core/x", headers=bearer(token))
        assert_json_error(self, response, body, 403, "INVALID_TOKEN", route="CORE")
        self.assertEqual(self.upstream.requests, [])
        response, _ = self.request("GET", "/core/session", headers=bearer(other))
        self.assertEqual(response.code, 200)
        response, _ = self.request("GET", "/build/x", headers=bearer(other))
        self.assertEqual(response.code, 200)

    def test_revokes_other_route_token(self) -> None:
        """
        A valid token for another route (``BUILD``) is revoked too: logging
        out only takes access away, and it ends that token's session.
        """
        token = self.harness.gateway.tokens.issue(USERNAME, "BUILD", ["admin"])
        response, _ = self.request("GET", "/build/x", headers=bearer(token))
        self.assertEqual(response.code, 200)
        response, body = self.request("POST", "/core/logout", headers=bearer(token))
        self.assertEqual((response.code, json.loads(body)), (200, {"success": True}))
        response, body = self.request("GET", "/build/x", headers=bearer(token))
        assert_json_error(self, response, body, 403, "INVALID_TOKEN", route="BUILD")
        self.assertEqual(len(self.upstream.requests), 1)

    def test_twice(self) -> None:
        """
        Logging out with an already revoked token still answers ``200``.
        """
        token = self.token()
        for _ in range(2):
            response, body = self.request("POST", "/core/logout", headers=bearer(token))
            self.assertEqual(response.code, 200, body)


class OtherMethodsTests(CoreTestCase):
    """
    The auth endpoints answer only their own method.
    """

    def test_core_paths_proxied(self) -> None:
        """
        Another method on a ``/core/…`` endpoint is proxied to the core
        service, path after the prefix and query unchanged.
        """
        cases = [
            ("POST", "/core/session", b"/session"),
            ("DELETE", "/core/session", b"/session"),
            ("GET", "/core/session/refresh", b"/session/refresh"),
            ("GET", "/core/logout?x=1", b"/logout?x=1"),
            ("PUT", "/core/auth/login", b"/auth/login"),
            ("GET", "/core/auth/login", b"/auth/login"),
            ("GET", "/core/auth/github", b"/auth/github"),
        ]
        for method, path, upstream_uri in cases:
            sent = b"" if method == "GET" else b'{"a":1}'
            response, body = self.request(method, path, data=sent or None)
            self.assertEqual((response.code, body), (200, b"from core"), (method, path))
            seen_method, uri, _, seen_body = self.upstream.requests[-1]
            self.assertEqual(
                (seen_method, uri, seen_body), (method.encode(), upstream_uri, sent)
            )

    def test_proxied_token_checked(self) -> None:
        """
        A proxied ``/core`` request's token is checked if sent: a valid one
        names the user upstream, an invalid one is ``403 INVALID_TOKEN``.
        """
        token = self.token()
        response, _ = self.request(
            "POST", "/core/session", headers=bearer(token), data=b"{}"
        )
        self.assertEqual(response.code, 200)
        headers = self.upstream.requests[-1][2]
        self.assertEqual(headers.getRawHeaders(b"x-gateway-user"), [USERNAME.encode()])
        self.assertIsNone(headers.getRawHeaders(b"authorization"))
        response, body = self.request("POST", "/core/session", headers=bearer("bad"))
        assert_json_error(self, response, body, 403, "INVALID_TOKEN", route="CORE")

    def test_auth_paths_not_found(self) -> None:
        """
        Another method on an ``/auth/…`` path, or an ``/auth/…`` path the
        gateway does not answer: ``404 NOT_FOUND``; never proxied.
        """
        cases = [
            ("GET", "/auth/login"),
            ("PUT", "/auth/login"),
            ("GET", "/auth/guest"),
            ("DELETE", "/auth/guest"),
            ("POST", "/auth/github"),
            ("POST", "/auth/session"),
            ("GET", "/auth"),
        ]
        for method, path in cases:
            response, body = self.request(method, path)
            assert_json_error(self, response, body, 404, "NOT_FOUND")
        self.assertEqual(self.upstream.requests, [])

    def test_options(self) -> None:
        """
        ``OPTIONS`` on a core endpoint is the CORS preflight answer, not
        proxied.
        """
        response, _ = self.request("OPTIONS", "/core/session")
        self.assertEqual(response.code, 204)
        self.assertEqual(
            response.headers.getRawHeaders(b"access-control-allow-methods"),
            [b"GET,POST,PUT,DELETE,OPTIONS"],
        )
        self.assertEqual(self.upstream.requests, [])

    def test_dot_segments(self) -> None:
        """
        Dot segments are resolved before the endpoint is chosen:
        ``/kv/../core/session`` is the session endpoint.
        """
        token = self.token()
        response, body = self.request(
            "GET", "/kv/../core/session", headers=bearer(token)
        )
        self.assertEqual(response.code, 200, body)
        self.assertEqual(json.loads(body)["token"], token)
