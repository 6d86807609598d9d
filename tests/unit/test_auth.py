"""
Tests for the auth endpoints (:ref:`contract-endpoints`): ``/auth/login``,
``/auth/guest``, ``/health``.
"""

from __future__ import annotations

import json
from typing import Any

import jwt
from klein import Klein
from zope.interface import implementer

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from metagateway.auth.app import VIEW_LABELS, AuthApp, endpoint_labels, own_endpoints
from metagateway.auth.passwords import make_record
from metagateway.auth.tokens import AUDIENCE, ISSUER
from metagateway.credentials.interfaces import (
    AccountRecord,
    ICredentialStore,
    StoreUnavailable,
    UnreadableRecord,
)
from metagateway.credentials.memory import MemoryCredentialStore
from metagateway.testing import PASSWORD, SECRET, USERNAME, GatewayHarness
from tests.helpers import assert_invalid_credentials, assert_json, assert_json_error


@implementer(ICredentialStore)
class BrokenStore:
    """
    A store that always fails with ``error``.
    """

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.lookups = 0

    def lookup(self, username: str) -> Deferred[AccountRecord]:
        self.lookups += 1
        return fail(self.error)


@implementer(ICredentialStore)
class OneRecordStore:
    """
    A store answering every lookup with ``record``.
    """

    def __init__(self, record: AccountRecord) -> None:
        self.record = record

    def lookup(self, username: str) -> Deferred[AccountRecord]:
        return succeed(self.record)


def login_body(username: Any = USERNAME, password: Any = PASSWORD) -> bytes:
    return json.dumps({"username": username, "password": password}).encode()


def decode(token: str) -> dict[str, Any]:
    return dict(
        jwt.decode(
            token,
            SECRET,
            algorithms=["HS256"],
            audience=AUDIENCE,
            options={"verify_exp": False, "verify_iat": False},
        )
    )


class LoginTests(SynchronousTestCase):
    """
    ``POST /auth/login``.
    """

    def setUp(self) -> None:
        self.h = GatewayHarness()

    def test_success(self) -> None:
        """
        Good credentials get ``200`` with a token of route ``AUTH`` and the
        user; the token carries every §3 claim.
        """
        response, body = self.h.request(self, "POST", "/auth/login", data=login_body())
        self.assertEqual(response.code, 200)
        assert_json(self, response)
        document = json.loads(body)
        self.assertEqual(document["success"], True)
        self.assertEqual(document["user"], {"username": USERNAME, "role": "admin"})
        self.assertEqual(set(document), {"success", "token", "user"})
        claims = decode(document["token"])
        now = int(self.h.clock.seconds())
        self.assertEqual(claims["projectId"], USERNAME)
        self.assertEqual(claims["sub"], USERNAME)
        self.assertEqual(claims["route"], "AUTH")
        self.assertEqual(claims["scopes"], ["admin"])
        self.assertEqual(claims["environment"], "production")
        self.assertEqual(claims["issuedBy"], ISSUER)
        self.assertEqual(claims["iss"], ISSUER)
        self.assertEqual(claims["aud"], AUDIENCE)
        self.assertEqual(claims["iat"], now)
        self.assertEqual(claims["exp"], now + 3600)
        self.assertTrue(claims["jti"])
        header = jwt.get_unverified_header(document["token"])
        self.assertEqual(header["alg"], "HS256")
        self.assertEqual(header["typ"], "JWT")
        self.assertIn("kid", header)

    def test_role_from_record(self) -> None:
        """
        The record's role is the user's role and the token's scope.
        """
        store = MemoryCredentialStore([make_record("bob-the-builder", "pw", "editor")])
        h = GatewayHarness(store=store)
        response, body = h.request(
            self, "POST", "/auth/login", data=login_body("bob-the-builder", "pw")
        )
        document = json.loads(body)
        self.assertEqual(document["user"]["role"], "editor")
        self.assertEqual(decode(document["token"])["scopes"], ["editor"])

    def test_missing_fields(self) -> None:
        """
        A missing field, an empty one, a non-string or unreadable JSON is
        ``400 INVALID_REQUEST``.
        """
        for data in (
            b"{}",
            json.dumps({"username": USERNAME}).encode(),
            json.dumps({"password": PASSWORD}).encode(),
            login_body("", PASSWORD),
            login_body(USERNAME, 12345),
            b"not json",
            b"[1,2]",
            b"\xff\xfe",
            b"",
            # Nested deeper than the parser goes: unreadable, not a 500.
            b"[" * 60000,
            b'{"a":' * 12000,
        ):
            response, body = self.h.request(self, "POST", "/auth/login", data=data)
            assert_json_error(
                self,
                response,
                body,
                400,
                "INVALID_REQUEST",
                "AUTH",
                "Username and password are required",
            )

    def test_wrong_password_and_unknown_user(self) -> None:
        """
        A wrong password and an unknown user get the same
        ``401 INVALID_CREDENTIALS``.
        """
        for data in (login_body(USERNAME, "wrong"), login_body("nobody-here", "x")):
            response, body = self.h.request(self, "POST", "/auth/login", data=data)
            assert_invalid_credentials(self, response, body)

    def test_bad_usernames_never_looked_up(self) -> None:
        """
        Usernames that could escape their key, or are too short or too long
        for a token, fail as invalid credentials without a lookup.
        """
        store = BrokenStore(StoreUnavailable("must not be asked"))
        h = GatewayHarness(store=store)
        for name in ("../etc", "a/b", "a\\b", "abc", "bad\nname", "x" * 129, "é" * 65):
            response, body = h.request(
                self, "POST", "/auth/login", data=login_body(name, "pw")
            )
            assert_json_error(self, response, body, 401, "INVALID_CREDENTIALS", "AUTH")
        self.assertEqual(store.lookups, 0)

    def test_store_unavailable_fails_closed(self) -> None:
        """
        A store that cannot answer, or an unreadable record, is
        ``503 CREDENTIAL_STORE_UNAVAILABLE``: never 401, never a token.
        """
        for error in (StoreUnavailable("down"), UnreadableRecord("garbage")):
            h = GatewayHarness(store=BrokenStore(error))
            response, body = h.request(self, "POST", "/auth/login", data=login_body())
            assert_json_error(
                self, response, body, 503, "CREDENTIAL_STORE_UNAVAILABLE", "AUTH"
            )
            self.assertNotIn(b"token", body)

    def test_unexpected_store_error(self) -> None:
        """
        Anything unexpected is ``500 INTERNAL_ERROR``, logged, without a
        traceback in the answer.
        """
        h = GatewayHarness(store=BrokenStore(ZeroDivisionError("boom")))
        for path, route in (("/auth/login", "AUTH"), ("/core/auth/login", "CORE")):
            response, body = h.request(self, "POST", path, data=login_body())
            assert_json_error(self, response, body, 500, "INTERNAL_ERROR", route)
            self.assertNotIn(b"boom", body)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)

    def test_record_username_too_short(self) -> None:
        """
        A record whose own ``username`` is shorter than a token's
        ``projectId`` may be (4 characters) cannot log in: ``401
        INVALID_CREDENTIALS``, as for a short login name, never a token
        the gateway would then refuse.
        """
        record = make_record("ab", "pw")
        h = GatewayHarness(store=OneRecordStore(record))
        response, body = h.request(
            self, "POST", "/auth/login", data=login_body("shortname", "pw")
        )
        assert_invalid_credentials(self, response, body)

    def test_body_too_large(self) -> None:
        """
        A body over 64 KiB is ``413 PAYLOAD_TOO_LARGE``.
        """
        data = json.dumps(
            {"username": USERNAME, "password": "x" * (64 * 1024)}
        ).encode()
        response, body = self.h.request(self, "POST", "/auth/login", data=data)
        assert_json_error(self, response, body, 413, "PAYLOAD_TOO_LARGE", "AUTH")

    def test_other_methods_not_found(self) -> None:
        """
        Another method on an ``/auth/…`` path is ``404 NOT_FOUND``.
        """
        for method, path in (
            ("GET", "/auth/login"),
            ("PUT", "/auth/guest"),
            ("DELETE", "/auth/login"),
            ("POST", "/auth/other"),
            ("GET", "/auth"),
        ):
            response, body = self.h.request(self, method, path)
            assert_json_error(self, response, body, 404, "NOT_FOUND")
        self.assertEqual(self.h.upstream.requests, [])


class GuestTests(SynchronousTestCase):
    """
    ``POST /auth/guest``.
    """

    def guest(self, data: bytes) -> dict[str, Any]:
        h = GatewayHarness()
        response, body = h.request(self, "POST", "/auth/guest", data=data)
        self.assertEqual(response.code, 200)
        assert_json(self, response)
        return dict(json.loads(body))

    def test_named_route(self) -> None:
        """
        A route naming one of the routes is upper-cased into the token.
        """
        document = self.guest(json.dumps({"route": "kv"}).encode())
        self.assertEqual(document["route"], "KV")
        self.assertEqual(set(document), {"success", "token", "route"})
        claims = decode(document["token"])
        self.assertEqual(claims["route"], "KV")
        self.assertEqual(claims["projectId"], "guest")
        self.assertEqual(claims["scopes"], ["guest"])
        self.assertEqual(claims["environment"], "staging")

    def test_default_route(self) -> None:
        """
        No route, an unknown one, a non-string or unreadable JSON gives
        ``BUILD``.
        """
        for data in (
            b"{}",
            b"",
            b"garbage",
            b'{"route":"nope"}',
            b'{"route":3}',
            b"[" * 60000,
        ):
            self.assertEqual(self.guest(data)["route"], "BUILD")


class HealthTests(SynchronousTestCase):
    """
    ``GET /health``.
    """

    def test_health(self) -> None:
        """
        ``/health`` answers without touching the store or an upstream.
        """
        store = BrokenStore(StoreUnavailable("down"))
        h = GatewayHarness(store=store)
        response, body = h.request(self, "GET", "/health")
        self.assertEqual(response.code, 200)
        assert_json(self, response)
        self.assertEqual(
            json.loads(body),
            {
                "status": "ok",
                "service": "gateway",
                "timestamp": int(h.clock.seconds() * 1000),
            },
        )
        self.assertEqual(store.lookups, 0)
        self.assertEqual(h.upstream.requests, [])

    def test_head(self) -> None:
        """
        ``HEAD /health`` is answered by the gateway: ``200``, no body.
        """
        h = GatewayHarness()
        response, body = h.request(self, "HEAD", "/health")
        self.assertEqual((response.code, body), (200, b""))
        self.assertEqual(h.upstream.requests, [])


class OwnEndpointsTests(SynchronousTestCase):
    """
    :func:`own_endpoints` and :func:`endpoint_labels`: the gateway's own
    endpoint list and labels, derived from the Klein app's routes.
    """

    def test_endpoints(self) -> None:
        """
        The pairs are the contract's own endpoints, each with its one
        method (and ``HEAD`` for ``/health`` only), paths without their
        leading slash.
        """
        self.assertEqual(
            sorted(own_endpoints(AuthApp.app)),
            [
                (b"GET", b".well-known/jwks.json"),
                (b"GET", b"core/session"),
                (b"GET", b"health"),
                (b"HEAD", b"health"),
                (b"POST", b"auth/guest"),
                (b"POST", b"auth/login"),
                (b"POST", b"core/auth/github"),
                (b"POST", b"core/auth/login"),
                (b"POST", b"core/logout"),
                (b"POST", b"core/session/refresh"),
            ],
        )

    def test_labels(self) -> None:
        """
        ``/health`` is labelled ``HEALTH``, the JWKS ``JWKS``; the password logins and the
        GitHub sign-in carry their login kind; every labelled view is one
        of the app's.
        """
        self.assertEqual(
            endpoint_labels(AuthApp.app),
            {
                b"health": ("HEALTH", None),
                b".well-known/jwks.json": ("JWKS", None),
                b"auth/login": ("AUTH", "password"),
                b"core/auth/login": ("AUTH", "password"),
                b"core/auth/github": ("AUTH", "github"),
            },
        )
        self.assertLessEqual(set(VIEW_LABELS), set(AuthApp.app.endpoints))

    def test_implicit_head_left_out(self) -> None:
        """
        The ``HEAD`` werkzeug adds to a ``GET`` rule is not an endpoint of
        the app's: only a rule naming ``HEAD`` alone adds it.
        """
        app = Klein()
        app.route("/a", methods=["GET"])(lambda request: b"")
        app.route("/b", methods=["HEAD"])(lambda request: b"")
        self.assertEqual(sorted(own_endpoints(app)), [(b"GET", b"a"), (b"HEAD", b"b")])

    def test_unusable_rules(self) -> None:
        """
        A route taking any method, or with a variable part, cannot be
        matched by exact method and path: ``ValueError``.
        """
        for path, methods in (("/any", None), ("/x/<name>", ["GET"])):
            app = Klein()
            app.route(path, methods=methods)(lambda request, **kw: b"")
            self.assertRaises(ValueError, list, own_endpoints(app))
            self.assertRaises(ValueError, endpoint_labels, app)

    def test_head_on_core_endpoint_proxied(self) -> None:
        """
        ``HEAD /core/session`` is proxied to the core service, as any
        other method the endpoint does not answer.
        """
        h = GatewayHarness()
        response, _ = h.request(self, "HEAD", "/core/session")
        self.assertEqual(response.code, 200)
        self.assertEqual([r[:2] for r in h.upstream.requests], [(b"HEAD", b"/session")])
