"""
Tests for embedding the gateway in a host program (issue 8): the resource
mounted under a path of a host's ``Site``, two gateways side by side in one
process, and the service started and stopped by a host ``MultiService``.
"""

from __future__ import annotations

import ast
import gc
import json
from pathlib import Path
from typing import Any, Optional, Union

from treq.testing import RequestTraversalAgent
from zope.interface.verify import verifyObject

from twisted.application.service import IService, MultiService
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.static import Data

import metagateway
from metagateway.auth.app import AuthApp
from metagateway.auth.passwords import make_record
from metagateway.auth.throttle import LoginThrottle
from metagateway.auth.tokens import InvalidToken, TokenAuthority
from metagateway.config import ConfigurationError, GatewayConfig
from metagateway.credentials.directory import DirectoryCredentialStore
from metagateway.credentials.memory import MemoryCredentialStore
from metagateway.gateway import Gateway, GatewayService
from metagateway.http.site import GatewaySite
from metagateway.testing import (
    PASSWORD,
    SECRET,
    USERNAME,
    RecordingUpstream,
    StubTreq,
    make_config,
)
from tests.helpers import assert_json, assert_json_error

#: The host's own pages.
HOST_PAGE = b"<h1>the host's own page</h1>"
OTHER_PAGE = b"the host's other resource"


class UntypedUpstream(RecordingUpstream):
    """
    A fake upstream whose answers carry no ``Content-Type`` at all.
    """

    def render(self, request: Request) -> Union[bytes, int]:
        """
        Answer without the ``text/html`` default of Twisted's request.
        """
        request.defaultContentType = None
        return super().render(request)


def credentials(username: str = USERNAME, password: str = PASSWORD) -> bytes:
    """
    A login request body.
    """
    return json.dumps({"username": username, "password": password}).encode()


class Host:
    """
    A host program in memory: one ``MemoryReactorClock``, a root resource
    of its own with a static page at ``/`` and ``/other``, and gateways
    mounted under paths of it, all reached through one ``StubTreq``.

    :ivar clock: the reactor every gateway is given.
    :ivar root: the host's root resource.
    :ivar client: a ``StubTreq`` over ``root`` (a real ``Site`` and
        ``Request``, not the gateway's own ``Site``).
    """

    def __init__(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(1_800_000_000)
        self.root = Resource()
        self.root.putChild(b"", Data(HOST_PAGE, "text/html"))
        self.root.putChild(b"other", Data(OTHER_PAGE, "text/plain"))
        self.agents: list[RequestTraversalAgent] = []
        self.client: Optional[StubTreq] = None

    def mount(
        self,
        path: list[bytes],
        config: Optional[GatewayConfig] = None,
        records: tuple[tuple[str, str], ...] = ((USERNAME, PASSWORD),),
        upstream: Optional[RecordingUpstream] = None,
    ) -> tuple[Gateway, RecordingUpstream]:
        """
        Build a gateway on this host's reactor, with its own memory store
        and fake upstream, and mount its resource at ``path``.

        :param path: the mount point's segments, such as ``[b"api"]``.
        :param records: ``(username, password)`` of each admin in its store.
        :return: the gateway and its upstream.
        """
        upstream = upstream if upstream is not None else RecordingUpstream()
        agent = RequestTraversalAgent(upstream)
        self.agents.append(agent)
        store = MemoryCredentialStore(
            [make_record(name, password, "admin") for name, password in records]
        )
        gateway = Gateway(config or make_config(), self.clock, store=store, agent=agent)
        parent = self.root
        for segment in path[:-1]:
            child = parent.children.get(segment)
            if child is None:
                child = Resource()
                parent.putChild(segment, child)
            parent = child
        parent.putChild(path[-1], gateway.resource)
        self.client = StubTreq(self.root)
        return gateway, upstream

    def flush(self) -> None:
        """
        Deliver everything pending between client, gateways and upstreams.
        """
        assert self.client is not None
        for _ in range(5):
            self.clock.advance(0)
            self.client.flush()
            for agent in self.agents:
                agent.flush()

    def request(
        self, case: SynchronousTestCase, method: str, path: str, **kw: Any
    ) -> tuple[Any, bytes]:
        """
        Make a request to the host and return ``(response, body)``.

        :param path: the path on the host, such as ``/api/build/x``.
        """
        if self.client is None:
            self.client = StubTreq(self.root)
        d = self.client.request(method, "http://host.test" + path, **kw)
        self.flush()
        response = case.successResultOf(d)
        body_d = response.content()
        self.flush()
        return response, case.successResultOf(body_d)

    def login(
        self,
        case: SynchronousTestCase,
        mount: str,
        username: str = USERNAME,
        password: str = PASSWORD,
    ) -> str:
        """
        Log in through the gateway at ``mount`` and return the token.
        """
        response, body = self.request(
            case, "POST", mount + "/auth/login", data=credentials(username, password)
        )
        case.assertEqual(response.code, 200, body)
        return str(json.loads(body)["token"])


def bearer(token: str) -> dict[str, str]:
    """
    The ``Authorization`` header carrying ``token``.
    """
    return {"Authorization": "Bearer " + token}


class MountedTests(SynchronousTestCase):
    """
    The gateway's resource mounted at ``/api`` of a host's resource tree,
    beside the host's own resources.
    """

    def setUp(self) -> None:
        self.host = Host()
        self.gateway, self.upstream = self.host.mount([b"api"])

    def test_login_under_mount(self) -> None:
        """
        ``POST /api/auth/login`` is the gateway's login; its token verifies.
        """
        response, body = self.host.request(
            self, "POST", "/api/auth/login", data=credentials()
        )
        self.assertEqual(response.code, 200, body)
        assert_json(self, response)
        document = json.loads(body)
        self.assertEqual(document["user"], {"username": USERNAME, "role": "admin"})
        claims = self.gateway.tokens.verify(document["token"])
        self.assertEqual((claims.project_id, claims.route), (USERNAME, "AUTH"))

    def test_own_endpoints_under_mount(self) -> None:
        """
        ``/health``, ``/auth/guest``, ``/core/session`` and ``/core/logout``
        answer under the mount point too.
        """
        response, body = self.host.request(self, "GET", "/api/health")
        self.assertEqual(response.code, 200, body)
        self.assertEqual(json.loads(body)["status"], "ok")
        response, body = self.host.request(
            self, "POST", "/api/auth/guest", data=b'{"route": "kv"}'
        )
        self.assertEqual(json.loads(body)["route"], "KV")
        token = self.host.login(self, "/api")
        response, body = self.host.request(
            self, "GET", "/api/core/session", headers=bearer(token)
        )
        self.assertEqual(response.code, 200, body)
        response, body = self.host.request(
            self, "POST", "/api/core/logout", headers=bearer(token)
        )
        self.assertEqual(response.code, 200, body)
        response, body = self.host.request(
            self, "GET", "/api/core/session", headers=bearer(token)
        )
        assert_json_error(self, response, body, 403, "INVALID_SESSION", "CORE")

    def test_prefix_stripped_relative_to_mount(self) -> None:
        """
        ``/api/build/x`` goes upstream as the service path plus ``/x``: the
        mount point and the route prefix are both stripped, the query kept
        byte for byte.
        """
        token = self.host.login(self, "/api")
        response, body = self.host.request(
            self, "GET", "/api/build/a/b?x=1&y=%20", headers=bearer(token)
        )
        self.assertEqual((response.code, body), (200, b"upstream body"))
        method, uri, headers, _ = self.upstream.requests[-1]
        self.assertEqual((method, uri), (b"GET", b"/base/a/b?x=1&y=%20"))
        self.assertEqual(headers.getRawHeaders(b"x-gateway-route"), [b"BUILD"])
        self.assertEqual(headers.getRawHeaders(b"x-gateway-user"), [USERNAME.encode()])
        self.assertIsNone(headers.getRawHeaders(b"authorization"))

    def test_every_route_under_mount(self) -> None:
        """
        Each prefix, and the bare prefix, is routed below the mount point.
        """
        token = self.host.login(self, "/api")
        cases = [
            ("/api/build", b"/base/"),
            ("/api/kv/k", b"/k"),
            ("/api/core/thing", b"/thing"),
            ("/api/hq/page?q", b"/hq-root/page?q"),
        ]
        for path, uri in cases:
            response, body = self.host.request(self, "GET", path, headers=bearer(token))
            self.assertEqual(response.code, 200, (path, body))
            self.assertEqual(self.upstream.requests[-1][1], uri, path)

    def test_body_proxied_under_mount(self) -> None:
        """
        A request body goes upstream unchanged; the gateway's cooperator
        runs on the reactor it was given, not on the global one.
        """
        token = self.host.login(self, "/api")
        response, body = self.host.request(
            self, "PUT", "/api/kv/key", data=b"value bytes", headers=bearer(token)
        )
        self.assertEqual(response.code, 200, body)
        method, uri, _, sent = self.upstream.requests[-1]
        self.assertEqual((method, uri, sent), (b"PUT", b"/key", b"value bytes"))

    def test_webhooks_under_mount(self) -> None:
        """
        ``/api/webhooks/...`` is the gateway's webhooks resource.
        """
        response, body = self.host.request(self, "POST", "/api/webhooks/")
        assert_json_error(self, response, body, 400, "INVALID_SOURCE", "WEBHOOK")
        response, body = self.host.request(self, "POST", "/api/webhooks/slack")
        assert_json_error(self, response, body, 404, "UNKNOWN_SOURCE", "WEBHOOK")
        response, body = self.host.request(self, "POST", "/api/webhooks/Notion")
        assert_json_error(self, response, body, 500, "NOTION_SECRET_MISSING")

    def test_no_html_default_on_proxied_answer(self) -> None:
        """
        A proxied answer without ``Content-Type`` gets none from the host's
        ``Site`` (whose requests default to ``text/html``).
        """
        host = Host()
        host.mount([b"api"], upstream=UntypedUpstream(headers={b"X-Up": [b"1"]}))
        token = host.login(self, "/api")
        response, body = host.request(
            self, "GET", "/api/build/x", headers=bearer(token)
        )
        self.assertEqual((response.code, body), (200, b"upstream body"))
        self.assertEqual(response.headers.getRawHeaders(b"x-up"), [b"1"])
        self.assertIsNone(response.headers.getRawHeaders(b"content-type"))

    def test_body_limit_in_plain_site(self) -> None:
        """
        In a plain host ``Site`` (which reads the whole body first), a
        proxied body over ``max_body`` is still refused with ``413``.
        """
        host = Host()
        _, upstream = host.mount([b"api"], make_config(max_body=10))
        token = host.login(self, "/api")
        response, body = host.request(
            self, "PUT", "/api/kv/key", data=b"x" * 11, headers=bearer(token)
        )
        assert_json_error(self, response, body, 413, "PAYLOAD_TOO_LARGE", "KV")
        self.assertEqual(upstream.requests, [])

    def test_token_required_under_mount(self) -> None:
        """
        ``/api/build`` without a token is the gateway's ``401 MISSING_TOKEN``.
        """
        response, body = self.host.request(self, "GET", "/api/build/x")
        assert_json_error(self, response, body, 401, "MISSING_TOKEN", "BUILD")
        self.assertEqual(self.upstream.requests, [])

    def test_gateway_404_covers_its_subtree(self) -> None:
        """
        Unknown paths under ``/api`` (the mount point itself included) get
        the gateway's JSON 404, even through the host's plain ``Request``,
        whose default content type is HTML.
        """
        for path in ["/api/nope", "/api", "/api/", "/api/buildings", "/api/other"]:
            response, body = self.host.request(self, "GET", path)
            assert_json_error(
                self, response, body, 404, "NOT_FOUND", "CORE", "Route not handled"
            )

    def test_host_resources_untouched(self) -> None:
        """
        Paths outside the mount point are the host's: its own pages, and its
        own (non-JSON) 404 for a gateway path used without the mount point.
        """
        response, body = self.host.request(self, "GET", "/")
        self.assertEqual((response.code, body), (200, HOST_PAGE))
        response, body = self.host.request(self, "GET", "/other")
        self.assertEqual((response.code, body), (200, OTHER_PAGE))
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [b"text/plain"]
        )
        response, body = self.host.request(
            self, "POST", "/auth/login", data=credentials()
        )
        self.assertEqual(response.code, 404)
        self.assertNotEqual(
            response.headers.getRawHeaders(b"content-type"), [b"application/json"]
        )
        self.assertEqual(self.upstream.requests, [])

    def test_dot_segments_clamped_at_mount(self) -> None:
        """
        Dot segments resolve inside the gateway's subtree and never climb
        out of it: ``/api/../other`` is the gateway's 404, not the host's
        page, and ``/api/kv/%2e%2e/build/x`` is a ``/build`` request.
        """
        response, body = self.host.request(self, "GET", "/api/../other")
        assert_json_error(self, response, body, 404, "NOT_FOUND")
        response, body = self.host.request(self, "GET", "/api/kv/%2e%2e/build/x")
        assert_json_error(self, response, body, 401, "MISSING_TOKEN", "BUILD")
        token = self.host.login(self, "/api")
        response, body = self.host.request(
            self, "GET", "/api/kv/../../build/x", headers=bearer(token)
        )
        self.assertEqual(response.code, 200, body)
        self.assertEqual(self.upstream.requests[-1][1], b"/base/x")

    def test_preflight_under_mount(self) -> None:
        """
        ``OPTIONS`` anywhere under the mount point is the gateway's ``204``.
        """
        response, body = self.host.request(self, "OPTIONS", "/api/build/x")
        self.assertEqual(response.code, 204)
        self.assertEqual(
            response.headers.getRawHeaders(b"access-control-allow-methods"),
            [b"GET,POST,PUT,DELETE,OPTIONS"],
        )

    def test_deeper_mount(self) -> None:
        """
        A mount point of several segments works the same way.
        """
        host = Host()
        gateway, upstream = host.mount([b"v1", b"gateway"])
        token = host.login(self, "/v1/gateway")
        response, body = host.request(
            self, "GET", "/v1/gateway/build/x?y", headers=bearer(token)
        )
        self.assertEqual(response.code, 200, body)
        self.assertEqual(upstream.requests[-1][1], b"/base/x?y")
        response, body = host.request(self, "GET", "/v1/gateway/nope")
        assert_json_error(self, response, body, 404, "NOT_FOUND")
        response, body = host.request(self, "GET", "/v1/other")
        self.assertEqual(response.code, 404)

    def test_resource_outlives_gateway_object(self) -> None:
        """
        The resource keeps everything it needs alive: a host may keep only
        ``Gateway(...).resource`` (Klein binds the auth app to its instance,
        and the resource holds that binding).
        """
        host = Host()
        store = MemoryCredentialStore([make_record(USERNAME, PASSWORD, "admin")])
        upstream = RecordingUpstream()
        agent = RequestTraversalAgent(upstream)
        host.agents.append(agent)
        host.root.putChild(
            b"api",
            Gateway(make_config(), host.clock, store=store, agent=agent).resource,
        )
        gc.collect()
        token = host.login(self, "/api")
        response, body = host.request(
            self, "GET", "/api/build/x", headers=bearer(token)
        )
        self.assertEqual(response.code, 200, body)


class GatewaySiteHostTests(SynchronousTestCase):
    """
    A host serving its whole tree with the daemon's ``GatewaySite``: the
    gateway, found below the mount point as soon as a request's headers are
    in, refuses oversized bodies before reading them; the host's own
    resources are served as usual.
    """

    def setUp(self) -> None:
        self.host = Host()
        self.gateway, self.upstream = self.host.mount([b"api"])
        self.site = GatewaySite(self.host.root, reactor=self.host.clock)

    def exchange(self, data: bytes) -> bytes:
        """
        Send ``data`` on a new connection to the site; return what it wrote.
        """
        channel = self.site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(data)
        self.host.clock.advance(0)
        return bytes(transport.value())

    def test_host_page(self) -> None:
        """
        The host's page is served with its own content type.
        """
        answer = self.exchange(b"GET / HTTP/1.1\r\nHost: host.test\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        self.assertIn(b"Content-Type: text/html\r\n", answer)
        self.assertTrue(answer.endswith(HOST_PAGE), answer)

    def test_early_refusal_below_mount(self) -> None:
        """
        A login body declared over the auth limit is refused with the
        gateway's JSON ``413`` before any of it is sent.
        """
        answer = self.exchange(
            b"POST /api/auth/login HTTP/1.1\r\nHost: host.test\r\n"
            b"Content-Length: 1000000\r\n\r\n"
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer)
        head, _, body = answer.partition(b"\r\n\r\n")
        self.assertIn(b"Content-Type: application/json", head)
        self.assertEqual(json.loads(body)["code"], "PAYLOAD_TOO_LARGE")

    def test_gateway_answers_below_mount(self) -> None:
        """
        The gateway answers below the mount point, and its 404 is JSON.
        """
        answer = self.exchange(b"GET /api/health HTTP/1.1\r\nHost: host.test\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        self.assertEqual(json.loads(answer.partition(b"\r\n\r\n")[2])["status"], "ok")
        answer = self.exchange(b"GET /api/nope HTTP/1.1\r\nHost: host.test\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 404 "), answer)
        self.assertIn(b"Content-Type: application/json", answer)


class SideBySideTests(SynchronousTestCase):
    """
    Two gateways in one process, with different secrets, stores and
    upstreams, do not affect each other.
    """

    def setUp(self) -> None:
        self.host = Host()
        self.a, self.upstream_a = self.host.mount(
            [b"a"],
            make_config(
                jwt_secret="secret-a-" + "x" * 32,
                login_failures_per_user=2,
                login_failures_per_address=0,
            ),
            records=(("alice", "alice-pass"),),
            upstream=RecordingUpstream(b"from a"),
        )
        self.b, self.upstream_b = self.host.mount(
            [b"b"],
            make_config(
                jwt_secret="secret-b-" + "y" * 32,
                services={"BUILD": "http://other-build.test/b-base"},
                login_failures_per_user=2,
                login_failures_per_address=0,
            ),
            records=(("bobby", "bobby-pass"),),
            upstream=RecordingUpstream(b"from b"),
        )

    def test_separate_state(self) -> None:
        """
        Each gateway has its own tokens, store, throttle, pool, cooperator
        and resource tree.
        """
        for name in (
            "tokens",
            "store",
            "throttle",
            "pool",
            "cooperator",
            "agent",
            "auth",
            "resource",
            "service",
        ):
            self.assertIsNot(getattr(self.a, name), getattr(self.b, name), name)
        self.assertIsNot(self.a.auth.app, self.b.auth.app)
        self.assertIsNot(self.a.tokens.revocations, self.b.tokens.revocations)

    def test_tokens_not_shared(self) -> None:
        """
        A token one gateway issued is refused by the other, before and
        after its own gateway verified (and cached) it.
        """
        token_a = self.host.login(self, "/a", "alice", "alice-pass")
        token_b = self.host.login(self, "/b", "bobby", "bobby-pass")
        response, body = self.host.request(
            self, "GET", "/a/build/x", headers=bearer(token_a)
        )
        self.assertEqual((response.code, body), (200, b"from a"))
        response, body = self.host.request(
            self, "GET", "/b/build/x", headers=bearer(token_a)
        )
        assert_json_error(self, response, body, 403, "INVALID_TOKEN", "BUILD")
        response, body = self.host.request(
            self, "GET", "/a/core/session", headers=bearer(token_b)
        )
        assert_json_error(self, response, body, 403, "INVALID_SESSION")
        response, body = self.host.request(
            self, "GET", "/b/build/x", headers=bearer(token_b)
        )
        self.assertEqual((response.code, body), (200, b"from b"))

    def test_stores_not_shared(self) -> None:
        """
        Each gateway logs in only the accounts of its own store.
        """
        response, body = self.host.request(
            self, "POST", "/b/auth/login", data=credentials("alice", "alice-pass")
        )
        assert_json_error(self, response, body, 401, "INVALID_CREDENTIALS", "AUTH")
        response, body = self.host.request(
            self, "POST", "/a/auth/login", data=credentials("bobby", "bobby-pass")
        )
        assert_json_error(self, response, body, 401, "INVALID_CREDENTIALS", "AUTH")

    def test_upstreams_not_shared(self) -> None:
        """
        Each gateway proxies to its own upstream with its own service URL.
        """
        token_a = self.host.login(self, "/a", "alice", "alice-pass")
        token_b = self.host.login(self, "/b", "bobby", "bobby-pass")
        self.host.request(self, "GET", "/a/build/one", headers=bearer(token_a))
        self.host.request(self, "GET", "/b/build/two", headers=bearer(token_b))
        self.assertEqual([r[1] for r in self.upstream_a.requests], [b"/base/one"])
        self.assertEqual([r[1] for r in self.upstream_b.requests], [b"/b-base/two"])
        self.assertEqual(
            self.upstream_b.requests[0][2].getRawHeaders(b"host"), [b"other-build.test"]
        )
        response, body = self.host.request(
            self, "GET", "/b/kv/x", headers=bearer(token_b)
        )
        assert_json_error(self, response, body, 502, "MISSING_TARGET", "KV")

    def test_throttles_not_shared(self) -> None:
        """
        Failed logins counted by one gateway do not hold back the other,
        for the same username from the same address.
        """
        for _ in range(2):
            response, body = self.host.request(
                self, "POST", "/a/auth/login", data=credentials("alice", "wrong")
            )
            assert_json_error(self, response, body, 401, "INVALID_CREDENTIALS")
        response, body = self.host.request(
            self, "POST", "/a/auth/login", data=credentials("alice", "alice-pass")
        )
        assert_json_error(self, response, body, 429, "TOO_MANY_ATTEMPTS")
        response, body = self.host.request(
            self, "POST", "/b/auth/login", data=credentials("alice", "wrong")
        )
        assert_json_error(self, response, body, 401, "INVALID_CREDENTIALS")

    def test_metrics_not_shared(self) -> None:
        """
        Each gateway counts only its own requests, logins and store lookups.
        """
        self.assertIsNot(self.a.metrics, self.b.metrics)
        self.host.login(self, "/a", "alice", "alice-pass")
        self.host.request(self, "GET", "/a/health")
        self.host.request(self, "GET", "/a/nope")
        self.assertEqual(sum(self.a.metrics.requests.values()), 3)
        self.assertEqual(sum(self.a.metrics.logins.values()), 1)
        self.assertEqual(sum(self.a.metrics.store_lookups.values()), 1)
        self.assertEqual(sum(self.b.metrics.requests.values()), 0)
        self.assertEqual(self.b.metrics.logins, {})
        self.assertEqual(self.b.metrics.store_lookups, {})

    def test_decoys_not_shared(self) -> None:
        """
        The decoy record unknown usernames are checked against follows the
        strongest record of that gateway's own store only.
        """
        host = Host()
        fast = {"n": 2**8, "r": 8, "p": 1, "dklen": 32}
        strong, _ = host.mount([b"strong"], records=())
        weak, _ = host.mount([b"weak"])
        strong.store.store(  # type: ignore[attr-defined]
            make_record("scrypt-user", PASSWORD, scheme="scrypt", params=fast)
        )
        host.login(self, "/strong", "scrypt-user")
        self.assertEqual(strong.auth.decoys.record.scheme, "scrypt")
        self.assertEqual(weak.auth.decoys.record.scheme, "sha256")
        self.assertIsNot(strong.auth.decoys, weak.auth.decoys)

    def test_revocations_not_shared(self) -> None:
        """
        Two gateways given the same secret still keep separate revocation
        lists: a logout at one revokes the token there only. (Hosts that
        want one list across gateways must share it explicitly.)
        """
        host = Host()
        config = make_config()
        one, _ = host.mount([b"one"], config)
        two, _ = host.mount([b"two"], config)
        token = host.login(self, "/one")
        response, body = host.request(
            self, "POST", "/one/core/logout", headers=bearer(token)
        )
        self.assertEqual(response.code, 200, body)
        response, body = host.request(
            self, "GET", "/one/build/x", headers=bearer(token)
        )
        assert_json_error(self, response, body, 403, "INVALID_TOKEN")
        response, body = host.request(
            self, "GET", "/two/build/x", headers=bearer(token)
        )
        self.assertEqual(response.code, 200, body)


class AuthAppBindingTests(SynchronousTestCase):
    """
    ``AuthApp.app`` is one ``Klein`` class attribute; each instance gets its
    own bound app, so two instances with different secrets and stores do
    not interfere.
    """

    def make(self, secret: str, username: str, clock: MemoryReactorClock) -> AuthApp:
        tokens = TokenAuthority(secret, clock.seconds)
        store = MemoryCredentialStore([make_record(username, PASSWORD, "admin")])
        throttle = LoginThrottle(5, 20, 60, clock.seconds)
        return AuthApp(tokens, store, throttle, clock)

    def login(self, app: AuthApp, username: str) -> tuple[int, Any]:
        client = StubTreq(app.app.resource())
        d = client.post("http://auth.test/auth/login", credentials(username, PASSWORD))
        client.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(response.content())
        return response.code, json.loads(body)

    def test_bound_per_instance(self) -> None:
        """
        Each instance's routes run against that instance: its own store
        and its own signing secret, whichever was built or used first.
        """
        clock = MemoryReactorClock()
        clock.advance(1_800_000_000)
        one = self.make("one-" + "s" * 32, "userone", clock)
        two = self.make("two-" + "s" * 32, "usertwo", clock)
        self.assertIsNot(one.app, two.app)
        self.assertIs(one.app, one.app)
        code, document = self.login(two, "usertwo")
        self.assertEqual(code, 200)
        two.tokens.verify(document["token"])
        self.assertRaises(InvalidToken, one.tokens.verify, document["token"])
        code, document = self.login(one, "userone")
        self.assertEqual(code, 200)
        one.tokens.verify(document["token"])
        self.assertEqual(self.login(one, "usertwo")[0], 401)
        self.assertEqual(self.login(two, "userone")[0], 401)


class ServiceTests(SynchronousTestCase):
    """
    The gateway's service, started and stopped by a host ``MultiService``,
    closes its upstream connections on stop; connections go through the
    reactor the gateway was given.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1_800_000_000)
        store = MemoryCredentialStore([make_record(USERNAME, PASSWORD, "admin")])
        # No agent: the gateway builds its own pooled Agent on the reactor.
        self.gateway = Gateway(
            make_config(services={"BUILD": "http://127.0.0.1:9001/svc"}),
            self.reactor,
            store=store,
        )
        self.root = Resource()
        self.root.putChild(b"api", self.gateway.resource)
        self.client = StubTreq(self.root)
        self.host = MultiService()
        self.gateway.service.setServiceParent(self.host)

    def flush(self) -> None:
        for _ in range(3):
            self.reactor.advance(0)
            self.client.flush()

    def test_provides_iservice(self) -> None:
        """
        ``Gateway.service`` is an ``IService``.
        """
        self.assertIsInstance(self.gateway.service, GatewayService)
        verifyObject(IService, self.gateway.service)

    def test_start_stop_with_host(self) -> None:
        """
        Starting and stopping the host starts and stops the gateway's
        service; stopping with nothing open completes at once.
        """
        self.host.startService()
        self.assertTrue(self.gateway.service.running)
        d = self.host.stopService()
        self.successResultOf(d)
        self.assertFalse(self.gateway.service.running)

    def proxied_call(self) -> tuple[Any, StringTransport]:
        """
        Make a proxied call and answer it, over a connection the test
        controls, with a keep-alive response the pool then caches.

        :return: the response and the connection's transport.
        """
        token = self.gateway.tokens.issue(USERNAME, "BUILD", ["admin"])
        d = self.client.get("http://host.test/api/build/x", headers=bearer(token))
        self.flush()
        self.assertNoResult(d)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        host, port, factory, _, _ = self.reactor.tcpClients[0]
        self.assertEqual((host, port), ("127.0.0.1", 9001))
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.flush()
        self.assertTrue(transport.value().startswith(b"GET /svc/x HTTP/1.1\r\n"))
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
            b"Content-Type: text/plain\r\n\r\nok"
        )
        self.flush()
        response = self.successResultOf(d)
        self.assertEqual(self.successResultOf(response.content()), b"ok")
        return response, transport

    def test_connections_use_given_reactor(self) -> None:
        """
        Upstream connections are made through the reactor given to
        ``Gateway``, and kept open for reuse after the answer.
        """
        self.host.startService()
        response, transport = self.proxied_call()
        self.assertEqual(response.code, 200)
        self.assertFalse(transport.disconnecting)

    def test_http_client_uses_given_reactor(self) -> None:
        """
        The default treq client (R2, GitHub) connects through the
        given reactor and writes request bodies with the gateway's own
        cooperator: nothing is written until that reactor turns.
        """
        d = self.gateway.http_client.post(
            "http://127.0.0.1:9002/hook", data=b"body bytes"
        )
        self.assertEqual(len(self.reactor.tcpClients), 1)
        host, port, factory, _, _ = self.reactor.tcpClients[0]
        self.assertEqual((host, port), ("127.0.0.1", 9002))
        transport = StringTransport()
        factory.buildProtocol(None).makeConnection(transport)
        self.assertNotIn(b"body bytes", transport.value())
        self.reactor.advance(0)
        self.assertTrue(transport.value().startswith(b"POST /hook HTTP/1.1\r\n"))
        self.assertTrue(transport.value().endswith(b"\r\n\r\nbody bytes"))
        d.cancel()
        self.failureResultOf(d)

    def test_stop_closes_pool(self) -> None:
        """
        Stopping the host closes the pool's idle upstream connections.
        """
        self.host.startService()
        _, transport = self.proxied_call()
        self.assertFalse(transport.disconnecting)
        self.host.stopService()
        self.assertTrue(transport.disconnecting)


class HeldUpstream(Resource):
    """
    A fake upstream that answers only when told to.

    :ivar held: the requests waiting for an answer.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.held: list[IRequest] = []

    def render(self, request: IRequest) -> object:
        """
        Hold the request.
        """
        self.held.append(request)
        return NOT_DONE_YET


class DrainTests(SynchronousTestCase):
    """
    Stopping the host's ``MultiService`` waits for the gateway's requests
    in flight, up to the configured drain period.
    """

    def setUp(self) -> None:
        self.host = Host()
        self.upstream = HeldUpstream()
        agent = RequestTraversalAgent(self.upstream)
        self.host.agents.append(agent)
        store = MemoryCredentialStore([make_record(USERNAME, PASSWORD, "admin")])
        self.gateway = Gateway(
            make_config(drain_timeout=10.0), self.host.clock, store=store, agent=agent
        )
        self.host.root.putChild(b"api", self.gateway.resource)
        self.services = MultiService()
        self.gateway.service.setServiceParent(self.services)
        self.services.startService()
        token = self.gateway.tokens.issue(USERNAME, "BUILD", ["admin"])
        self.host.client = StubTreq(self.host.root)
        self.response = self.host.client.get(
            "http://host.test/api/build/slow", headers=bearer(token)
        )
        self.host.flush()
        self.assertEqual(len(self.upstream.held), 1)

    def test_waits_for_request_in_flight(self) -> None:
        """
        The stop completes once the request in flight is answered.
        """
        stopped = self.services.stopService()
        self.host.flush()
        self.assertNoResult(stopped)
        upstream_request = self.upstream.held[0]
        upstream_request.write(b"late answer")
        upstream_request.finish()
        self.host.flush()
        response = self.successResultOf(self.response)
        self.assertEqual(self.successResultOf(response.content()), b"late answer")
        self.host.flush()
        self.successResultOf(stopped)

    def test_drain_period_bounded(self) -> None:
        """
        The stop completes after ``drain_timeout`` seconds even if the
        request is still in flight.
        """
        stopped = self.services.stopService()
        self.host.clock.advance(9)
        self.assertNoResult(stopped)
        self.host.clock.advance(1)
        self.successResultOf(stopped)


class ConfigTests(SynchronousTestCase):
    """
    Configurations for embedding: built in code or from an environment
    mapping, and refused when unusable.
    """

    def test_from_environ(self) -> None:
        """
        ``GatewayConfig.from_environ`` reads only the mapping it is given.
        """
        config = GatewayConfig.from_environ(
            {
                "GATEWAY_JWT_SECRET": SECRET,
                "METAGATEWAY_ACCOUNTS_DIR": "/srv/accounts",
                "BUILD_SERVICE_URL": "http://build.internal",
                "METAGATEWAY_LOGIN_WINDOW": "30",
            }
        )
        self.assertEqual(config.jwt_secret, SECRET)
        self.assertEqual(config.accounts_dir, "/srv/accounts")
        self.assertEqual(dict(config.services), {"BUILD": "http://build.internal"})
        self.assertEqual(config.login_window, 30.0)

    def test_from_environ_refuses(self) -> None:
        """
        A mapping without secret or store raises ``ConfigurationError``.
        """
        self.assertRaises(
            ConfigurationError,
            GatewayConfig.from_environ,
            {"METAGATEWAY_ACCOUNTS_DIR": "/srv/accounts"},
        )
        self.assertRaises(
            ConfigurationError,
            GatewayConfig.from_environ,
            {"GATEWAY_JWT_SECRET": SECRET},
        )

    def test_built_in_code(self) -> None:
        """
        A configuration built in code with an accounts directory runs a
        gateway whose store is that directory.
        """
        accounts = FilePath(self.mktemp())
        DirectoryCredentialStore(accounts).store(make_record(USERNAME, PASSWORD))
        config = GatewayConfig(jwt_secret=SECRET, accounts_dir=accounts.path)
        gateway = Gateway(config, MemoryReactorClock())
        client = StubTreq(gateway.resource)
        d = client.post("http://gateway.test/auth/login", credentials())
        client.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        body = self.successResultOf(response.content())
        self.assertEqual(json.loads(body)["user"]["username"], USERNAME)

    def test_gateway_refuses(self) -> None:
        """
        ``Gateway`` raises ``ConfigurationError`` for an empty secret, or
        when no store is passed and the configuration names none.
        """
        reactor = MemoryReactorClock()
        self.assertRaises(
            ConfigurationError, Gateway, GatewayConfig(jwt_secret=SECRET), reactor
        )
        self.assertRaises(
            ConfigurationError,
            Gateway,
            GatewayConfig(jwt_secret="", accounts_dir=self.mktemp()),
            reactor,
        )


class NoGlobalReactorTests(SynchronousTestCase):
    """
    Our modules never import the global reactor at module level.
    """

    def test_no_module_level_reactor_import(self) -> None:
        """
        No top-level statement of any ``metagateway`` module imports
        ``twisted.internet.reactor`` (``tap.py`` imports it inside
        ``makeService``, only when no reactor is given).
        """
        package = Path(metagateway.__file__).parent
        offenders = []
        for source in sorted(package.rglob("*.py")):
            tree = ast.parse(source.read_text("utf-8"))
            for node in tree.body:
                names: list[str] = []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module + "." + alias.name for alias in node.names]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                if "twisted.internet.reactor" in names:
                    offenders.append("%s:%d" % (source.name, node.lineno))
        self.assertEqual(offenders, [])
