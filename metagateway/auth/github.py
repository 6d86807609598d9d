"""
Signing in with GitHub: the OAuth code exchange behind
``POST /core/auth/github`` (:ref:`contract-endpoints`).

The code a browser brought back from GitHub is exchanged at the token URL
for an access token, which reads ``{GITHUB_API_URL}/user``; the GitHub login
then gets a gateway token for the ``CORE`` route. Neither the client secret
nor the access token is ever logged or answered.
"""

from __future__ import annotations

import json
from typing import Any, Coroutine, TypeVar

from treq.client import HTTPClient

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.client import ResponseFailed
from twisted.web.http_headers import Headers

from metagateway.auth.tokens import TokenAuthority
from metagateway.config import GitHubSettings
from metagateway.credentials.interfaces import is_valid_username
from metagateway.errors import GatewayError
from metagateway.http.client import read_limited, timed_out, was_cancelled

log = Logger()

_T = TypeVar("_T")

#: The ``User-Agent`` GitHub's API requires.
USER_AGENT = b"metagateway"

#: The largest GitHub answer read, in bytes.
MAX_RESPONSE_BYTES = 256 * 1024

#: The role a GitHub sign-in holds (:ref:`contract-endpoints`).
GITHUB_ROLE = "admin"


class GitHubFailure(Exception):
    """
    GitHub did not give what the exchange needs; the message says what, and
    never holds a secret or a token.
    """


def failed() -> GatewayError:
    """
    The answer to any failure of the exchange.
    """
    return GatewayError(
        502, "GITHUB_AUTH_FAILED", "GitHub authentication failed", "CORE"
    )


def _describe(error: BaseException) -> str:
    """
    A loggable description of a failure of the exchange: its type and
    message (no request detail, hence no secret or token).
    """
    if isinstance(error, ResponseFailed) and error.reasons:
        error = error.reasons[0].value
    if isinstance(error, TimeoutError):
        return "timed out"
    text = str(error)
    name = error.__class__.__name__
    return f"{name}: {text[:200]}" if text else name


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise GitHubFailure(f"{what} is not JSON") from None
    if not isinstance(document, dict):
        raise GitHubFailure(f"{what} is not a JSON object")
    return document


class GitHubSignIn:
    """
    Exchanges GitHub OAuth codes for gateway tokens.

    :param settings: the client id and secret and GitHub's URLs.
    :param client: the HTTP client GitHub is called with.
    :param clock: the clock for the timeouts.
    :param tokens: issues the gateway token.
    :param timeout: seconds allowed for each of the two GitHub calls,
        body included.
    """

    def __init__(
        self,
        settings: GitHubSettings,
        client: HTTPClient,
        clock: IReactorTime,
        tokens: TokenAuthority,
        timeout: float = 30.0,
    ) -> None:
        self.settings = settings
        self.client = client
        self.clock = clock
        self.tokens = tokens
        self.timeout = timeout

    @property
    def configured(self) -> bool:
        """
        Whether the client id and secret are both set.
        """
        return bool(self.settings.client_id and self.settings.client_secret)

    def sign_in(
        self, code: str, redirect_uri: str | None = None
    ) -> Deferred[dict[str, Any]]:
        """
        Exchange ``code`` and answer as a login.

        :param code: the OAuth code the browser brought back.
        :param redirect_uri: the redirect URI the code was issued for, if any.
        :return: a Deferred firing with the answer document
            ``{"success", "token", "user"}``; it fails with
            :class:`~metagateway.errors.GatewayError`: ``500
            GITHUB_NOT_CONFIGURED`` without client id or secret, ``502
            GITHUB_AUTH_FAILED`` for any failure of the exchange.
        """
        return Deferred.fromCoroutine(self._sign_in(code, redirect_uri))

    async def _sign_in(self, code: str, redirect_uri: str | None) -> dict[str, Any]:
        if not self.configured:
            raise GatewayError(
                500,
                "GITHUB_NOT_CONFIGURED",
                "GitHub sign-in is not configured",
                "CORE",
            )
        try:
            access_token = await self._within(self._exchange(code, redirect_uri))
            user = await self._within(self._user(access_token))
        except Exception as e:
            if was_cancelled(e):
                # The client went away: nothing to answer, nothing to log.
                raise CancelledError() from None
            log.warn("GitHub sign-in failed: {why}", why=_describe(e))
            raise failed() from None
        login = user["login"]
        token = self.tokens.issue(login, "CORE", [GITHUB_ROLE], "production")
        return {
            "success": True,
            "token": token,
            "user": {
                "username": login,
                "role": GITHUB_ROLE,
                "name": user.get("name") or login,
                "avatarUrl": user.get("avatar_url"),
                "githubUrl": user.get("html_url"),
            },
        }

    def _within(self, work: Coroutine[Any, Any, _T]) -> Deferred[_T]:
        """
        Run ``work``, cancelled with a ``TimeoutError`` after
        :attr:`timeout` seconds.
        """
        return Deferred.fromCoroutine(work).addTimeout(
            self.timeout, self.clock, timed_out
        )

    async def _exchange(self, code: str, redirect_uri: str | None) -> str:
        """
        Trade the code for an access token.

        :raises GitHubFailure: when GitHub answers without one.
        """
        payload = {
            "client_id": self.settings.client_id,
            "client_secret": self.settings.client_secret,
            "code": code,
        }
        if redirect_uri:
            payload["redirect_uri"] = redirect_uri
        document = await self._ask(
            "POST",
            self.settings.token_url,
            "token",
            {
                b"Accept": [b"application/json"],
                b"Content-Type": [b"application/json"],
            },
            json.dumps(payload).encode("utf-8"),
        )
        access_token = document.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            error = document.get("error")
            reason = error if isinstance(error, str) else "no access_token"
            raise GitHubFailure(f"token endpoint refused the code: {reason[:100]}")
        return access_token

    async def _user(self, access_token: str) -> dict[str, Any]:
        """
        Read the signed-in user.

        :raises GitHubFailure: when GitHub answers without a usable login.
        """
        user = await self._ask(
            "GET",
            self.settings.api_url.rstrip("/") + "/user",
            "user",
            {
                b"Accept": [b"application/vnd.github+json"],
                b"Authorization": [b"Bearer " + access_token.encode("utf-8")],
            },
        )
        login = user.get("login")
        if not isinstance(login, str) or not is_valid_username(login):
            raise GitHubFailure("user answer has no login that can hold a token")
        for field in ("name", "avatar_url", "html_url"):
            if not isinstance(user.get(field), (str, type(None))):
                user[field] = None
        return user

    async def _ask(
        self,
        method: str,
        url: str,
        endpoint: str,
        headers: dict[bytes, list[bytes]],
        data: bytes | None = None,
    ) -> dict[str, Any]:
        """
        One call to GitHub (no redirect followed, the answer read up to
        :data:`MAX_RESPONSE_BYTES`).

        :param endpoint: ``token`` or ``user``, for the failures.
        :param headers: the headers to send, besides ``User-Agent``.
        :return: the answer's JSON object.
        :raises GitHubFailure: for an answer other than 2xx, or one that is
            not a JSON object.
        """
        response = await self.client.request(
            method,
            url,
            data=data,
            headers=Headers({**headers, b"User-Agent": [USER_AGENT]}),
            allow_redirects=False,
            unbuffered=True,
        )
        body = await read_limited(response, MAX_RESPONSE_BYTES)
        if not 200 <= response.code < 300:
            raise GitHubFailure(f"{endpoint} endpoint answered {response.code}")
        return _json_object(body, f"{endpoint} answer")
