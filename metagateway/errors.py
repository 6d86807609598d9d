"""
The one JSON error shape every gateway-made failure is answered in.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime, timezone
from typing import Any, Mapping, Optional

from twisted.web.iweb import IRequest

from metagateway.cors import policy_of
from metagateway.notes import notes_of

#: Headers every JSON answer of the gateway carries.
JSON_HEADERS = (
    (b"Content-Type", b"application/json"),
    (b"Access-Control-Allow-Origin", b"*"),
)


class GatewayError(Exception):
    """
    A failure the gateway answers itself, in the contract's JSON shape.

    :ivar status: the HTTP status code.
    :ivar code: the machine-readable error code, such as ``MISSING_TOKEN``.
    :ivar message: the human-readable message.
    :ivar route: the route name the error is reported under.
    :ivar details: optional extra JSON-serialisable detail.
    :ivar headers: extra response headers, such as ``Retry-After``.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        route: str = "CORE",
        details: Optional[Mapping[str, Any]] = None,
        headers: Optional[Mapping[bytes, bytes]] = None,
    ) -> None:
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message
        self.route = route
        self.details = details
        self.headers = dict(headers or {})

    def body(self, request_id: Optional[str] = None) -> bytes:
        """
        Serialise this error.

        :param request_id: the request id to report; a fresh uuid4 if none.
        :return: the UTF-8 JSON body.
        """
        document: dict[str, Any] = {
            "route": self.route,
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "requestId": request_id or new_request_id(),
            "timestamp": iso_timestamp(),
        }
        if self.details is not None:
            document["details"] = dict(self.details)
        return json.dumps(document, separators=(",", ":")).encode("utf-8")


def iso_timestamp(when: Optional[float] = None) -> str:
    """
    Format a time as ISO 8601 UTC with milliseconds, as JavaScript's
    ``Date.prototype.toISOString`` does.

    :param when: POSIX seconds; now if omitted.
    """
    moment = (
        datetime.now(timezone.utc)
        if when is None
        else datetime.fromtimestamp(when, timezone.utc)
    )
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (
        moment.microsecond // 1000
    )


#: How many request ids one ``os.urandom`` read makes.
_IDS_PER_READ = 256


class _RandomBytes:
    """
    ``os.urandom`` read in blocks and handed out 16 bytes at a time: one
    system call per :data:`_IDS_PER_READ` request ids. A forked child
    starts with a fresh block, never its parent's.
    """

    def __init__(self) -> None:
        self.block = b""
        self.offset = 0

    def take16(self) -> bytes:
        offset = self.offset
        if offset >= len(self.block):
            self.block = os.urandom(16 * _IDS_PER_READ)
            offset = 0
        self.offset = offset + 16
        return self.block[offset : offset + 16]

    def forget(self) -> None:
        self.block = b""
        self.offset = 0


_random_bytes = _RandomBytes()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_random_bytes.forget)


def new_request_id() -> str:
    """
    A fresh random request id: a version 4 UUID in its usual text form,
    as ``str(uuid.uuid4())`` gives, made without building a ``UUID`` (the
    same ``os.urandom`` bytes, read a few thousand at a time).
    """
    raw = bytearray(_random_bytes.take16())
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return "%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])


def request_id_of(request: IRequest) -> str:
    """
    The id of a request: the one the proxy assigned, else the client's
    ``X-Request-Id``, else a fresh uuid4 (remembered on the request).

    :param request: the request.
    """
    notes = notes_of(request)
    existing = notes.request_id
    if existing:
        return str(existing)
    incoming = request.requestHeaders.getRawHeaders(b"x-request-id")
    value = None
    if incoming:
        candidate = incoming[0].decode("latin-1")
        if 0 < len(candidate) <= 200 and candidate.isprintable():
            value = candidate
    if value is None:
        value = new_request_id()
    notes.request_id = value
    return value


def write_json(
    request: IRequest,
    status: int,
    document: Any,
    headers: Optional[Mapping[bytes, bytes]] = None,
) -> bytes:
    """
    Set the status and JSON headers of ``request`` and return the body.

    :param request: the request to answer.
    :param status: the HTTP status code.
    :param document: a JSON-serialisable value.
    :param headers: extra headers.
    :return: the body bytes, for the caller to write or return.
    """
    body = json.dumps(document, separators=(",", ":")).encode("utf-8")
    set_json_headers(request, status, headers)
    request.setHeader(b"Content-Length", b"%d" % (len(body),))
    return body


#: Reason phrases Twisted's table lacks (it would send "Unknown Status")
#: or spells the old way.
REASON_PHRASES = {
    408: b"Request Timeout",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
}


def set_json_headers(
    request: IRequest, status: int, headers: Optional[Mapping[bytes, bytes]] = None
) -> None:
    """
    Set the status code, the JSON and CORS headers and the request's
    ``X-Request-Id`` on ``request``.
    """
    request.setResponseCode(status, REASON_PHRASES.get(status))
    policy = policy_of(request)
    if policy.any:
        for name, value in JSON_HEADERS:
            request.setHeader(name, value)
    else:
        request.setHeader(b"Content-Type", b"application/json")
        policy.apply(request, request.responseHeaders)
    request.setHeader(b"X-Request-Id", request_id_of(request).encode("latin-1"))
    for name, value in (headers or {}).items():
        request.setHeader(name, value)


def error_request_id(request: IRequest) -> str:
    """
    The ``requestId`` of an error body: always a uuid4, as the contract
    says. It is the request's id when that is a UUID (the gateway's own, or
    a client's UUID ``X-Request-Id``); a client's id of another form is kept
    for the upstream and the log, and the body gets a fresh uuid4.
    """
    value = request_id_of(request)
    try:
        if str(uuid.UUID(value)) == value.lower():
            return value
    except ValueError:
        pass
    return new_request_id()


def error_response(request: IRequest, error: GatewayError) -> bytes:
    """
    Prepare ``request`` to answer with ``error`` and return the body. The
    answer carries the request's ``X-Request-Id``.

    :param request: the request to answer.
    :param error: the failure.
    :return: the body bytes.
    """
    body = error.body(error_request_id(request))
    # For the access log and metrics (metagateway.observability.accesslog).
    notes_of(request).error = error.code
    set_json_headers(request, error.status, error.headers)
    request.setHeader(b"Content-Length", b"%d" % (len(body),))
    return body


def internal_error(route: str = "CORE") -> GatewayError:
    """
    The answer to anything unexpected: ``500 INTERNAL_ERROR``, no detail.
    """
    return GatewayError(500, "INTERNAL_ERROR", "Internal error", route)


def payload_too_large(route: str, limit: int) -> GatewayError:
    """
    ``413 PAYLOAD_TOO_LARGE``: a body over ``limit`` bytes.
    """
    return GatewayError(
        413, "PAYLOAD_TOO_LARGE", "Request body too large", route, {"limit": limit}
    )


def store_unavailable(route: str) -> GatewayError:
    """
    The answer when the credential store cannot answer.
    """
    return GatewayError(
        503,
        "CREDENTIAL_STORE_UNAVAILABLE",
        "Credential store unavailable",
        route,
    )


def state_unavailable(route: str) -> GatewayError:
    """
    The answer to a login while the shared state store (:ref:`contract-shared-state`)
    cannot be reached: the failure limits cannot be enforced, so none is tried.
    """
    return GatewayError(
        503,
        "STATE_UNAVAILABLE",
        "Shared state store unavailable",
        route,
    )
