"""
Every answer the gateway makes itself carries ``X-Request-Id``; a proxied
answer carries only the upstream's headers (plus the CORS one), so it has
one only when the upstream set it.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from metagateway.errors import write_json
from metagateway.testing import (
    PASSWORD,
    USERNAME,
    ChannelHarness,
    FakeResponse,
    ParsedResponse,
)

#: A client-chosen request id.
CLIENT_ID = b"client-id-7"


def request(method: bytes, path: bytes, body: bytes = b"", extra: bytes = b"") -> bytes:
    """
    One request with ``X-Request-Id: client-id-7`` and a JSON body.
    """
    return (
        b"%s %s HTTP/1.1\r\nHost: gateway.test\r\nX-Request-Id: %s\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
        % (method, path, CLIENT_ID, len(body), extra, body)
    )


class GatewayAnswerIdTests(SynchronousTestCase):
    """
    The gateway's own answers carry the request's id.
    """

    def setUp(self) -> None:
        self.harness = ChannelHarness()

    def answer(self, data: bytes) -> ParsedResponse:
        """
        Send ``data`` on a fresh connection; its one answer.
        """
        self.harness.transport, self.harness.channel = self.harness.connect()
        self.harness.send(data)
        return self.harness.response()

    def test_own_answers(self) -> None:
        """
        Health, guest token, login, session, logout, the preflight and a
        404 each carry ``X-Request-Id``: the client's.
        """
        login = self.answer(
            request(
                b"POST",
                b"/auth/login",
                json.dumps({"username": USERNAME, "password": PASSWORD}).encode(),
            )
        )
        self.assertEqual(login.code, 200)
        bearer = b"Authorization: Bearer %s\r\n" % (
            json.loads(login.body)["token"].encode("ascii"),
        )
        answers = {
            "login": login,
            "health": self.answer(request(b"GET", b"/health")),
            "guest": self.answer(request(b"POST", b"/auth/guest", b"{}")),
            "session": self.answer(request(b"GET", b"/core/session", extra=bearer)),
            "logout": self.answer(request(b"POST", b"/core/logout", extra=bearer)),
            "preflight": self.answer(request(b"OPTIONS", b"/kv/x")),
            "not found": self.answer(request(b"GET", b"/nowhere")),
        }
        self.assertEqual(
            {name: (r.code, r.header(b"x-request-id")) for name, r in answers.items()},
            {
                "login": (200, CLIENT_ID),
                "health": (200, CLIENT_ID),
                "guest": (200, CLIENT_ID),
                "session": (200, CLIENT_ID),
                "logout": (200, CLIENT_ID),
                "preflight": (204, CLIENT_ID),
                "not found": (404, CLIENT_ID),
            },
        )

    def test_fresh_id(self) -> None:
        """
        Without an ``X-Request-Id`` from the client, the answer carries
        the one the gateway made.
        """
        self.harness.send(b"GET /health HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
        value = self.harness.response().header(b"x-request-id")
        assert value is not None
        self.assertEqual(len(value), 36)

    def test_write_json(self) -> None:
        """
        ``write_json``, which every JSON success answer (and the webhooks'
        ``202``) goes through, sets the id.
        """
        answered = Request(DummyChannel())
        answered.requestHeaders.setRawHeaders(b"X-Request-Id", [CLIENT_ID])
        write_json(answered, 202, {"success": True})
        self.assertEqual(
            answered.responseHeaders.getRawHeaders(b"x-request-id"), [CLIENT_ID]
        )

    def test_proxied_answer_unchanged(self) -> None:
        """
        A proxied answer carries the upstream's headers only (:ref:`contract-proxy`):
        no ``X-Request-Id`` unless the upstream sent one, and then the
        upstream's.
        """
        self.harness.send(request(b"GET", b"/kv/x"))
        self.harness.agent.calls[0].answer(
            FakeResponse(200, Headers(), length=0)
        ).finish()
        self.assertIsNone(self.harness.response().header(b"x-request-id"))
        self.harness.transport, self.harness.channel = self.harness.connect()
        self.harness.send(request(b"GET", b"/kv/y"))
        self.harness.agent.calls[1].answer(
            FakeResponse(200, Headers({b"X-Request-Id": [b"up"]}), length=0)
        ).finish()
        self.assertEqual(self.harness.response().header(b"x-request-id"), b"up")
