"""
Header names as Twisted's ``Headers`` stores them (``x-request-id`` is
``X-Request-Id``), for the hot paths that read and write the mapping
inside a header set directly
(:func:`~metagateway.http.twisted_internals.header_map`).
"""

from __future__ import annotations

from twisted.web.http_headers import Headers


def canonical_name(name: bytes) -> bytes:
    """
    ``name`` as ``Headers`` stores it, found through its public methods
    once, when a module defines its constants.
    """
    headers = Headers()
    headers.setRawHeaders(name, [b""])
    for stored, _ in headers.getAllRawHeaders():
        return stored
    raise AssertionError("Headers stored nothing")  # pragma: no cover


ALLOW_ORIGIN = canonical_name(b"access-control-allow-origin")
GATEWAY_ASSERTION = canonical_name(b"x-gateway-assertion")
AUTHORIZATION = canonical_name(b"authorization")
CONNECTION = canonical_name(b"connection")
CONTENT_LENGTH = canonical_name(b"content-length")
DATE = canonical_name(b"date")
FORWARDED_FOR = canonical_name(b"x-forwarded-for")
FORWARDED_HOST = canonical_name(b"x-forwarded-host")
FORWARDED_PROTO = canonical_name(b"x-forwarded-proto")
HOST = canonical_name(b"host")
REQUEST_ID = canonical_name(b"x-request-id")
SERVER = canonical_name(b"server")
GATEWAY_ROUTE = canonical_name(b"x-gateway-route")
GATEWAY_SCOPES = canonical_name(b"x-gateway-scopes")
TRACEPARENT = canonical_name(b"traceparent")
TRACESTATE = canonical_name(b"tracestate")
TRANSFER_ENCODING = canonical_name(b"transfer-encoding")
UPGRADE = canonical_name(b"upgrade")
GATEWAY_USER = canonical_name(b"x-gateway-user")
