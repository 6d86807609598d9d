"""
Tests for routing and proxying as :ref:`contract-proxy` states it: prefixes, dot
segments, token policy, the upstream URL, headers, and the JSON 404.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from metagateway.auth.tokens import TokenAuthority
from metagateway.routes import normalise_path, route_for
from metagateway.testing import SECRET, GatewayHarness, RecordingUpstream, make_config
from tests.helpers import assert_json_error


class NormalisePathTests(SynchronousTestCase):
    """
    :func:`normalise_path` resolves dot segments as a browser does.
    """

    def test_cases(self) -> None:
        """
        Plain, encoded and excess dot segments resolve, clamped at the root;
        other segments stay byte for byte.
        """
        cases = {
            b"/kv/../build/x": [b"build", b"x"],
            b"/build": [b"build"],
            b"/build/": [b"build", b""],
            b"/": [b""],
            b"/../../build": [b"build"],
            b"/kv/%2e%2E/build/a": [b"build", b"a"],
            b"/build/./a/.": [b"build", b"a", b""],
            b"/build/a/..": [b"build", b""],
            b"/build/a%2Fb/%20": [b"build", b"a%2Fb", b"%20"],
            b"/build/...": [b"build", b"..."],
        }
        for raw, expected in cases.items():
            self.assertEqual(normalise_path(raw), expected, raw)

    def test_route_for(self) -> None:
        """
        A prefix owns its own segment only: ``/buildings`` is not ``/build``.
        """
        self.assertEqual(route_for([b"build", b"x"]).name, "BUILD")  # type: ignore[union-attr]
        self.assertEqual(route_for([b"hq"]).name, "BASE")  # type: ignore[union-attr]
        self.assertIsNone(route_for([b"buildings"]))
        self.assertIsNone(route_for([]))


class ProxyTests(SynchronousTestCase):
    """
    Requests through the gateway to a fake upstream.
    """

    def setUp(self) -> None:
        self.h = GatewayHarness()
        self.token = self.h.login(self)

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": "Bearer " + (token or self.token)}

    def last(self) -> tuple[bytes, bytes, Any, bytes]:
        return self.h.upstream.requests[-1]  # type: ignore[attr-defined, no-any-return]

    def test_prefix_stripped_query_kept(self) -> None:
        """
        The upstream URL is the service path without its trailing slash,
        the rest of the path, and the query string byte for byte.
        """
        cases = [
            ("/build", b"/base/"),
            ("/build/", b"/base/"),
            ("/build/a/b/", b"/base/a/b/"),
            ("/build/x?b=%20&a=1&&c", b"/base/x?b=%20&a=1&&c"),
            ("/build?q", b"/base/?q"),
            ("/kv/../build/y", b"/base/y"),
            ("/build/a%2Fb", b"/base/a%2Fb"),
        ]
        for path, expected in cases:
            response, _ = self.h.request(self, "GET", path, headers=self.auth())
            self.assertEqual(response.code, 200, path)
            self.assertEqual(self.last()[1], expected, path)

    def test_routes_and_upstreams(self) -> None:
        """
        ``/kv``, ``/core``, ``/hq`` go to their own services without a
        token, with ``X-Gateway-Route`` naming the route.
        """
        for path, route, expected in (
            ("/kv/k", b"KV", b"/k"),
            ("/core/c", b"CORE", b"/c"),
            ("/hq/h", b"BASE", b"/hq-root/h"),
        ):
            response, _ = self.h.request(self, "GET", path)
            self.assertEqual(response.code, 200)
            _, uri, headers, _ = self.last()
            self.assertEqual(uri, expected)
            self.assertEqual(headers.getRawHeaders(b"x-gateway-route"), [route])
            self.assertIsNone(headers.getRawHeaders(b"x-gateway-user"))

    def test_build_requires_token(self) -> None:
        """
        ``/build`` without a Bearer token is ``401 MISSING_TOKEN``; a bad
        token is ``403 INVALID_TOKEN``; nothing reaches the upstream.
        """
        for headers, status, code in (
            ({}, 401, "MISSING_TOKEN"),
            ({"Authorization": "Basic dXNlcjpwdw=="}, 401, "MISSING_TOKEN"),
            ({"Authorization": "Bearer"}, 401, "MISSING_TOKEN"),
            ({"Authorization": "Bearer garbage"}, 403, "INVALID_TOKEN"),
            ({"Authorization": "Bearer " + self.token + "x"}, 403, "INVALID_TOKEN"),
        ):
            response, body = self.h.request(self, "GET", "/build/x", headers=headers)
            assert_json_error(
                self, response, body, status, code, "BUILD", "Unauthorized request"
            )
        self.assertEqual(len(self.h.upstream.requests), 0)  # type: ignore[attr-defined]

    def test_two_authorization_headers(self) -> None:
        """
        Two ``Authorization`` headers are ambiguous credentials: ``401
        MISSING_TOKEN`` whichever of them is a good token, on a route that
        requires one and on one that checks one when present.
        """
        good = "Bearer " + self.token
        for path, route in (("/build/x", "BUILD"), ("/kv/x", "KV")):
            for values in ([good, "Basic eA=="], ["Basic eA==", good], [good, good]):
                response, body = self.h.request(
                    self, "GET", path, headers={"Authorization": values}
                )
                assert_json_error(self, response, body, 401, "MISSING_TOKEN", route)
        self.assertEqual(len(self.h.upstream.requests), 0)  # type: ignore[attr-defined]

    def test_optional_routes_check_present_token(self) -> None:
        """
        On ``/kv``, ``/core`` and ``/hq`` an ``Authorization`` header is
        checked when present.
        """
        for path, route in (("/kv/x", "KV"), ("/core/x", "CORE"), ("/hq/x", "BASE")):
            response, body = self.h.request(
                self, "GET", path, headers={"Authorization": "Bearer nope"}
            )
            assert_json_error(self, response, body, 403, "INVALID_TOKEN", route)
            response, body = self.h.request(
                self, "GET", path, headers={"Authorization": "Token abc"}
            )
            assert_json_error(self, response, body, 401, "MISSING_TOKEN", route)

    def test_route_claims(self) -> None:
        """
        A token reaches its own route, and ``CORE``/``AUTH`` tokens reach
        every route; a ``KV`` token is refused on ``/build``.
        """
        tokens = TokenAuthority(SECRET, self.h.clock.seconds)
        kv = tokens.issue("someone", "KV", ["guest"], "staging")
        core = tokens.issue("someone", "CORE", ["admin"])
        response, body = self.h.request(self, "GET", "/build/x", headers=self.auth(kv))
        assert_json_error(self, response, body, 403, "INVALID_TOKEN", "BUILD")
        response, _ = self.h.request(self, "GET", "/kv/x", headers=self.auth(kv))
        self.assertEqual(response.code, 200)
        response, _ = self.h.request(self, "GET", "/build/x", headers=self.auth(core))
        self.assertEqual(response.code, 200)

    def test_expired_token(self) -> None:
        """
        A token past its ``exp`` is ``403 INVALID_TOKEN``.
        """
        self.h.clock.advance(3601)
        response, body = self.h.request(self, "GET", "/build/x", headers=self.auth())
        assert_json_error(self, response, body, 403, "INVALID_TOKEN", "BUILD")

    def test_request_headers(self) -> None:
        """
        ``Authorization`` and incoming ``X-Gateway-*`` are dropped, the
        gateway's own are set, ``Host`` is the upstream's, the forwarding
        headers are set and an incoming ``X-Request-Id`` is kept.
        """
        self.h.request(
            self,
            "POST",
            "/build/x",
            data=b"payload",
            headers={
                **self.auth(),
                "X-Gateway-User": "mallory",
                "X-Gateway-Anything": "1",
                "X-Request-Id": "req-123",
                "X-Custom": "kept",
                "Connection": "close, X-Hop",
                "X-Hop": "dropped",
            },
        )
        method, _, headers, body = self.last()
        self.assertEqual(method, b"POST")
        self.assertEqual(body, b"payload")
        self.assertIsNone(headers.getRawHeaders(b"authorization"))
        self.assertIsNone(headers.getRawHeaders(b"x-gateway-anything"))
        self.assertIsNone(headers.getRawHeaders(b"x-hop"))
        self.assertEqual(headers.getRawHeaders(b"x-gateway-user"), [b"alice"])
        self.assertEqual(headers.getRawHeaders(b"x-gateway-scopes"), [b"admin"])
        self.assertEqual(headers.getRawHeaders(b"x-gateway-route"), [b"BUILD"])
        self.assertEqual(headers.getRawHeaders(b"host"), [b"build.test"])
        self.assertEqual(headers.getRawHeaders(b"x-custom"), [b"kept"])
        self.assertEqual(headers.getRawHeaders(b"x-request-id"), [b"req-123"])
        self.assertEqual(headers.getRawHeaders(b"x-forwarded-host"), [b"gateway.test"])
        self.assertEqual(headers.getRawHeaders(b"x-forwarded-proto"), [b"http"])
        self.assertTrue(headers.getRawHeaders(b"x-forwarded-for"))

    def test_gateway_headers_one_line(self) -> None:
        """
        A user name or scope holding a line break (a record's, signed into
        a token) reaches the upstream as one header line: the break is a
        space, and no header of the user's making appears.
        """
        tokens = TokenAuthority(SECRET, self.h.clock.seconds)
        token = tokens.issue("eve\r\nX-Injected: 1", "BUILD", ["a\nb"])
        response, _ = self.h.request(self, "GET", "/build/x", headers=self.auth(token))
        self.assertEqual(response.code, 200)
        _, _, headers, _ = self.last()
        self.assertEqual(
            headers.getRawHeaders(b"x-gateway-user"), [b"eve X-Injected: 1"]
        )
        self.assertEqual(headers.getRawHeaders(b"x-gateway-scopes"), [b"a b"])
        self.assertIsNone(headers.getRawHeaders(b"x-injected"))

    def test_missing_target(self) -> None:
        """
        A route whose service URL is unset is ``502 MISSING_TARGET``, after
        the token check.
        """
        h = GatewayHarness(config=make_config(services={}))
        response, body = h.request(self, "GET", "/kv/x")
        assert_json_error(
            self, response, body, 502, "MISSING_TARGET", "KV", "Missing target for /kv"
        )
        response, body = h.request(self, "GET", "/hq")
        assert_json_error(
            self,
            response,
            body,
            502,
            "MISSING_TARGET",
            "BASE",
            "Missing target for /hq",
        )
        response, body = h.request(self, "GET", "/build/x")
        assert_json_error(self, response, body, 401, "MISSING_TOKEN", "BUILD")


class ErrorRequestIdTests(SynchronousTestCase):
    """
    The ``requestId`` of an error body is a uuid4 whatever the client sent.
    """

    def test_client_ids(self) -> None:
        """
        A client's UUID ``X-Request-Id`` is the body's ``requestId``; an id
        of another form gives the body a fresh uuid4 (``assert_json_error``
        checks the UUID shape).
        """
        h = GatewayHarness()
        given = "0b8f2a9e-3c4d-4e5f-8a6b-7c8d9e0f1a2b"
        response, body = h.request(
            self, "GET", "/build/x", headers={"X-Request-Id": given}
        )
        document = assert_json_error(self, response, body, 401, "MISSING_TOKEN")
        self.assertEqual(document["requestId"], given)
        self.assertEqual(
            response.headers.getRawHeaders(b"x-request-id"), [given.encode()]
        )
        response, body = h.request(
            self, "GET", "/build/x", headers={"X-Request-Id": "req-123"}
        )
        document = assert_json_error(self, response, body, 401, "MISSING_TOKEN")
        self.assertNotEqual(document["requestId"], "req-123")
        self.assertEqual(response.headers.getRawHeaders(b"x-request-id"), [b"req-123"])

    def test_header_on_every_error(self) -> None:
        """
        Every error the gateway answers itself carries the request's
        ``X-Request-Id`` header, the body's ``requestId`` when it is a
        UUID: 401, 403, 404, 400 and 413 here.
        """
        h = GatewayHarness(make_config(auth_max_body=10))
        for method, path, headers, data, status in (
            ("GET", "/build/x", {}, None, 401),
            ("GET", "/kv/x", {"Authorization": "Bearer nope"}, None, 403),
            ("GET", "/nowhere", {}, None, 404),
            ("POST", "/auth/login", {}, b"{}", 400),
            ("POST", "/auth/login", {}, b"x" * 11, 413),
        ):
            response, body = h.request(self, method, path, headers=headers, data=data)
            self.assertEqual(response.code, status, body)
            [value] = response.headers.getRawHeaders(b"x-request-id")
            self.assertEqual(value.decode(), json.loads(body)["requestId"])


class UpstreamAnswerTests(SynchronousTestCase):
    """
    The upstream's answer comes back unchanged.
    """

    def test_status_headers_body_and_cors(self) -> None:
        """
        Status, headers and body pass through; ``Access-Control-Allow-Origin:
        *`` is added when the upstream set none, and an upstream's own value
        is kept alone.
        """
        upstream = RecordingUpstream(
            b"created!",
            201,
            {b"X-Thing": [b"a", b"b"], b"Content-Type": [b"text/x-custom"]},
        )
        h = GatewayHarness(upstream=upstream)
        response, body = h.request(self, "PUT", "/kv/x", data=b"v")
        self.assertEqual(response.code, 201)
        self.assertEqual(body, b"created!")
        self.assertEqual(response.headers.getRawHeaders(b"x-thing"), [b"a", b"b"])
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [b"text/x-custom"]
        )
        self.assertEqual(
            response.headers.getRawHeaders(b"access-control-allow-origin"), [b"*"]
        )

        upstream.headers = {b"Access-Control-Allow-Origin": [b"https://app.test"]}
        response, body = h.request(self, "GET", "/kv/x")
        self.assertEqual(
            response.headers.getRawHeaders(b"access-control-allow-origin"),
            [b"https://app.test"],
        )

    def test_redirect_not_followed(self) -> None:
        """
        A redirect comes back to the client as it is.
        """
        upstream = RecordingUpstream(b"", 302, {b"Location": [b"http://elsewhere/"]})
        h = GatewayHarness(upstream=upstream)
        d = h.client.request("GET", "http://gateway.test/kv/x", allow_redirects=False)
        h.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 302)
        self.assertEqual(
            response.headers.getRawHeaders(b"location"), [b"http://elsewhere/"]
        )
        self.assertEqual(len(upstream.requests), 1)


class DispatchTests(SynchronousTestCase):
    """
    The root resource: preflight and the JSON 404.
    """

    def test_options_anywhere(self) -> None:
        """
        ``OPTIONS`` on any path is ``204`` with the CORS headers, before any
        token check, and never reaches an upstream.
        """
        h = GatewayHarness()
        for path in ("/build/x", "/nowhere", "/auth/login", "/"):
            response, body = h.request(self, "OPTIONS", path)
            self.assertEqual(response.code, 204)
            self.assertEqual(body, b"")
            headers = response.headers
            self.assertEqual(
                headers.getRawHeaders(b"access-control-allow-origin"), [b"*"]
            )
            self.assertEqual(
                headers.getRawHeaders(b"access-control-allow-headers"),
                [b"Authorization, Content-Type"],
            )
            self.assertEqual(
                headers.getRawHeaders(b"access-control-allow-methods"),
                [b"GET,POST,PUT,DELETE,OPTIONS"],
            )
            self.assertEqual(
                headers.getRawHeaders(b"access-control-max-age"), [b"86400"]
            )
            # A 204 carries no Content-Length.
            self.assertIsNone(headers.getRawHeaders(b"content-length"))
        self.assertEqual(h.upstream.requests, [])  # type: ignore[attr-defined]

    def test_not_found(self) -> None:
        """
        Unhandled paths are ``404 NOT_FOUND`` "Route not handled", route
        ``CORE``, including near-misses of a prefix.
        """
        h = GatewayHarness()
        for path in ("/", "/buildings", "/kvx/a", "/health/x", "/favicon.ico"):
            response, body = h.request(self, "GET", path)
            assert_json_error(
                self, response, body, 404, "NOT_FOUND", "CORE", "Route not handled"
            )
        self.assertEqual(h.upstream.requests, [])  # type: ignore[attr-defined]

    def test_dot_segments_reach_health(self) -> None:
        """
        Dot segments are resolved before routing.
        """
        h = GatewayHarness()
        response, body = h.request(self, "GET", "/kv/%2e%2e/health")
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body)["status"], "ok")
