"""
Shared test helpers: an in-memory gateway with fake upstreams, and checks
on the contract's JSON error shape.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from io import BytesIO
from typing import Any, Callable, Mapping, Optional

from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent, StubTreq

from twisted.internet.task import Cooperator
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import FileBodyProducer
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from metagateway.auth.passwords import make_record
from metagateway.config import GatewayConfig
from metagateway.credentials.interfaces import ICredentialStore
from metagateway.credentials.memory import MemoryCredentialStore
from metagateway.gateway import Gateway

SECRET = "test-secret-that-is-at-least-32-bytes-long"

#: The demo account every in-memory gateway holds.
USERNAME = "alice"
PASSWORD = "correct horse"


class RecordingUpstream(Resource):
    """
    A fake upstream that records each request and answers with a fixed
    status, headers and body.

    :ivar requests: ``(method, uri, headers, body)`` of each request seen.
    """

    isLeaf = True

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
        self.requests: list[tuple[bytes, bytes, Any, bytes]] = []

    def render(self, request: IRequest) -> bytes:
        """
        Record the request and answer it.
        """
        self.requests.append(
            (
                request.method,
                request.uri,
                request.requestHeaders.copy(),
                request.content.read(),
            )
        )
        request.setResponseCode(self.code)
        for name, values in self.headers.items():
            request.responseHeaders.setRawHeaders(name, values)
        return self.body


def make_config(**overrides: Any) -> GatewayConfig:
    """
    A configuration for tests: the test secret, every service set, the
    local store unused (tests pass their own store).
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
    :ivar gateway: the gateway.
    :ivar client: a ``StubTreq`` talking to the gateway's resource.
    """

    def __init__(
        self,
        config: Optional[GatewayConfig] = None,
        store: Optional[ICredentialStore] = None,
        upstream: Optional[Resource] = None,
        outside: Optional[Resource] = None,
    ) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(1_800_000_000)
        self.upstream = upstream if upstream is not None else RecordingUpstream()
        self.agent = RequestTraversalAgent(self.upstream)
        self.store = (
            store
            if store is not None
            else MemoryCredentialStore([make_record(USERNAME, PASSWORD, "admin")])
        )
        # ``outside``: what the gateway's treq client (GitHub) and its
        # webhook agent (webhook targets) reach, a resource routing by
        # host, such as a ``NameVirtualHost``.
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

        :param url: a path, such as ``/build/x``; ``http://gateway.test`` is
            put before it.
        """
        d = self.client.request(method, "http://gateway.test" + url, **kw)
        self.flush()
        return self.finish(case, d)

    def finish(self, case: SynchronousTestCase, d: Any) -> Any:
        """
        Deliver what is pending, then return ``(response, body)`` of the
        request ``d`` (from :attr:`client`), which must be complete.
        """
        self.flush()
        response = case.successResultOf(d)
        body_d = response.content()
        self.flush()
        return response, case.successResultOf(body_d)

    def run_to_timeout(self, case: SynchronousTestCase, d: Any) -> None:
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


def assert_json_error(
    case: SynchronousTestCase,
    response: Any,
    body: bytes,
    status: int,
    code: str,
    route: Optional[str] = None,
    message: Optional[str] = None,
) -> dict[str, Any]:
    """
    Assert ``response`` is one of the gateway's JSON errors with ``status``
    and ``code`` (and ``route`` and ``message`` when given).

    :return: the parsed body.
    """
    case.assertEqual(response.code, status, body)
    assert_json(case, response)
    document = json.loads(body)
    case.assertEqual(document["status"], status)
    case.assertEqual(document["code"], code)
    if route is not None:
        case.assertEqual(document["route"], route)
    if message is not None:
        case.assertEqual(document["message"], message)
    uuid.UUID(document["requestId"])
    case.assertRegex(
        document["timestamp"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$"
    )
    for leak in ("Traceback", SECRET, "salt", "hash"):
        case.assertNotIn(leak, body.decode("utf-8"))
    return dict(document)


def assert_invalid_credentials(
    case: SynchronousTestCase, response: Any, body: bytes, route: str = "AUTH"
) -> None:
    """
    Assert a login's ``401 INVALID_CREDENTIALS`` "Invalid credentials"
    under ``route``.
    """
    assert_json_error(
        case, response, body, 401, "INVALID_CREDENTIALS", route, "Invalid credentials"
    )


def assert_json(case: SynchronousTestCase, response: Any) -> None:
    """
    Assert ``response`` is JSON with the contract's CORS header, never HTML.
    """
    case.assertEqual(
        response.headers.getRawHeaders(b"content-type"), [b"application/json"]
    )
    case.assertEqual(
        response.headers.getRawHeaders(b"access-control-allow-origin"), [b"*"]
    )


class FakeThreadPool:
    """
    A started thread pool whose work runs when the test says.
    """

    started = True

    def __init__(self) -> None:
        self.work: list[
            tuple[Callable[..., None], Callable[..., Any], tuple[Any, ...]]
        ] = []

    def callInThreadWithCallback(
        self, on_result: Callable[..., None], f: Callable[..., Any], *args: Any
    ) -> None:
        self.work.append((on_result, f, args))

    def run(self) -> None:
        """
        Run the queued work, as the pool's threads would.
        """
        work, self.work = self.work, []
        for on_result, f, args in work:
            try:
                result = f(*args)
            except BaseException:
                on_result(False, Failure())
            else:
                on_result(True, result)


class ImmediateReactor:
    """
    Takes results back from the pool's threads at once.
    """

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        f(*args)
