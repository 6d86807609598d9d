"""
The proxy: a :class:`twisted.web.proxy.ReverseProxyResource` subclass that
checks tokens per route, strips the route prefix, and relays requests to an
upstream through a pooled :class:`twisted.web.client.Agent`, streaming the
answer back with backpressure (CONTRACT §5).
"""

from __future__ import annotations

from typing import Any, Optional
from urllib.parse import urlsplit

from zope.interface import implementer

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import FileBodyProducer, ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IRequest, IResponse
from twisted.web.proxy import ReverseProxyResource
from twisted.web.server import NOT_DONE_YET

from metagateway.accesslog import note_subject, note_upstream
from metagateway.errors import GatewayError, error_response, request_id_of
from metagateway.routes import Route
from metagateway.tokens import Claims, InvalidToken, TokenAuthority, bearer_token

log = Logger()

#: Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded either way.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

#: Request headers the proxy sets itself, or must never pass on.
_REQUEST_DROPPED = HOP_BY_HOP | {
    b"authorization",
    b"host",
    b"content-length",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-request-id",
}


def connection_tokens(headers: Headers) -> set[bytes]:
    """
    The header names listed in ``Connection``, lower-cased.
    """
    named = set()
    for value in headers.getRawHeaders(b"connection", []):
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                named.add(token)
    return named


def unauthorized(status: int, code: str, route: str) -> GatewayError:
    """
    A token failure: ``401 MISSING_TOKEN`` or ``403 INVALID_TOKEN``.
    """
    return GatewayError(status, code, "Unauthorized request", route)


def check_token(
    request: IRequest, route: Route, tokens: TokenAuthority
) -> Optional[Claims]:
    """
    Enforce ``route``'s token policy on ``request``.

    :return: the verified claims, or ``None`` when no token was needed and
        none was sent.
    :raises GatewayError: ``401 MISSING_TOKEN`` or ``403 INVALID_TOKEN``.
    """
    authorization = request.getHeader(b"authorization")
    if authorization is None and not route.token_required:
        return None
    token = bearer_token(authorization)
    if token is None:
        raise unauthorized(401, "MISSING_TOKEN", route.name)
    try:
        claims = tokens.verify(token)
    except InvalidToken:
        raise unauthorized(403, "INVALID_TOKEN", route.name) from None
    if not claims.may_reach(route.name):
        raise unauthorized(403, "INVALID_TOKEN", route.name)
    return claims


def upstream_headers(
    request: IRequest, route: Route, claims: Optional[Claims], request_id: str
) -> Headers:
    """
    The headers sent upstream: the client's end-to-end headers less
    ``Authorization`` and every ``X-Gateway-*``, plus the gateway's own.
    """
    incoming = request.requestHeaders
    dropped = _REQUEST_DROPPED | connection_tokens(incoming)
    outgoing = Headers()
    for name, values in incoming.getAllRawHeaders():
        lowered = name.lower()
        if lowered in dropped or lowered.startswith(b"x-gateway-"):
            continue
        outgoing.setRawHeaders(name, values)
    outgoing.setRawHeaders(b"X-Gateway-Route", [route.name.encode("ascii")])
    if claims is not None:
        outgoing.setRawHeaders(b"X-Gateway-User", [claims.project_id.encode("utf-8")])
        outgoing.setRawHeaders(
            b"X-Gateway-Scopes", [",".join(claims.scopes).encode("utf-8")]
        )
    peer = getattr(request.getClientAddress(), "host", None)
    forwarded = b", ".join(incoming.getRawHeaders(b"x-forwarded-for", []))
    if peer:
        hop = peer.encode("ascii", "replace")
        forwarded = forwarded + b", " + hop if forwarded else hop
    if forwarded:
        outgoing.setRawHeaders(b"X-Forwarded-For", [forwarded])
    outgoing.setRawHeaders(
        b"X-Forwarded-Proto", [b"https" if request.isSecure() else b"http"]
    )
    host = incoming.getRawHeaders(b"host")
    if host:
        outgoing.setRawHeaders(b"X-Forwarded-Host", [host[0]])
    outgoing.setRawHeaders(b"X-Request-Id", [request_id.encode("latin-1")])
    return outgoing


def copy_response_headers(response: IResponse, request: IRequest) -> None:
    """
    Copy an upstream's end-to-end response headers onto ``request``, and add
    ``Access-Control-Allow-Origin: *`` unless the upstream set one.
    """
    dropped = HOP_BY_HOP | connection_tokens(response.headers)
    out = request.responseHeaders
    for name, values in response.headers.getAllRawHeaders():
        if name.lower() in dropped:
            continue
        out.setRawHeaders(name, values)
    if not out.hasHeader(b"access-control-allow-origin"):
        out.setRawHeaders(b"Access-Control-Allow-Origin", [b"*"])
    # The client parser keeps Content-Length out of ``headers``.
    if isinstance(response.length, int) and request.method != b"HEAD":
        out.setRawHeaders(b"Content-Length", [b"%d" % (response.length,)])


def upstream_url(base: str, rest: list[bytes], uri: bytes) -> bytes:
    """
    The upstream URL: the service URL without its trailing slash, then the
    rest of the path (``/`` if nothing is left), then the original query
    string, byte for byte.

    :param base: the service URL.
    :param rest: the raw path segments after the prefix.
    :param uri: the original request target.
    """
    path = b"/" + b"/".join(rest)
    _, question, query = uri.partition(b"?")
    return base.rstrip("/").encode("ascii") + path + question + query


@implementer(IPushProducer)
class _BodyRelay(Protocol):
    """
    Writes an upstream response body to the client request as it arrives,
    pausing the upstream while the client is not reading.
    """

    def __init__(self, request: IRequest, finished: Deferred[None]) -> None:
        self.request = request
        self.finished = finished
        self.client_gone = False

    def connectionMade(self) -> None:
        self.request.registerProducer(self, True)

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()  # type: ignore[union-attr]

    def stopProducing(self) -> None:
        self.client_gone = True
        self.transport.stopProducing()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if not self.client_gone:
            self.request.write(data)

    def connectionLost(self, reason: Failure = ResponseDone()) -> None:  # type: ignore[assignment]
        self.request.unregisterProducer()
        if self.client_gone:
            self.finished.callback(None)
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.request.finish()
        else:
            # The upstream died mid-body: close the client's connection so
            # the truncated body can never look complete.
            log.warn(
                "Upstream failed mid-body: {why}", why=reason.getErrorMessage()
            )
            note_upstream(self.request, error="truncated")
            transport = getattr(self.request, "transport", None)
            if transport is not None:
                transport.abortConnection()
        self.finished.callback(None)


class GatewayProxyResource(ReverseProxyResource):
    """
    Relays one route's requests to its upstream.

    Unlike the stock class, it speaks through a pooled ``Agent`` (HTTP/1.1,
    keep-alive, TLS), streams the answer back, and answers failures in the
    contract's JSON. The root resource hands it a request whose ``postpath``
    holds the raw (still percent-encoded) segments after the prefix.

    :param route: the route this resource serves.
    :param base_url: the service URL, or ``None`` when unset.
    :param agent: the HTTP client.
    :param tokens: verifies tokens.
    :param clock: times the upstream.
    :param timeout: seconds to wait for the upstream's response headers.
    :param cooperator: schedules request-body writes.
    """

    isLeaf = True

    def __init__(
        self,
        route: Route,
        base_url: Optional[str],
        agent: IAgent,
        tokens: TokenAuthority,
        clock: IReactorTime,
        timeout: float = 30.0,
        cooperator: Optional[Cooperator] = None,
    ) -> None:
        parts = urlsplit(base_url or "http://unset.invalid")
        super().__init__(
            parts.hostname or "",
            parts.port or (443 if parts.scheme == "https" else 80),
            parts.path.rstrip("/").encode("utf-8"),
            clock,
        )
        self.route = route
        self.base_url = base_url
        self.agent = agent
        self.tokens = tokens
        self.clock = clock
        self.timeout = timeout
        self.cooperator = cooperator

    def getChild(self, path: bytes, request: IRequest) -> GatewayProxyResource:
        """
        Every path below the prefix is served by this same resource.
        """
        return self

    def render(self, request: IRequest) -> Any:
        """
        Check the token, then relay the request upstream.
        """
        try:
            claims = check_token(request, self.route, self.tokens)
            if claims is not None:
                note_subject(request, claims.project_id)
            if not self.base_url:
                raise GatewayError(
                    502,
                    "MISSING_TARGET",
                    "Missing target for /%s" % (self.route.prefix.decode("ascii"),),
                    self.route.name,
                )
        except GatewayError as e:
            return error_response(request, e)
        request_id = request_id_of(request)
        request.setHeader(b"X-Request-Id", request_id.encode("latin-1"))
        url = upstream_url(self.base_url, list(request.postpath), request.uri)
        headers = upstream_headers(request, self.route, claims, request_id)
        body = self._body_producer(request)
        d = self.agent.request(request.method, url, headers, body)
        d.addTimeout(self.timeout, self.clock)
        finished: Deferred[None] = Deferred()

        def client_gone(failure: Failure) -> None:
            d.cancel()

        request.notifyFinish().addErrback(client_gone)
        d.addCallbacks(
            self._relay,
            self._upstream_failed,
            callbackArgs=(request, finished),
            errbackArgs=(request,),
        )
        d.addErrback(self._unexpected, request)
        return NOT_DONE_YET

    def _body_producer(self, request: IRequest) -> Optional[FileBodyProducer]:
        headers = request.requestHeaders
        if not (
            headers.hasHeader(b"content-length")
            or headers.hasHeader(b"transfer-encoding")
        ):
            return None
        content = request.content
        content.seek(0, 0)
        if self.cooperator is None:
            return FileBodyProducer(content)
        return FileBodyProducer(content, cooperator=self.cooperator)

    def _relay(
        self, response: IResponse, request: IRequest, finished: Deferred[None]
    ) -> Deferred[None]:
        if getattr(request, "_disconnected", False):
            response.deliverBody(Protocol())
            return finished
        note_upstream(request, status=response.code)
        request.setResponseCode(response.code, response.phrase)
        copy_response_headers(response, request)
        response.deliverBody(_BodyRelay(request, finished))
        return finished

    def _upstream_failed(self, failure: Failure, request: IRequest) -> None:
        if failure.check(CancelledError) and getattr(request, "_disconnected", False):
            return
        if failure.check(TimeoutError):
            error = GatewayError(
                504, "UPSTREAM_TIMEOUT", "Upstream timed out", self.route.name
            )
        else:
            why = failure.value
            if isinstance(why, ResponseFailed) and why.reasons:
                why = why.reasons[0].value
            log.warn(
                "Upstream {route} unavailable: {why}",
                route=self.route.name,
                why=str(why) or why.__class__.__name__,
            )
            error = GatewayError(
                502, "UPSTREAM_UNAVAILABLE", "Upstream unavailable", self.route.name
            )
        if not getattr(request, "_disconnected", False) and not request.startedWriting:
            request.write(error_response(request, error))
            request.finish()

    def _unexpected(self, failure: Failure, request: IRequest) -> None:
        log.failure("Unexpected proxy failure", failure)
        if not getattr(request, "_disconnected", False) and not request.finished:
            transport = getattr(request, "transport", None)
            if transport is not None:
                transport.abortConnection()
