"""
Tests for a configuration file's routes in a running gateway
(:ref:`contract-config-file`):
upstream pools and passive health (:mod:`metagateway.proxy.balancer`),
route policies, CORS origins, and :meth:`Gateway.reload`.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Optional

import jwt
from zope.interface import implementer

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse

from metagateway.auth.tokens import AUDIENCE, ISSUER, InvalidToken, key_id
from metagateway.config import GatewayConfig
from metagateway.daemon.reload import Reloader
from metagateway.proxy.balancer import Balancer, nothing_sent
from metagateway.routes import Route
from metagateway.testing import SECRET, GatewayHarness, make_config

A, B, C = "http://a.test", "http://b.test", "http://c.test"


class BalancerTests(SynchronousTestCase):
    """
    Round-robin over the healthy upstreams, on a fake clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.balancer = Balancer([A, B, C], self.clock.seconds, "R")

    def order(self) -> list[str]:
        """
        The URLs of the next request's candidates.
        """
        return [u.url for u in self.balancer.candidates()]

    def test_round_robin(self) -> None:
        """
        Each request starts with the next upstream; the rest follow.
        """
        self.assertEqual(self.order(), [A, B, C])
        self.assertEqual(self.order(), [B, C, A])
        self.assertEqual(self.order(), [C, A, B])
        self.assertEqual(self.order(), [A, B, C])

    def test_ejection(self) -> None:
        """
        A failed upstream is left out for 10 s, then comes back.
        """
        a, b, c = self.balancer.upstreams
        self.balancer.failed(b, "refused")
        self.assertEqual(b.errors, 1)
        self.assertEqual(self.order(), [A, C])
        self.assertEqual(self.order(), [C, A])
        self.clock.advance(9.9)
        self.assertFalse(self.balancer.healthy(b))
        self.clock.advance(0.1)
        self.assertTrue(self.balancer.healthy(b))
        self.assertEqual(sorted(self.order()), [A, B, C])

    def test_all_down(self) -> None:
        """
        With every upstream left out, no candidate.
        """
        for upstream in self.balancer.upstreams:
            self.balancer.failed(upstream, "refused")
        self.assertEqual(self.order(), [])
        self.clock.advance(10)
        self.assertEqual(len(self.order()), 3)

    def test_single_never_left_out(self) -> None:
        """
        A pool of one keeps its upstream (as nginx does): each request
        finds out for itself.
        """
        single = Balancer([A], self.clock.seconds)
        single.failed(single.upstreams[0], "refused")
        self.assertEqual([u.url for u in single.candidates()], [A])
        self.assertEqual(single.upstreams[0].errors, 1)

    def test_nothing_sent(self) -> None:
        """
        A connection error means nothing was sent; anything else may have.
        """
        self.assertTrue(nothing_sent(Failure(ConnectionRefusedError())))
        self.assertFalse(nothing_sent(Failure(ValueError())))


@implementer(IAgent)
class RefusingAgent:
    """
    Refuses connections to the hosts in :attr:`refused`; passes the rest
    to another agent.

    :ivar attempts: the URL of every request, in order.
    """

    def __init__(self, agent: IAgent) -> None:
        self.agent = agent
        self.refused: set[bytes] = set()
        self.attempts: list[bytes] = []

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Optional[Headers] = None,
        bodyProducer: Optional[IBodyProducer] = None,
    ) -> Deferred[IResponse]:
        """
        Refuse, or pass on.
        """
        self.attempts.append(uri)
        if uri.split(b"/")[2] in self.refused:
            return fail(ConnectionRefusedError())
        return self.agent.request(method, uri, headers, bodyProducer)


def pool_route(**overrides: Any) -> Route:
    """
    A route ``/pool`` named ``POOL`` over three upstreams, token optional.
    """
    settings: dict[str, Any] = dict(
        prefix=b"pool", name="POOL", token="optional", upstreams=(A, B, C)
    )
    settings.update(overrides)
    return Route(**settings)


class PoolTests(SynchronousTestCase):
    """
    A route's requests through the proxy, with upstreams refusing.
    """

    def setUp(self) -> None:
        self.harness = GatewayHarness(make_config(routes=(pool_route(),)))
        self.refusing = RefusingAgent(self.harness.agent)
        # The proxies are built on the gateway's agent: build them again.
        self.harness.gateway.agent = self.refusing
        self.harness.gateway.reload(self.harness.gateway.config)

    def hosts(self) -> list[bytes]:
        """
        The ``Host`` of each request the upstream saw.
        """
        return [
            headers.getRawHeaders(b"host", [b""])[0]
            for _, _, headers, _ in self.harness.upstream.requests
        ]

    def test_spread(self) -> None:
        """
        Requests go round-robin over the upstreams.
        """
        for _ in range(3):
            response, _ = self.harness.request(self, "GET", "/pool/x")
            self.assertEqual(response.code, 200)
        self.assertEqual(self.hosts(), [b"a.test", b"b.test", b"c.test"])

    def test_refused_retried(self) -> None:
        """
        A refused connection is tried on the next upstream (no client
        error) and leaves the upstream out for 10 s.
        """
        self.refusing.refused.add(b"a.test")
        for _ in range(4):
            response, _ = self.harness.request(self, "POST", "/pool/x", data=b"body")
            self.assertEqual(response.code, 200)
        self.assertEqual(
            [a.split(b"/")[2] for a in self.refusing.attempts],
            [b"a.test", b"b.test", b"c.test", b"b.test", b"c.test"],
        )
        self.assertEqual(
            [body for _, _, _, body in self.harness.upstream.requests], [b"body"] * 4
        )
        self.assertEqual(self.hosts(), [b"b.test", b"c.test", b"b.test", b"c.test"])
        exposition = self.harness.gateway.metrics.exposition().decode()
        self.assertIn(
            'metagateway_upstream_healthy{route="POOL",upstream="http://a.test"} 0',
            exposition,
        )
        self.assertIn(
            'metagateway_upstream_failures_total{route="POOL",'
            'upstream="http://a.test"} 1',
            exposition,
        )
        self.assertIn(
            'metagateway_upstream_requests_total{route="POOL",'
            'upstream="http://b.test"} 2',
            exposition,
        )
        self.flushLoggedErrors()

    def test_all_refused(self) -> None:
        """
        Every upstream refusing: ``502 UPSTREAM_UNAVAILABLE``, then, with
        all left out, the same at once without trying.
        """
        self.refusing.refused.update({b"a.test", b"b.test", b"c.test"})
        response, body = self.harness.request(self, "GET", "/pool/x")
        self.assertEqual(response.code, 502)
        self.assertEqual(json.loads(body)["code"], "UPSTREAM_UNAVAILABLE")
        self.assertEqual(len(self.refusing.attempts), 3)
        response, body = self.harness.request(self, "GET", "/pool/x")
        self.assertEqual(json.loads(body)["code"], "UPSTREAM_UNAVAILABLE")
        self.assertEqual(len(self.refusing.attempts), 3)

    def test_timeout_leaves_out(self) -> None:
        """
        An upstream that does not answer in time gets ``504`` and is left
        out: the next requests go elsewhere.
        """
        self.harness.upstream.hang = True
        d = self.harness.client.get("http://gateway.test/pool/x")
        self.harness.flush()
        self.harness.clock.advance(self.harness.gateway.config.upstream_timeout)
        response, body = self.harness.finish(self, d)
        self.assertEqual(response.code, 504)
        self.harness.upstream.hang = False
        for _ in range(4):
            self.harness.request(self, "GET", "/pool/x")
        self.assertEqual(self.hosts()[0], b"a.test")
        self.assertEqual(sorted(self.hosts()[1:]), [b"b.test"] * 2 + [b"c.test"] * 2)
        self.harness.clock.advance(10)
        self.harness.request(self, "GET", "/pool/x")
        self.harness.request(self, "GET", "/pool/x")
        self.assertIn(b"a.test", self.hosts()[5:])
        self.flushLoggedErrors()


class PolicyTests(SynchronousTestCase):
    """
    A route's token policy, accept list, prefix, timeout and body limit.
    """

    def harness(self, **overrides: Any) -> GatewayHarness:
        """
        A gateway whose only route is :func:`pool_route` with ``overrides``
        and one upstream.
        """
        overrides.setdefault("upstreams", (A,))
        return GatewayHarness(make_config(routes=(pool_route(**overrides),)))

    def test_none(self) -> None:
        """
        ``token = "none"``: a bad token is never checked, and the header
        is still removed.
        """
        harness = self.harness(token="none")
        response, _ = harness.request(
            self, "GET", "/pool/x", headers={"Authorization": "Bearer nonsense"}
        )
        self.assertEqual(response.code, 200)
        headers = harness.upstream.requests[0][2]
        self.assertFalse(headers.hasHeader(b"authorization"))
        self.assertFalse(headers.hasHeader(b"x-gateway-user"))

    def test_required_and_accept(self) -> None:
        """
        ``token = "required"``; ``accept`` decides which token routes pass.
        """
        harness = self.harness(token="required", accept=("POOL",))
        response, body = harness.request(self, "GET", "/pool/x")
        self.assertEqual(
            (response.code, json.loads(body)["code"]), (401, "MISSING_TOKEN")
        )
        core = harness.login(self)  # route AUTH
        response, body = harness.request(
            self, "GET", "/pool/x", headers={"Authorization": "Bearer " + core}
        )
        self.assertEqual(
            (response.code, json.loads(body)["code"]), (403, "INVALID_TOKEN")
        )
        guest = json.loads(
            harness.request(self, "POST", "/auth/guest", data=b'{"route": "pool"}')[1]
        )
        self.assertEqual(guest["route"], "POOL")
        response, _ = harness.request(
            self,
            "GET",
            "/pool/x",
            headers={"Authorization": "Bearer " + guest["token"]},
        )
        self.assertEqual(response.code, 200)

    def test_prefix(self) -> None:
        """
        A two-segment prefix, kept when ``strip_prefix`` is false; the
        longest prefix wins.
        """
        harness = GatewayHarness(
            make_config(
                routes=(
                    pool_route(prefix=b"api", name="API", upstreams=(A,)),
                    pool_route(
                        prefix=b"api/v2", name="V2", upstreams=(B,), strip_prefix=False
                    ),
                )
            )
        )
        harness.request(self, "GET", "/api/v2/x?q=1")
        harness.request(self, "GET", "/api/v1/x")
        harness.request(self, "GET", "/api/v2")
        self.assertEqual(
            [
                (h.getRawHeaders(b"host")[0], uri)
                for _, uri, h, _ in harness.upstream.requests
            ],
            [
                (b"b.test", b"/api/v2/x?q=1"),
                (b"a.test", b"/v1/x"),
                (b"b.test", b"/api/v2"),
            ],
        )
        response, _ = harness.request(self, "GET", "/build/x")
        self.assertEqual(response.code, 404)

    def test_timeout_and_max_body(self) -> None:
        """
        A route's own timeout and body limit.
        """
        harness = self.harness(timeout=2.0, max_body=3)
        response, body = harness.request(self, "POST", "/pool/x", data=b"four")
        self.assertEqual(response.code, 413)
        harness.upstream.hang = True
        d = harness.client.get("http://gateway.test/pool/x")
        harness.flush()
        harness.clock.advance(1.9)
        harness.flush()
        self.assertNoResult(d)
        harness.clock.advance(0.1)
        response, _ = harness.finish(self, d)
        self.assertEqual(response.code, 504)


class CorsTests(SynchronousTestCase):
    """
    ``allow_origins`` a list.
    """

    def setUp(self) -> None:
        self.harness = GatewayHarness(
            make_config(allow_origins=("https://app.test", "http://localhost:3000"))
        )

    def check(self, response: Any, origin: Optional[str]) -> None:
        """
        ``response`` allows ``origin`` (or none) and varies on ``Origin``.
        """
        headers = response.headers
        self.assertEqual(
            headers.getRawHeaders("access-control-allow-origin"),
            None if origin is None else [origin],
        )
        self.assertIn("Origin", ",".join(headers.getRawHeaders("vary", [])))

    def test_every_kind_of_answer(self) -> None:
        """
        The preflight, a gateway-made answer, an error and a proxied
        answer echo a listed origin; another origin gets none.
        """
        for origin, expected in [
            ("https://app.test", "https://app.test"),
            ("https://evil.test", None),
        ]:
            headers = {"Origin": origin}
            for method, path in [
                ("OPTIONS", "/kv/x"),
                ("GET", "/health"),
                ("GET", "/nowhere"),
                ("GET", "/build/x"),
                ("GET", "/kv/x"),
            ]:
                response, _ = self.harness.request(self, method, path, headers=headers)
                self.check(response, expected)
        response, _ = self.harness.request(self, "GET", "/kv/x")
        self.check(response, None)

    def test_upstream_keeps_its_own(self) -> None:
        """
        A proxied answer with its own ``Access-Control-Allow-Origin`` keeps
        it; ``Origin`` is added to its ``Vary``.
        """
        self.harness.upstream.headers[b"Access-Control-Allow-Origin"] = [b"https://x"]
        self.harness.upstream.headers[b"Vary"] = [b"Accept"]
        response, _ = self.harness.request(
            self, "GET", "/kv/x", headers={"Origin": "https://app.test"}
        )
        self.assertEqual(
            response.headers.getRawHeaders("access-control-allow-origin"), ["https://x"]
        )
        self.assertEqual(response.headers.getRawHeaders("vary"), ["Accept", "Origin"])

    def test_star(self) -> None:
        """
        ``["*"]``: §4's ``*``, and no ``Vary``.
        """
        harness = GatewayHarness()
        for method, path in [("OPTIONS", "/kv"), ("GET", "/nowhere"), ("GET", "/kv")]:
            response, _ = harness.request(
                self, method, path, headers={"Origin": "https://app.test"}
            )
            self.assertEqual(
                response.headers.getRawHeaders("access-control-allow-origin"), ["*"]
            )
            self.assertIsNone(response.headers.getRawHeaders("vary"))


class ReloadTests(SynchronousTestCase):
    """
    :meth:`Gateway.reload` and the daemon's :class:`Reloader`.
    """

    def test_routes_swapped_in_flight_kept(self) -> None:
        """
        New routes apply to requests arriving after the reload; a request
        in flight finishes with the upstream it started with.
        """
        harness = GatewayHarness()
        harness.upstream.hang = True
        d = harness.client.get("http://gateway.test/kv/x")
        harness.flush()
        new = replace(
            harness.gateway.config, routes=(pool_route(prefix=b"kv2", upstreams=(B,)),)
        )
        seen: list[GatewayConfig] = []
        harness.gateway.on_reload(seen.append)
        harness.gateway.reload(new)
        self.assertEqual(seen, [new])
        request = harness.upstream.pending.pop()
        request.write(b"old")
        request.finish()
        response, body = harness.finish(self, d)
        self.assertEqual((response.code, body), (200, b"old"))
        harness.upstream.hang = False
        response, _ = harness.request(self, "GET", "/kv/x")
        self.assertEqual(response.code, 404)
        response, _ = harness.request(self, "GET", "/kv2/x")
        self.assertEqual(response.code, 200)
        self.assertEqual(
            harness.upstream.requests[-1][2].getRawHeaders(b"host"), [b"b.test"]
        )
        self.assertIn(
            'metagateway_config_reloads_total{result="success"} 1',
            harness.gateway.metrics.exposition().decode(),
        )

    def test_secret_rotation(self) -> None:
        """
        A new secret signs at once; the one it replaces verifies its tokens
        until they expire, then no more.
        """
        harness = GatewayHarness()
        old = harness.login(self)
        harness.gateway.reload(
            replace(harness.gateway.config, jwt_secret="new-" + SECRET)
        )
        new = harness.login(self)
        tokens = harness.gateway.tokens
        self.assertEqual(tokens.verify(old).project_id, "alice")
        self.assertEqual(tokens.verify(new).project_id, "alice")
        # A second reload keeps the old secret's tokens too.
        harness.gateway.reload(harness.gateway.config)
        self.assertEqual(tokens.verify(old).project_id, "alice")
        # A token of the old secret that would outlive its lifetime (crafted)
        # verifies during the window, and no more after it.
        now = int(harness.clock.seconds())
        long_lived = jwt.encode(
            {
                "projectId": "alice",
                "route": "AUTH",
                "iss": ISSUER,
                "aud": AUDIENCE,
                "iat": now,
                "exp": now + 7200,
            },
            SECRET,
            algorithm="HS256",
            headers={"kid": key_id(SECRET)},
        )
        self.assertEqual(tokens.verify(long_lived).project_id, "alice")
        harness.clock.advance(3600)
        self.assertRaises(InvalidToken, tokens.verify, old)
        self.assertRaises(InvalidToken, tokens.verify, long_lived)
        fresh = harness.login(self)
        self.assertEqual(tokens.verify(fresh).project_id, "alice")
        other = GatewayHarness(make_config(jwt_secret="new-" + SECRET))
        other.clock.advance(harness.clock.seconds() - other.clock.seconds())
        self.assertEqual(other.gateway.tokens.verify(fresh).project_id, "alice")

    def test_hook_failure_logged(self) -> None:
        """
        A reload callback that raises is logged; the reload stands.
        """
        harness = GatewayHarness()

        def broken(config: GatewayConfig) -> None:
            raise RuntimeError("boom")

        harness.gateway.on_reload(broken)
        new = replace(harness.gateway.config, allow_origins=("https://a.test",))
        harness.gateway.reload(new)
        self.assertIs(harness.gateway.config, new)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_reloader(self) -> None:
        """
        The daemon's reload reads the file again: a valid one is put in
        force; an invalid one is refused, counted, and the old stays.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                '[[route]]\nprefix = "/one"\nname = "ONE"\nupstreams = ["http://a.test"]\n'
            )
        environ = {"GATEWAY_JWT_SECRET": SECRET, "METAGATEWAY_ACCOUNTS_DIR": "/a"}
        settings = {"config": path}
        harness = GatewayHarness(GatewayConfig.from_options(settings, environ))
        reloader = Reloader(harness.gateway, settings, environ)
        with open(path, "w") as f:
            f.write(
                '[[route]]\nprefix = "/two"\nname = "TWO"\nupstreams = ["http://b.test"]\n'
                'token = "none"\n'
            )
        self.assertTrue(reloader.reload())
        self.assertEqual(harness.request(self, "GET", "/two/x")[0].code, 200)
        self.assertEqual(harness.request(self, "GET", "/one/x")[0].code, 404)
        with open(path, "w") as f:
            f.write('[[route]]\nprefix = "/three"\nname = "THREE"\ntokn = "none"\n')
        self.assertFalse(reloader.reload())
        self.assertEqual(harness.request(self, "GET", "/two/x")[0].code, 200)
        exposition = harness.gateway.metrics.exposition().decode()
        self.assertIn('metagateway_config_reloads_total{result="error"} 1', exposition)
        self.assertIn(
            'metagateway_config_reloads_total{result="success"} 1', exposition
        )
        self.assertIn(harness.gateway.config.config_digest, exposition)
