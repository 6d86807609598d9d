"""
The proxy's header rules, both ways: which request headers go upstream
and what the gateway adds to them, which of the upstream's response
headers come back, and how the upstream's URL and ``Host`` are made
(:ref:`contract-proxy`).

The webhook fan-out (:mod:`metagateway.proxy.webhooks`) drops the same
hop-by-hop headers.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.abstract import isIPv6Address
from twisted.web.client import URI
from twisted.web.http import NO_BODY_CODES
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest, IResponse

from metagateway.auth.tokens import Claims
from metagateway.cors import policy_of
from metagateway.http.names import (
    ALLOW_ORIGIN,
    CONNECTION,
    CONTENT_LENGTH,
    FORWARDED_FOR,
    FORWARDED_HOST,
    FORWARDED_PROTO,
    GATEWAY_ASSERTION,
    GATEWAY_ROUTE,
    GATEWAY_SCOPES,
    GATEWAY_USER,
    HOST,
    REQUEST_ID,
    TRACEPARENT,
    TRACESTATE,
)
from metagateway.http.twisted_internals import header_map, one_line
from metagateway.notes import RequestNotes
from metagateway.observability.tracing import trace_of
from metagateway.routes import Route

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
#: ``Expect`` was answered by the gateway (``100 Continue``) already.
_REQUEST_DROPPED = HOP_BY_HOP | {
    b"authorization",
    b"host",
    b"content-length",
    b"expect",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-request-id",
    b"traceparent",
    b"tracestate",
}


def connection_tokens(headers: Headers) -> set[bytes]:
    """
    The header names listed in ``Connection``, lower-cased.
    """
    named: set[bytes] = set()
    for value in header_map(headers).get(CONNECTION) or ():
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                named.add(token)
    return named


def upstream_host(base_url: str) -> bytes:
    """
    The ``Host`` header of requests to ``base_url``: what Twisted's
    ``Agent`` would add (the host, its port unless the scheme's default,
    an IPv6 address in brackets), computed once rather than per request.
    """
    uri = URI.fromBytes(base_url.encode("utf-8"))
    host: bytes = uri.host
    if isIPv6Address(host.decode("ascii", "replace")):
        host = b"[" + host + b"]"
    if (uri.scheme, uri.port) in ((b"http", 80), (b"https", 443)):
        return host
    return b"%b:%d" % (host, uri.port)


_HTTPS = [b"https"]
_HTTP = [b"http"]
_ANY_ORIGIN = [b"*"]


def upstream_headers(
    request: IRequest,
    route: Route,
    claims: Optional[Claims],
    request_id: str,
    host_header: Optional[bytes] = None,
    assertion: Optional[bytes] = None,
    notes: Optional[RequestNotes] = None,
) -> Headers:
    """
    The headers sent upstream: the client's end-to-end headers less
    ``Authorization`` and every ``X-Gateway-*``, plus the gateway's own
    (``traceparent`` naming the gateway's span, ``tracestate`` as sent).

    The header set is filled through :func:`header_map`: the client's
    headers are parsed already, and the gateway's own values are made one
    line (:func:`one_line`) where they come from outside.

    :param host_header: the upstream's ``Host``, when known; without it
        the ``Agent`` adds one (on a copy of every header).
    :param assertion: the signed ``X-Gateway-Assertion`` (:ref:`contract-assertions`),
        if the gateway has a key.
    :param notes: the request's notes, when the caller has them.
    """
    incoming = header_map(request.requestHeaders)
    dropped = _REQUEST_DROPPED
    if CONNECTION in incoming:
        dropped = dropped | connection_tokens(request.requestHeaders)
    outgoing = Headers()
    out = header_map(outgoing)
    forwarded = b""
    host = None
    for name, values in incoming.items():
        lowered = name.lower()
        if lowered in dropped or lowered.startswith(b"x-gateway-"):
            if lowered == b"x-forwarded-for":
                forwarded = b", ".join(values)
            elif lowered == b"host" and values:
                host = values[0]
            continue
        out[name] = list(values)
    out[GATEWAY_ROUTE] = [route.name.encode("ascii")]
    if claims is not None:
        out[GATEWAY_USER] = [one_line(claims.project_id.encode("utf-8"))]
        out[GATEWAY_SCOPES] = [one_line(",".join(claims.scopes).encode("utf-8"))]
    if assertion is not None:
        out[GATEWAY_ASSERTION] = [assertion]
    peer = getattr(request.getClientAddress(), "host", None)
    if peer:
        hop = peer.encode("ascii", "replace")
        forwarded = forwarded + b", " + hop if forwarded else hop
    if forwarded:
        out[FORWARDED_FOR] = [forwarded]
    out[FORWARDED_PROTO] = _HTTPS[:] if request.isSecure() else _HTTP[:]
    if host:
        out[FORWARDED_HOST] = [host]
    # A client's id was checked by request_id_of; a new one is a UUID.
    out[REQUEST_ID] = [request_id.encode("latin-1")]
    # The caller's trace continued, or a new one (:ref:`contract-observability`).
    trace = trace_of(request, notes)
    out[TRACEPARENT] = [trace.traceparent()]
    if trace.state is not None:
        out[TRACESTATE] = [trace.state]
    if host_header is not None:
        out[HOST] = [host_header]
    return outgoing


def adopt_response_headers(response: IResponse, request: IRequest) -> None:
    """
    Answer ``request`` with an upstream's end-to-end response headers, and
    add ``Access-Control-Allow-Origin: *`` unless the upstream set one: the
    one addition :ref:`contract-proxy` allows (with an ``allow_origins`` list, §8,
    the request's listed origin and ``Vary: Origin`` instead).

    The upstream's ``Headers`` become the request's response headers (one
    header set rather than a copy of each), less the hop-by-hop ones; what
    the gateway had set already (``Server``, ``Date``, a ``Connection:
    close``) stays only where the upstream sent no such header.
    """
    headers = response.headers
    raw = header_map(headers)
    dropped = HOP_BY_HOP
    if CONNECTION in raw:
        dropped = dropped | connection_tokens(headers)
    for name in [name for name in raw if name.lower() in dropped]:
        del raw[name]
    for name, values in header_map(request.responseHeaders).items():
        if name not in raw:
            raw[name] = values
    request.responseHeaders = headers
    policy = policy_of(request)
    if not policy.any:
        # A listed origin (:ref:`contract-config-file`), unless the upstream set its
        # own.
        policy.apply(request, headers, keep=True)
    elif ALLOW_ORIGIN not in raw:
        raw[ALLOW_ORIGIN] = _ANY_ORIGIN[:]
    # The client parser keeps Content-Length out of ``headers``. A 204 must
    # not carry one, and a 304's would describe another answer's body, not
    # the empty one Twisted's client reports.
    if (
        isinstance(response.length, int)
        and request.method != b"HEAD"
        and response.code not in NO_BODY_CODES
    ):
        raw[CONTENT_LENGTH] = [b"%d" % (response.length,)]


def upstream_url(base: bytes, rest: list[bytes], uri: bytes) -> bytes:
    """
    The upstream URL: the service URL without its trailing slash, then the
    rest of the path (``/`` if nothing is left), then the original query
    string, byte for byte.

    :param base: the service URL without its trailing slash, as bytes.
    :param rest: the raw path segments after the prefix.
    :param uri: the original request target.
    """
    _, question, query = uri.partition(b"?")
    return base + b"/" + b"/".join(rest) + question + query
