"""
The proxy: a :class:`twisted.web.proxy.ReverseProxyResource` subclass that
checks tokens per route, strips the route prefix, and relays requests to an
upstream through a pooled :class:`twisted.web.client.Agent`, streaming both
bodies with backpressure (:ref:`contract-proxy`, ``docs/proxy.rst``).

One request's trip is an :class:`_Exchange`: it sends the request (its body
streamed from a :class:`~metagateway.http.body.StreamingBody` when the
gateway's own request is in use, else read from the buffered body), times
the upstream while the upstream is the one holding things up, and relays
the answer through a :class:`_BodyRelay` that pauses the upstream while the
client is not reading.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional, Sequence
from urllib.parse import urlsplit

from OpenSSL.SSL import Error as OpenSSLError
from service_identity import VerificationError
from zope.interface import implementer

from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.error import CertificateError
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import FileBodyProducer, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IRequest, IResponse
from twisted.web.proxy import ReverseProxyResource
from twisted.web.server import NOT_DONE_YET

from metagateway.auth.assertion import AssertionSigner
from metagateway.auth.tokens import Claims, InvalidToken, TokenAuthority, request_token
from metagateway.errors import (
    GatewayError,
    error_response,
    payload_too_large,
    request_id_of,
)
from metagateway.http.body import BodyListener, StreamingBody
from metagateway.http.names import AUTHORIZATION, CONTENT_LENGTH, TRANSFER_ENCODING
from metagateway.http.request import when_done
from metagateway.http.twisted_internals import header_map
from metagateway.observability.accesslog import note_subject, note_upstream
from metagateway.observability.tracing import end_span, upstream_span
from metagateway.proxy.balancer import Balancer, Upstream, nothing_sent
from metagateway.proxy.headers import (
    adopt_response_headers,
    upstream_headers,
    upstream_host,
    upstream_url,
)
from metagateway.proxy.twisted_internals import lost_uncleanly
from metagateway.proxy.websocket import (
    WebSockets,
    is_websocket_upgrade,
    take_access_token,
)
from metagateway.routes import Route
from metagateway.timers import SharedTimer

log = Logger()


def unauthorized(status: int, code: str, route: str) -> GatewayError:
    """
    A token failure: ``401 MISSING_TOKEN`` or ``403 INVALID_TOKEN``.
    """
    return GatewayError(status, code, "Unauthorized request", route)


def check_token(
    request: IRequest,
    route: Route,
    tokens: TokenAuthority,
    query_token: Optional[str] = None,
) -> Optional[Claims]:
    """
    Enforce ``route``'s token policy on ``request``.

    :param query_token: the token a WebSocket handshake gave as its
        ``access_token`` query parameter (:ref:`contract-websocket`): used
        when no ``Authorization`` header was sent.
    :return: the verified claims, or ``None`` when no token was needed and
        none was sent.
    :raises GatewayError: ``401 MISSING_TOKEN`` or ``403 INVALID_TOKEN``.
    """
    headers = request.requestHeaders
    policy = route.token
    sent = AUTHORIZATION in header_map(headers)
    if policy == "none" or (policy != "required" and not sent and query_token is None):
        return None
    token = request_token(headers) if sent else query_token
    if token is None:
        raise unauthorized(401, "MISSING_TOKEN", route.name)
    try:
        claims = tokens.verify(token)
    except InvalidToken:
        raise unauthorized(403, "INVALID_TOKEN", route.name) from None
    if claims.route not in route.accepted:
        raise unauthorized(403, "INVALID_TOKEN", route.name)
    return claims


def declared_length(request: IRequest) -> Optional[int]:
    """
    The request's ``Content-Length``, if it sent a valid one.
    """
    values = request.requestHeaders.getRawHeaders(b"content-length")
    if not values or not values[0].strip().isdigit():
        return None
    return int(values[0].strip())


def buffered_length(request: IRequest) -> int:
    """
    The size of a buffered request body.
    """
    content = request.content
    if content is None:
        return 0
    size = content.seek(0, 2)
    content.seek(0, 0)
    return int(size)


def tls_failure(failure: Failure) -> Optional[BaseException]:
    """
    The TLS error (a failed handshake or certificate check) behind an
    upstream failure, if that is what it was.
    """
    pending = [failure]
    while pending:
        current = pending.pop()
        value = current.value
        if isinstance(value, _TLS_ERRORS):
            return value
        pending.extend(getattr(value, "reasons", None) or [])
    return None


def tls_problem(error: BaseException) -> str:
    """
    What a TLS failure with an upstream means, for its log line: the
    upstream's certificate not accepted (``--upstream-ca``), or the
    handshake refused by the upstream (``--upstream-client-cert``).
    """
    text = str(error).lower()
    if isinstance(error, VerificationError) or "not for this host" in text:
        return "the upstream's certificate was not accepted: not for this host"
    if "certificate verify failed" in text or isinstance(error, CertificateError):
        return (
            "the upstream's certificate was not accepted: it does not chain to "
            "--upstream-ca (or the system's trust roots)"
        )
    if "alert" in text:
        return (
            "the upstream refused our TLS handshake: it wants a client "
            "certificate it trusts (--upstream-client-cert)"
        )
    return "the TLS handshake failed"


#: What a failed TLS handshake or certificate check raises (``twisted[tls]``
#: is a dependency: pyOpenSSL and service_identity are always there).
_TLS_ERRORS = (CertificateError, OpenSSLError, VerificationError)


def describe(failure: Failure) -> str:
    """
    A short description of why an upstream call failed, for the log.
    """
    why = failure.value
    # ResponseFailed and its kind wrap the Failures that caused them.
    while getattr(why, "reasons", None):
        why = why.reasons[0].value  # type: ignore[union-attr]
    return str(why) or why.__class__.__name__


class _Watchdog:
    """
    Times the upstream while it is the one holding a request up: before its
    answer's headers arrive, except while the client is the slow side
    (still sending its body at its own pace).

    :param timer: the proxy resource's timer, whose ``delay`` is the
        longest wait (0 for none: nothing is ever armed). Every watchdog of
        a resource waits as long, so they share one reactor timer.
    :param expired: called once, when the wait runs out.
    """

    __slots__ = ("timer", "expired", "fired", "_call", "_stopped")

    def __init__(self, timer: SharedTimer, expired: Callable[[], None]) -> None:
        self.timer = timer
        self.expired = expired
        self.fired = False
        self._call: Optional[IDelayedCall] = None
        self._stopped = timer.delay <= 0

    def arm(self) -> None:
        """
        Start the countdown, unless it already runs.
        """
        if self._stopped or self._call is not None:
            return
        self._call = self.timer.callLater(self.timer.delay, self.expire)

    def disarm(self) -> None:
        """
        Stop the countdown; :meth:`arm` starts a fresh one.
        """
        call = self._call
        if call is not None:
            self._call = None
            call.cancel()

    def stop(self) -> None:
        """
        Stop for good, and let go of the callback (it is usually a bound
        method of the watchdog's owner: keeping it would make a reference
        cycle that only the garbage collector could free).
        """
        self.disarm()
        self._stopped = True
        self.expired = _nothing

    def expire(self) -> None:
        """
        The wait ran out (called by the timer).
        """
        self._call = None
        self._stopped = True
        self.fired = True
        expired, self.expired = self.expired, _nothing
        expired()


#: The listener of a streamed body whose exchange is over.
_NO_LISTENER = BodyListener()


def _nothing() -> None:
    """
    Do nothing: the callback of a stopped watchdog.
    """


class _Exchange(BodyListener):
    """
    One request's trip upstream and back.

    :param proxy: the route's proxy resource.
    :param request: the client's request.
    :param url: the URL on the first upstream.
    :param headers: the headers sent upstream.
    :param body: the body sent upstream, if any.
    :param candidates: the upstreams to try, in order: the next is tried
        when one refuses the connection (nothing was sent).
    :param tail: the path and query after the upstream's base URL.
    """

    def __init__(
        self,
        proxy: GatewayProxyResource,
        request: IRequest,
        url: bytes,
        headers: Headers,
        body: Optional[IBodyProducer],
        candidates: Sequence[Upstream] = (),
        tail: bytes = b"",
    ) -> None:
        self.proxy = proxy
        # Twisted's Request: more than IRequest declares (notifyFinish...).
        self.request: Any = request
        self.url = url
        self.candidates = candidates
        self.tail = tail
        self.attempt = 0
        self.headers = headers
        self.body = body
        self.watchdog = _Watchdog(proxy.timer, self._timed_out)
        self.client_gone = False
        self.too_large = False
        self.relay: Optional[_BodyRelay] = None
        self.call: Optional[Deferred[IResponse]] = None
        self.span: Any = None

    def start(self) -> None:
        """
        Send the request upstream.
        """
        request = self.request
        if isinstance(self.body, StreamingBody):
            self.body.listener = self
            self.body.limit = self.proxy.max_body
        when_done(request, self._over)
        self.watchdog.arm()
        self._send(self.url)

    def _send(self, url: bytes) -> None:
        if self.candidates:
            self.candidates[self.attempt].requests += 1
        # The upstream call's span, when spans are recorded (None otherwise).
        self.span = upstream_span(self.request, self.headers, url)
        call = self.proxy.agent.request(
            self.request.method, url, self.headers, self.body
        )
        self.call = call
        call.addCallbacks(self._answered, self._failed)
        call.addErrback(self._unexpected)

    # BodyListener: the streamed request body.

    def upstream_waiting(self) -> None:
        self.watchdog.arm()

    def upstream_reading(self) -> None:
        self.watchdog.disarm()

    def body_too_large(self) -> None:
        self.too_large = True
        if self.call is not None:
            self.call.cancel()

    # The upstream's side.

    def _timed_out(self) -> None:
        if self.call is not None:
            self.call.cancel()

    def _answered(self, response: IResponse) -> None:
        self.watchdog.stop()
        end_span(self.span, status=response.code)
        request = self.request
        if self.client_gone:
            response.deliverBody(_Discard())
            return
        if self.too_large:
            # The whole answer came before the body went past the limit.
            response.deliverBody(_Discard())
            route = self.proxy.route.name
            self._answer_error(payload_too_large(route, self.proxy.max_body))
            return
        note_upstream(request, status=response.code)
        request.setResponseCode(response.code, response.phrase)
        adopt_response_headers(response, request)
        self.relay = _BodyRelay(self, response)
        response.deliverBody(self.relay)
        return None

    def _retried(self, failure: Failure) -> bool:
        """
        Tell the pool how the upstream failed; when nothing was sent and
        another upstream is left, send the request there.
        """
        candidates = self.candidates
        if not candidates:
            return False
        upstream = candidates[self.attempt]
        timed_out = self.watchdog.fired or failure.check(TimeoutError) is not None
        refused = not timed_out and nothing_sent(failure)
        if timed_out or refused:
            self.proxy.balancer.failed(upstream, describe(failure))
        else:
            upstream.errors += 1
        if not refused or self.client_gone or self.too_large:
            return False
        if self.attempt + 1 >= len(candidates):
            return False
        self.attempt += 1
        following = candidates[self.attempt]
        base = following.base
        if base is None:
            return False
        self.headers.setRawHeaders(b"Host", [following.host_header])
        log.info(
            "Upstream {failed} of route {route} refused the connection; "
            "trying {url} (request {request_id})",
            failed=upstream.url,
            route=self.proxy.route.name,
            url=following.url,
            request_id=request_id_of(self.request),
        )
        self._send(base + self.tail)
        return True

    def _failed(self, failure: Failure) -> None:
        end_span(self.span, error=describe(failure))
        if self._retried(failure):
            return
        self.watchdog.stop()
        self.release()
        if self.client_gone:
            return
        route = self.proxy.route.name
        if self.too_large:
            error = payload_too_large(route, self.proxy.max_body)
        elif self.watchdog.fired or failure.check(TimeoutError):
            log.warn(
                "Upstream {route} timed out after {seconds}s (request {request_id})",
                route=route,
                seconds=self.proxy.timeout,
                request_id=request_id_of(self.request),
            )
            error = GatewayError(504, "UPSTREAM_TIMEOUT", "Upstream timed out", route)
        else:
            tls = tls_failure(failure)
            if tls is not None:
                log.error(
                    "TLS with upstream {route} ({url}) failed, {problem}: {why} "
                    "(request {request_id})",
                    route=route,
                    url=self.proxy.base_url,
                    problem=tls_problem(tls),
                    why=str(tls) or tls.__class__.__name__,
                    request_id=request_id_of(self.request),
                )
            else:
                log.warn(
                    "Upstream {route} unavailable: {why} (request {request_id})",
                    route=route,
                    why=describe(failure),
                    request_id=request_id_of(self.request),
                )
            error = GatewayError(
                502, "UPSTREAM_UNAVAILABLE", "Upstream unavailable", route
            )
        self._answer_error(error)

    def _answer_error(self, error: GatewayError) -> None:
        request = self.request
        self.release()
        if self.client_gone or request.finished:
            return
        if request.startedWriting:
            abort_client(request)
            return
        request.write(error_response(request, error))
        request.finish()

    def _unexpected(self, failure: Failure) -> None:
        log.failure("Unexpected proxy failure", failure)
        if not self.client_gone and not self.request.finished:
            abort_client(self.request)

    def release(self) -> None:
        """
        Let go of the objects that point back at this exchange (the relay,
        the streamed body's listener), once the answer is complete: the
        exchange and the request it holds are then freed as soon as the
        last reference goes, rather than left for the garbage collector.
        """
        self.relay = None
        if isinstance(self.body, StreamingBody) and self.body.listener is self:
            self.body.listener = _NO_LISTENER

    # The client's side.

    def _over(self, result: Optional[Failure]) -> None:
        if result is not None:
            self._client_gone(result)

    def _client_gone(self, reason: Failure) -> None:
        self.client_gone = True
        self.watchdog.stop()
        if self.relay is not None:
            self.relay.stop_upstream()
        elif self.call is not None:
            self.call.cancel()


def abort_client(request: IRequest) -> None:
    """
    Drop the client's connection at once (a reset): its answer cannot be
    completed.
    """
    channel = getattr(request, "channel", None)
    transport = getattr(channel, "transport", None) or getattr(
        request, "transport", None
    )
    if transport is not None:
        transport.abortConnection()


def cut_client(request: IRequest) -> None:
    """
    End the client's connection mid-answer so that the truncation shows.

    When the client can tell a short body (a ``Content-Length`` was sent, or
    the body is chunked and will lack its last chunk), what was relayed is
    flushed and the connection closed; an answer delimited by the close
    itself (an HTTP/1.0 client) would look complete that way, so its
    connection is reset instead.
    """
    framed = bool(
        getattr(request, "chunked", False)
    ) or request.responseHeaders.hasHeader(b"content-length")
    channel = getattr(request, "channel", None)
    if framed and channel is not None and request.method != b"HEAD":
        channel.loseConnection()
    else:
        abort_client(request)


class _Discard(Protocol):
    """
    Takes an unwanted answer's body and drops its connection.
    """

    def connectionMade(self) -> None:
        self.transport.stopProducing()  # type: ignore[union-attr]


@implementer(IPushProducer)
class _BodyRelay(Protocol):
    """
    Writes an upstream's answer body to the client as it arrives, pausing
    the upstream while the client is not reading.

    :param exchange: the exchange the answer belongs to.
    :param response: the upstream's answer.
    """

    def __init__(self, exchange: _Exchange, response: IResponse) -> None:
        self.exchange = exchange
        self.response = response
        self.request: Any = exchange.request
        self._registered = False

    def connectionMade(self) -> None:
        if self.exchange.client_gone:
            self.stop_upstream()
            return
        self.request.registerProducer(self, True)
        self._registered = True

    def stop_upstream(self) -> None:
        """
        Drop the upstream connection: the answer is no longer wanted.
        """
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    # IPushProducer, driven by the client's connection.

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()  # type: ignore[union-attr]

    def stopProducing(self) -> None:
        self.exchange.client_gone = True
        self.stop_upstream()

    # The upstream's answer body.

    def dataReceived(self, data: bytes) -> None:
        if not self.exchange.client_gone:
            self.request.write(data)

    def connectionLost(self, reason: Failure = ResponseDone()) -> None:  # type: ignore[assignment]
        request = self.request
        self.exchange.release()
        if self.exchange.client_gone:
            return
        if self._registered:
            request.unregisterProducer()
        # isinstance rather than Failure.check, which builds the names of
        # every class in the exception's hierarchy, on every answer.
        if isinstance(reason.value, PotentialDataLoss):
            # A body that ends with its connection: complete if the
            # upstream closed it, truncated if the connection was reset.
            reason = lost_uncleanly(self.response) or reason
        if isinstance(reason.value, (ResponseDone, PotentialDataLoss)):
            request.finish()
        else:
            log.warn(
                "Upstream {route} failed mid-body: {why} (request {request_id})",
                route=self.exchange.proxy.route.name,
                why=describe(reason),
                request_id=request_id_of(request),
            )
            note_upstream(request, error="truncated")
            cut_client(request)


class GatewayProxyResource(ReverseProxyResource):
    """
    Relays one route's requests to its upstream.

    What it keeps of the stock class is its description of the upstream:
    ``host``, ``port`` and ``path`` are the service URL's (``path``
    without its trailing slash), and ``reactor`` is the clock, as
    ``ReverseProxyResource`` holds them, so code that inspects a Twisted
    reverse proxy reads the right upstream. What it replaces is how
    requests go there: the stock ``getChild`` (a new resource per segment,
    each re-quoted) and ``render`` (the whole body read, a plain-TCP
    ``Connection: close`` client, a 501 HTML page on failure) are
    overridden, and ``isLeaf`` is set. This one speaks
    through a pooled ``Agent`` (HTTP/1.1, keep-alive, TLS), streams both
    bodies, times the upstream, and answers failures in the contract's
    JSON. The root resource hands it a request whose ``postpath`` holds
    the raw (still percent-encoded) segments after the prefix.

    :param route: the route this resource serves.
    :param base_url: the service URL, or ``None`` when unset.
    :param agent: the HTTP client.
    :param tokens: verifies tokens.
    :param clock: times the upstream.
    :param timeout: seconds to wait on the upstream (for its answer's
        headers, or to take more of the body); 0 for no limit.
    :param cooperator: schedules the writes of buffered request bodies.
    :param max_body: the largest request body proxied, in bytes; 0 for no
        limit.
    :param upstreams: the route's upstreams (:ref:`contract-config-file`), spread
        round-robin; by default ``base_url`` alone. ``base_url`` is then
        the first.
    :param assertions: signs the ``X-Gateway-Assertion`` each request
        carries upstream (:ref:`contract-assertions`); none without it.
    :param websockets: passes WebSocket handshakes through
        (:ref:`contract-websocket`); without it an ``Upgrade`` is dropped
        and the request proxied plain.
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
        max_body: int = 0,
        upstreams: Optional[Sequence[str]] = None,
        assertions: Optional[AssertionSigner] = None,
        websockets: Optional[WebSockets] = None,
    ) -> None:
        if upstreams is None:
            upstreams = (base_url,) if base_url else ()
        elif upstreams:
            base_url = upstreams[0]
        #: the route's upstream pool.
        self.balancer = Balancer(upstreams, clock.seconds, route.name)
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
        #: the upstream deadlines, on one reactor timer.
        self.timer = SharedTimer(clock, timeout)
        self.cooperator = cooperator
        self.max_body = max_body
        self.assertions = assertions
        self.websockets = websockets
        self.host_header = upstream_host(base_url) if base_url else None

    def getChild(self, path: bytes, request: IRequest) -> GatewayProxyResource:
        """
        Every path below the prefix is served by this same resource.
        """
        return self

    def render(self, request: IRequest) -> Any:
        """
        Check the token and the body's size, then relay the request
        upstream.
        """
        route = self.route.name
        uri = request.uri
        query_token = None
        upgrade = self.websockets is not None and is_websocket_upgrade(request)
        if upgrade:
            uri, query_token = take_access_token(uri)
        try:
            claims = check_token(request, self.route, self.tokens, query_token)
            if claims is not None:
                note_subject(request, claims.project_id)
            if not self.balancer.upstreams:
                raise GatewayError(
                    502,
                    "MISSING_TARGET",
                    "Missing target for /%s" % (self.route.prefix.decode("ascii"),),
                    route,
                )
            stream = getattr(request, "body_stream", None)
            limit = self.max_body
            if limit:
                declared = declared_length(request)
                if declared is not None and declared > limit:
                    raise payload_too_large(route, limit)
                if stream is None and buffered_length(request) > limit:
                    raise payload_too_large(route, limit)
            candidates = self.balancer.candidates()
            if not candidates:
                log.warn(
                    "No upstream of route {route} is healthy (request {request_id})",
                    route=route,
                    request_id=request_id_of(request),
                )
                raise GatewayError(
                    502, "UPSTREAM_UNAVAILABLE", "Upstream unavailable", route
                )
            first = candidates[0]
            tail = upstream_url(b"", request.postpath, uri)
            url = (
                first.url.rstrip("/").encode("ascii")
                if first.base is None
                else first.base
            ) + tail
            if not _SENDABLE_URL.match(url):
                raise GatewayError(
                    400, "BAD_REQUEST", "Malformed request target", route
                )
        except GatewayError as e:
            return error_response(request, e)
        request_id = request_id_of(request)
        assertion = None
        if self.assertions is not None:
            assertion = self.assertions.sign(
                route,
                claims.project_id if claims is not None else None,
                claims.scopes if claims is not None else (),
                request_id,
                request.method,
                url_path(url),
            )
        headers = upstream_headers(
            request,
            self.route,
            claims,
            request_id,
            first.host_header,
            assertion,
        )
        if upgrade and self.websockets is not None:
            self.websockets.handshake(self, request, url, headers, first)
            return NOT_DONE_YET
        body = stream if stream is not None else self._buffered_body(request)
        _Exchange(self, request, url, headers, body, candidates, tail).start()
        return NOT_DONE_YET

    def _buffered_body(self, request: IRequest) -> Optional[FileBodyProducer]:
        raw = header_map(request.requestHeaders)
        if CONTENT_LENGTH not in raw and TRANSFER_ENCODING not in raw:
            return None
        content = request.content
        content.seek(0, 0)
        if self.cooperator is None:
            return FileBodyProducer(content)
        return FileBodyProducer(content, cooperator=self.cooperator)


def url_path(url: bytes) -> bytes:
    """
    The path of an absolute upstream ``url`` (``/`` if it has none),
    without its query: what an assertion names as ``path``.
    """
    _, _, rest = url.partition(b"://")
    slash = rest.find(b"/")
    if slash < 0:
        return b"/"
    return rest[slash:].split(b"?", 1)[0]


#: What the ``Agent`` accepts as a request target.
_SENDABLE_URL = re.compile(rb"\A[\x21-\x7e]+\Z")
