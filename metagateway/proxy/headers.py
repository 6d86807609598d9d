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
    for value in headers.getRawHeaders(b"connection") or ():
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


def upstream_headers(
    request: IRequest,
    route: Route,
    claims: Optional[Claims],
    request_id: str,
    host_header: Optional[bytes] = None,
    assertion: Optional[bytes] = None,
) -> Headers:
    """
    The headers sent upstream: the client's end-to-end headers less
    ``Authorization`` and every ``X-Gateway-*``, plus the gateway's own
    (``traceparent`` naming the gateway's span, ``tracestate`` as sent).

    :param host_header: the upstream's ``Host``, when known; without it
        the ``Agent`` adds one (on a copy of every header).
    :param assertion: the signed ``X-Gateway-Assertion`` (:ref:`contract-assertions`),
        if the gateway has a key.
    """
    incoming = request.requestHeaders
    dropped = _REQUEST_DROPPED
    if incoming.hasHeader(b"connection"):
        dropped = dropped | connection_tokens(incoming)
    outgoing = Headers()
    set_header = outgoing.setRawHeaders
    forwarded = b""
    host = None
    for name, values in incoming.getAllRawHeaders():
        lowered = name.lower()
        if lowered in dropped or lowered.startswith(b"x-gateway-"):
            if lowered == b"x-forwarded-for":
                forwarded = b", ".join(values)
            elif lowered == b"host" and values:
                host = values[0]
            continue
        set_header(name, values)
    set_header(b"X-Gateway-Route", [route.name.encode("ascii")])
    if claims is not None:
        set_header(b"X-Gateway-User", [claims.project_id.encode("utf-8")])
        set_header(b"X-Gateway-Scopes", [",".join(claims.scopes).encode("utf-8")])
    if assertion is not None:
        set_header(b"X-Gateway-Assertion", [assertion])
    peer = getattr(request.getClientAddress(), "host", None)
    if peer:
        hop = peer.encode("ascii", "replace")
        forwarded = forwarded + b", " + hop if forwarded else hop
    if forwarded:
        set_header(b"X-Forwarded-For", [forwarded])
    set_header(b"X-Forwarded-Proto", [b"https" if request.isSecure() else b"http"])
    if host:
        set_header(b"X-Forwarded-Host", [host])
    set_header(b"X-Request-Id", [request_id.encode("latin-1")])
    # The caller's trace continued, or a new one (:ref:`contract-observability`).
    trace = trace_of(request)
    set_header(b"traceparent", [trace.traceparent()])
    if trace.state is not None:
        set_header(b"tracestate", [trace.state])
    if host_header is not None:
        set_header(b"Host", [host_header])
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
    named = connection_tokens(headers)
    dropped = (HOP_BY_HOP | named) if named else HOP_BY_HOP
    hop = [name for name, _ in headers.getAllRawHeaders() if name.lower() in dropped]
    for name in hop:
        headers.removeHeader(name)
    for name, values in request.responseHeaders.getAllRawHeaders():
        if not headers.hasHeader(name):
            headers.setRawHeaders(name, values)
    request.responseHeaders = headers
    policy = policy_of(request)
    if not policy.any:
        # A listed origin (:ref:`contract-config-file`), unless the upstream set its
        # own.
        policy.apply(request, headers, keep=True)
    elif not headers.hasHeader(b"access-control-allow-origin"):
        headers.setRawHeaders(b"Access-Control-Allow-Origin", [b"*"])
    # The client parser keeps Content-Length out of ``headers``. A 204 must
    # not carry one, and a 304's would describe another answer's body, not
    # the empty one Twisted's client reports.
    if (
        isinstance(response.length, int)
        and request.method != b"HEAD"
        and response.code not in NO_BODY_CODES
    ):
        headers.setRawHeaders(b"Content-Length", [b"%d" % (response.length,)])


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
