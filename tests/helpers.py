"""
Shared test-only helpers: checks on the contract's JSON error shape. The
fakes they are used with (the in-memory gateway, fake upstreams) are in
:mod:`metagateway.testing`.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from metagateway.auth.tokens import AUDIENCE, ISSUER, LIFETIME
from metagateway.testing import SECRET, USERNAME, GatewayHarness


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


def assert_invalid_request(
    case: SynchronousTestCase,
    response: Any,
    body: bytes,
    message: str,
    route: str = "CORE",
) -> None:
    """
    Assert a ``400 INVALID_REQUEST`` with ``message`` under ``route``.
    """
    assert_json_error(
        case,
        response,
        body,
        400,
        "INVALID_REQUEST",
        route=route,
        message=message,
    )


def assert_cancelled_quietly(
    case: SynchronousTestCase, harness: GatewayHarness, d: Deferred[Any]
) -> None:
    """
    Cancel the request ``d`` (from ``harness.client``), as a client going
    away does, and let the upstream timeout pass: the request fails and
    nothing is logged as an error.
    """
    d.cancel()
    harness.flush()
    case.failureResultOf(d)
    harness.clock.advance(harness.gateway.config.upstream_timeout)
    harness.flush()
    case.assertEqual(case.flushLoggedErrors(), [])


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


def token_claims(now: int, **overrides: Any) -> dict[str, Any]:
    """
    The claims of a valid token for :data:`~metagateway.testing.USERNAME`
    on route ``CORE``, issued at ``now`` for the gateway's lifetime, with
    ``overrides`` applied; a value of ``None`` removes the claim.
    """
    payload: dict[str, Any] = {
        "projectId": USERNAME,
        "route": "CORE",
        "scopes": ["admin"],
        "environment": "production",
        "issuedBy": ISSUER,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": USERNAME,
        "iat": now,
        "exp": now + LIFETIME,
    }
    for name, value in overrides.items():
        if value is None:
            payload.pop(name, None)
        else:
            payload[name] = value
    return payload
