"""
A whole gateway in memory, for tests: a configuration, a fake upstream, a
typed ``StubTreq`` and :class:`GatewayHarness`, which ties them to a
``MemoryReactorClock``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from io import BytesIO
from typing import Any, Callable, Mapping, Optional, Union, cast

from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent
from treq.testing import StubTreq as _StubTreq

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.task import Cooperator
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import FileBodyProducer
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from metagateway.auth.passwords import make_record
from metagateway.config import GatewayConfig
from metagateway.credentials.interfaces import ICredentialStore
from metagateway.credentials.memory import MemoryCredentialStore
from metagateway.gateway import Gateway

#: The signing secret of :func:`make_config`: long enough for every HMAC
#: algorithm PyJWT knows (64 bytes for HS512), so that tests signing with
#: another algorithm get no key-length warning.
SECRET = "test-secret-long-enough-for-hs512-0123456789abcdef0123456789abcdef"  # noqa: S105 (a fake, for tests)

#: The demo account every :class:`GatewayHarness` store holds.
USERNAME = "alice"
PASSWORD = "correct horse"  # noqa: S105 (a fake, for tests)


class StubTreq(_StubTreq):
    """
    treq's ``StubTreq`` (an ``HTTPClient`` over a resource, in memory),
    with its methods declared for type checkers: treq sets them on each
    instance, so they are otherwise unknown to mypy.
    """

    request: Callable[..., Deferred[Any]]
    get: Callable[..., Deferred[Any]]
    head: Callable[..., Deferred[Any]]
    post: Callable[..., Deferred[Any]]
    put: Callable[..., Deferred[Any]]
    patch: Callable[..., Deferred[Any]]
    delete: Callable[..., Deferred[Any]]
    content: Callable[[Any], Deferred[bytes]]
    text_content: Callable[..., Deferred[str]]
    json_content: Callable[..., Deferred[Any]]
    collect: Callable[[Any, Callable[[bytes], object]], Deferred[None]]
    flush: Callable[[], None]


class ScriptedResource(Resource):
    """
    A leaf resource that records each request (:meth:`record`) and answers
    it (:meth:`reply`), or, as the test scripts it, never answers or drops
    the connection.

    :ivar hang: when set, requests are left unanswered in :attr:`pending`.
    :ivar drop: when set, each request's connection is aborted.
    :ivar pending: the requests left unanswered while :attr:`hang` is set.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.hang = False
        self.drop = False
        self.pending: list[Request] = []

    def render(self, request: Request) -> Union[bytes, int]:
        """
        Record the request, then drop it, hold it or answer it.
        """
        body = request.content.read() if request.content is not None else b""
        self.record(request, body)
        if self.drop:
            cast(ITCPTransport, request.channel.transport).abortConnection()
            return NOT_DONE_YET
        if self.hang:
            self.pending.append(request)
            return NOT_DONE_YET
        return self.reply(request, body)

    def record(self, request: Request, body: bytes) -> None:
        """
        Keep what the test will look at; by default nothing.

        :param body: the request's body, already read.
        """

    def reply(self, request: Request, body: bytes) -> Union[bytes, int]:
        """
        Answer ``request``: set its status and headers and return its body
        (or ``NOT_DONE_YET``).
        """
        raise NotImplementedError()


class RecordingUpstream(ScriptedResource):
    """
    A fake upstream that records each request and answers with a fixed
    status, headers and body (or never, or by dropping the connection: see
    :class:`ScriptedResource`).

    :ivar requests: ``(method, uri, headers, body)`` of each request seen.
    :ivar headers: the response headers, name to values.
    """

    def __init__(
        self,
        body: bytes = b"upstream body",
        code: int = 200,
        headers: Optional[Mapping[bytes, list[bytes]]] = None,
    ) -> None:
        super().__init__()
        self.body = body
        self.code = code
        self.headers = dict(headers or {b"Content-Type": [b"text/plain"]})
        self.requests: list[tuple[bytes, bytes, Headers, bytes]] = []

    def record(self, request: Request, body: bytes) -> None:
        """
        Keep ``(method, uri, headers, body)``.
        """
        self.requests.append(
            (request.method, request.uri, request.requestHeaders.copy(), body)
        )

    def reply(self, request: Request, body: bytes) -> bytes:
        """
        Answer with :attr:`code`, :attr:`headers` and :attr:`body`.
        """
        request.setResponseCode(self.code)
        for name, values in self.headers.items():
            request.responseHeaders.setRawHeaders(name, values)
        return self.body


def make_config(**overrides: Any) -> GatewayConfig:
    """
    A configuration for tests: :data:`SECRET`, every service set (at
    ``build.test``, ``kv.test``, ``core.test`` and ``base.test``), the
    accounts directory unused (the harness passes its own store).

    :param overrides: ``GatewayConfig`` fields to set.
    """
    settings: dict[str, Any] = dict(
        jwt_secret=SECRET,
        services={
            "BUILD": "http://build.test/base/",
            "KV": "http://kv.test",
            "CORE": "http://core.test",
            "BASE": "http://base.test/hq-root",
        },
        accounts_dir="/nonexistent",
    )
    config = GatewayConfig(**settings)
    return replace(config, **overrides)


class GatewayHarness:
    """
    A gateway built in memory: a ``MemoryReactorClock``, a memory store
    holding :data:`USERNAME`, and one fake upstream behind a
    ``RequestTraversalAgent``.

    :ivar clock: the reactor and clock.
    :ivar upstream: the fake upstream resource (serves every service).
    :ivar agent: the agent the gateway proxies through, to :attr:`upstream`.
    :ivar store: the credential store.
    :ivar outside_agent: what the gateway's GitHub client and webhook
        fan-out reach.
    :ivar gateway: the gateway.
    :ivar client: a :class:`StubTreq` talking to the gateway's resource.
    """

    def __init__(
        self,
        config: Optional[GatewayConfig] = None,
        store: Optional[ICredentialStore] = None,
        upstream: Optional[Resource] = None,
        outside: Optional[Resource] = None,
    ) -> None:
        """
        :param config: the configuration, :func:`make_config` by default.
        :param store: the credential store, by default a
            ``MemoryCredentialStore`` holding :data:`USERNAME`.
        :param upstream: the fake upstream, a :class:`RecordingUpstream` by
            default.
        :param outside: what the gateway's treq client (GitHub) and its
            webhook agent (webhook targets) reach: a resource routing by
            host, such as a ``NameVirtualHost``.
        """
        self.clock = MemoryReactorClock()
        self.clock.advance(1_800_000_000)
        # Any: a test reads its own fake's attributes (``requests`` ...).
        self.upstream: Any = upstream if upstream is not None else RecordingUpstream()
        self.agent = RequestTraversalAgent(self.upstream)
        self.store = (
            store
            if store is not None
            else MemoryCredentialStore([make_record(USERNAME, PASSWORD, "admin")])
        )
        self.outside_agent = RequestTraversalAgent(
            outside if outside is not None else Resource()
        )
        outside_bodies = Cooperator(
            scheduler=lambda work: self.clock.callLater(0, work)  # type: ignore[no-any-return]
        )
        self.gateway = Gateway(
            config or make_config(),
            self.clock,
            store=self.store,
            agent=self.agent,
            http_client=HTTPClient(
                self.outside_agent,
                data_to_body_producer=lambda data: FileBodyProducer(
                    BytesIO(data) if isinstance(data, bytes) else data,
                    cooperator=outside_bodies,
                ),
            ),
            webhook_agent=self.outside_agent,
        )
        self.client = StubTreq(self.gateway.resource)

    def flush(self) -> None:
        """
        Deliver everything pending between client, gateway and upstream.
        """
        for _ in range(5):
            self.clock.advance(0)
            self.client.flush()
            self.agent.flush()
            self.outside_agent.flush()

    def request(
        self, case: SynchronousTestCase, method: str, url: str, **kw: Any
    ) -> Any:
        """
        Make a request and return ``(response, body)`` once it is complete.

        :param case: the test, whose ``successResultOf`` is used.
        :param url: a path, such as ``/build/x``; ``http://gateway.test`` is
            put before it.
        :param kw: passed to treq's ``request``.
        """
        d = self.client.request(method, "http://gateway.test" + url, **kw)
        self.flush()
        return self.finish(case, d)

    def finish(self, case: SynchronousTestCase, d: Deferred[Any]) -> Any:
        """
        Deliver what is pending, then return ``(response, body)`` of the
        request ``d`` (from :attr:`client`), which must be complete.
        """
        self.flush()
        response = case.successResultOf(d)
        body_d = response.content()
        self.flush()
        return response, case.successResultOf(body_d)

    def run_to_timeout(self, case: SynchronousTestCase, d: Deferred[Any]) -> None:
        """
        Let the upstream timeout pass, asserting that request ``d`` is not
        answered a second before it.
        """
        timeout = self.gateway.config.upstream_timeout
        self.clock.advance(timeout - 1)
        self.flush()
        case.assertNoResult(d)
        self.clock.advance(1)

    def login(self, case: SynchronousTestCase, path: str = "/auth/login") -> str:
        """
        Log in as :data:`USERNAME` and return the token.
        """
        response, body = self.request(
            case,
            "POST",
            path,
            data=json.dumps({"username": USERNAME, "password": PASSWORD}).encode(),
        )
        case.assertEqual(response.code, 200, body)
        return str(json.loads(body)["token"])
