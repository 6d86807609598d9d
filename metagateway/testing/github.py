"""
A fake GitHub for tests: the OAuth token endpoint and the API's user
endpoint, answering as GitHub does for one good code and one token.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.vhost import NameVirtualHost

from metagateway.testing.gateway import ScriptedResource

#: The OAuth app's client id and secret the gateway is given in tests.
CLIENT_ID = "Iv1.test-client-id"
CLIENT_SECRET = "github-client-secret-never-shown"  # noqa: S105 (a fake)

#: The access token the fake hands out for :attr:`FakeGitHub.good_code`.
ACCESS_TOKEN = "gho_access-token-never-shown"  # noqa: S105 (a fake)

#: Where the fake is when served by :meth:`FakeGitHub.hosts`.
TOKEN_URL = "http://github.test/login/oauth/access_token"  # noqa: S105 (not a secret)
API_URL = "http://github.test/api/"

#: The user :data:`ACCESS_TOKEN` belongs to, as ``GET /user`` shows it.
OCTOCAT = {
    "login": "octocat",
    "id": 583231,
    "name": "The Octocat",
    "avatar_url": "https://avatars.githubusercontent.com/u/583231?v=4",
    "html_url": "https://github.com/octocat",
}


class FakeEndpoint(ScriptedResource):
    """
    One endpoint of the fake GitHub: records each request and answers as
    GitHub would (:meth:`respond`), or with a canned answer, or never, or by
    dropping the connection.

    :ivar requests: ``(method, headers, body)`` of each request seen.
    """

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[bytes, Any, bytes]] = []
        self.canned: Optional[tuple[int, bytes]] = None

    def answer(self, code: int, document: Any) -> None:
        """
        Answer from now on with ``code`` and ``document`` as JSON.
        """
        self.answer_raw(code, json.dumps(document).encode("utf-8"))

    def answer_raw(self, code: int, body: bytes) -> None:
        """
        Answer from now on with ``code`` and ``body``.
        """
        self.canned = (code, body)

    def record(self, request: Request, body: bytes) -> None:
        """
        Keep ``(method, headers, body)``.
        """
        self.requests.append((request.method, request.requestHeaders.copy(), body))

    def reply(self, request: Request, body: bytes) -> bytes:
        """
        The canned answer if one is set, else GitHub's (:meth:`respond`),
        as JSON.
        """
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        if self.canned is not None:
            request.setResponseCode(self.canned[0])
            return self.canned[1]
        code, document = self.respond(request, body)
        request.setResponseCode(code)
        return json.dumps(document).encode("utf-8")

    def respond(self, request: Request, body: bytes) -> tuple[int, Any]:
        """
        GitHub's answer: status and JSON document.
        """
        raise NotImplementedError()


class TokenEndpoint(FakeEndpoint):
    """
    ``POST /login/oauth/access_token``: :attr:`FakeGitHub.good_code` gets
    :data:`ACCESS_TOKEN`, any other code GitHub's ``200`` error answer.
    """

    def respond(self, request: Request, body: bytes) -> tuple[int, Any]:
        """
        A token for the good code, else GitHub's error document.
        """
        try:
            sent = json.loads(body)
        except ValueError:
            sent = {}
        if request.method != b"POST" or sent.get("code") != FakeGitHub.good_code:
            return 200, {
                "error": "bad_verification_code",
                "error_description": "The code passed is incorrect or expired.",
            }
        return 200, {"access_token": ACCESS_TOKEN, "token_type": "bearer", "scope": ""}


class UserEndpoint(FakeEndpoint):
    """
    ``GET /api/user``: :data:`OCTOCAT` for :data:`ACCESS_TOKEN`, else
    ``401``.
    """

    def respond(self, request: Request, body: bytes) -> tuple[int, Any]:
        """
        :data:`OCTOCAT` for the right bearer token, else ``401``.
        """
        authorization = request.getHeader(b"authorization")
        if authorization != b"Bearer " + ACCESS_TOKEN.encode("ascii"):
            return 401, {"message": "Bad credentials"}
        return 200, OCTOCAT


class FakeGitHub:
    """
    A fake GitHub: the OAuth token endpoint at
    ``/login/oauth/access_token`` and the API's ``/api/user``.

    :ivar root: the resource to serve, over TCP or behind a vhost.
    :ivar token: the token endpoint.
    :ivar user: the user endpoint.
    """

    #: The one code the token endpoint exchanges for :data:`ACCESS_TOKEN`.
    good_code = "good-code"

    def __init__(self) -> None:
        self.token = TokenEndpoint()
        self.user = UserEndpoint()
        self.root = Resource()
        login = Resource()
        oauth = Resource()
        api = Resource()
        self.root.putChild(b"login", login)
        login.putChild(b"oauth", oauth)
        oauth.putChild(b"access_token", self.token)
        self.root.putChild(b"api", api)
        api.putChild(b"user", self.user)

    def hosts(self) -> NameVirtualHost:
        """
        A vhost serving this fake as ``github.test`` (at :data:`TOKEN_URL`
        and :data:`API_URL`).
        """
        outside = NameVirtualHost()
        outside.addHost(b"github.test", self.root)
        return outside
