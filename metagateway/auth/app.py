"""
The gateway's own endpoints, as a Klein app: logins, guest tokens, sessions,
logout and ``/health`` (:ref:`contract-endpoints`).
"""

from __future__ import annotations

import json
from typing import Any, Container, Iterator, Mapping, Optional

from klein import Klein

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from metagateway.auth.assertion import AssertionSigner, jwks_document
from metagateway.auth.github import GitHubSignIn
from metagateway.auth.passwords import BadParameters, PasswordChecks
from metagateway.auth.throttle import LoginThrottle, Throttled
from metagateway.auth.tokens import (
    Claims,
    InvalidToken,
    TokenAuthority,
    request_token,
)
from metagateway.credentials.interfaces import (
    MIN_USERNAME_CHARS,
    ICredentialStore,
    StoreUnavailable,
    UnknownAccount,
    is_valid_username,
)
from metagateway.errors import (
    GatewayError,
    error_response,
    internal_error,
    payload_too_large,
    state_unavailable,
    store_unavailable,
    write_json,
)
from metagateway.observability.accesslog import note_subject
from metagateway.observability.tracing import call_traced, child_span, end_span
from metagateway.state.interfaces import StateUnavailable

log = Logger()

#: The access-log and metrics labels of the endpoints whose label is not
#: plain ``AUTH``, by view (Klein endpoint) name: (route label, login kind).
VIEW_LABELS: Mapping[str, tuple[str, Optional[str]]] = {
    "health": ("HEALTH", None),
    "jwks": ("JWKS", None),
    "login": ("AUTH", "password"),
    "core_login": ("AUTH", "password"),
    "github_login": ("AUTH", "github"),
}


def read_json_body(request: IRequest, limit: int, route: str) -> Optional[Any]:
    """
    Read and parse a request's JSON body.

    :param limit: the largest body accepted, in bytes.
    :param route: the route errors are reported under.
    :return: the parsed value, or ``None`` if the body is not JSON.
    :raises GatewayError: ``413 PAYLOAD_TOO_LARGE`` past ``limit``.
    """
    declared = request.getHeader(b"content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise payload_too_large(route, limit)
    content = request.content
    if content is None:
        return None
    content.seek(0)
    data = content.read(limit + 1)
    if len(data) > limit:
        raise payload_too_large(route, limit)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        # RecursionError: nesting deeper than the parser goes (such as
        # 64 KiB of "["), unreadable like any other bad JSON.
        return None


def client_address(request: IRequest, trusted_proxies: Container[str]) -> str:
    """
    The client's address: the peer's, or, when the peer is a trusted proxy,
    the nearest untrusted address in ``X-Forwarded-For``.

    :param trusted_proxies: the trusted proxies' addresses (a
        :class:`TrustedProxies`, or any container of address strings).
    """
    peer = request.getClientAddress()
    host = getattr(peer, "host", None) or "unix"
    if host not in trusted_proxies:
        return str(host)
    forwarded = request.requestHeaders.getRawHeaders(b"x-forwarded-for") or []
    hops = [
        hop.strip().decode("latin-1")
        for value in forwarded
        for hop in value.split(b",")
        if hop.strip()
    ]
    for hop in reversed(hops):
        if hop not in trusted_proxies:
            return str(hop)
    return str(host)


def login_answer(request: IRequest, token: str, username: str, role: str) -> bytes:
    """
    A login's answer: ``200 {"success":true,"token","user":{"username","role"}}``.
    """
    return write_json(
        request,
        200,
        {"success": True, "token": token, "user": {"username": username, "role": role}},
    )


def session_answer(request: IRequest, claims: Claims, token: str) -> bytes:
    """
    A session's answer, shaped as a login's, for the user ``claims`` name.
    """
    return login_answer(request, token, claims.project_id, claims.role)


def _plain_rules(app: Klein) -> Iterator[Any]:
    """
    The rules of ``app``, each checked to name its methods and a fixed path.

    :raises ValueError: for a rule taking any method, or with variable
        parts (``/x/<id>``): the gateway dispatches its own endpoints by
        exact method and path.
    """
    for rule in app.url_map.iter_rules():
        if rule.methods is None or rule.arguments:
            raise ValueError(
                "route %s must name its methods and have no variable part"
                % (rule.rule,)
            )
        yield rule


def own_endpoints(app: Klein) -> Iterator[tuple[bytes, bytes]]:
    """
    The ``(method, path)`` pairs ``app`` answers, from its routes; the path
    without its leading ``/`` (``b"core/session"``), as
    :class:`~metagateway.http.site.GatewayResource` matches them.

    werkzeug adds ``HEAD`` to every rule naming ``GET``; that ``HEAD`` is
    left out, so that ``HEAD`` on a ``/core`` endpoint is proxied like any
    other method the endpoint does not answer. A route that answers
    ``HEAD`` itself names it in a rule of its own (``/health``).

    :raises ValueError: see :func:`_plain_rules`.
    """
    for rule in _plain_rules(app):
        path = rule.rule.lstrip("/").encode("ascii")
        for method in sorted(rule.methods):
            if method == "HEAD" and "GET" in rule.methods:
                continue
            yield method.encode("ascii"), path


def endpoint_labels(app: Klein) -> dict[bytes, tuple[str, Optional[str]]]:
    """
    The access-log and metrics label of each of ``app``'s paths whose view
    is in :data:`VIEW_LABELS` (the others are labelled ``AUTH``), keyed by
    path as in :func:`own_endpoints`.

    :raises ValueError: see :func:`_plain_rules`.
    """
    return {
        rule.rule.lstrip("/").encode("ascii"): VIEW_LABELS[rule.endpoint]
        for rule in _plain_rules(app)
        if rule.endpoint in VIEW_LABELS
    }


class AuthApp:
    """
    The Klein app answering the gateway's own endpoints.

    :param tokens: issues and verifies tokens.
    :param store: the credential store.
    :param throttle: the failed-login counters.
    :param clock: the time source for ``/health``.
    :param auth_max_body: the largest body read, in bytes.
    :param trusted_proxies: peers whose ``X-Forwarded-For`` is believed.
    :param github: the GitHub code exchange for ``/core/auth/github``;
        without it that endpoint answers ``500 GITHUB_NOT_CONFIGURED``.
    :param passwords: checks passwords (and holds the decoys unknown
        usernames are checked against); this app's own if omitted, checking
        on the calling thread (so gateways in one process share no decoys).
    :param assertions: signs the assertions upstreams get, and holds the
        keys ``/.well-known/jwks.json`` publishes; without it the JWKS is
        empty.
    """

    app = Klein()

    def __init__(
        self,
        tokens: TokenAuthority,
        store: ICredentialStore,
        throttle: LoginThrottle,
        clock: IReactorTime,
        auth_max_body: int = 64 * 1024,
        trusted_proxies: Container[str] = (),
        github: Optional[GitHubSignIn] = None,
        passwords: Optional[PasswordChecks] = None,
        assertions: Optional[AssertionSigner] = None,
    ) -> None:
        self.tokens = tokens
        self.assertions = assertions
        self.store = store
        self.throttle = throttle
        self.clock = clock
        self.auth_max_body = auth_max_body
        self.trusted_proxies = trusted_proxies
        self.github = github
        if passwords is None:
            passwords = PasswordChecks()
        self.passwords = passwords
        self.decoys = passwords.decoys

    @app.handle_errors(GatewayError)
    def _gateway_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, GatewayError)
        return error_response(request, error)

    @app.handle_errors(Exception)
    def _unexpected(self, request: IRequest, failure: Failure) -> bytes:
        log.failure(
            "Unexpected error answering {path}",
            failure,
            path=request.path.decode("latin-1"),
        )
        # Klein has moved the matched segments to the end of prepath:
        # ``auth/login`` and ``auth/guest`` report under AUTH, the rest
        # (``core/auth/login`` included) under CORE.
        matched = request.prepath
        auth = matched[-2:-1] == [b"auth"] and matched[-3:-2] != [b"core"]
        return error_response(request, internal_error("AUTH" if auth else "CORE"))

    # HEAD in a rule of its own: see own_endpoints.
    @app.route("/health", methods=["GET"])
    @app.route("/health", methods=["HEAD"])
    def health(self, request: IRequest) -> bytes:
        return write_json(
            request,
            200,
            {
                "status": "ok",
                "service": "gateway",
                "timestamp": int(self.clock.seconds() * 1000),
            },
        )

    @app.route("/.well-known/jwks.json", methods=["GET"])
    def jwks(self, request: IRequest) -> bytes:
        """
        The public keys assertions are signed with (:ref:`contract-assertions`).
        """
        request.setHeader(b"Cache-Control", b"max-age=300")
        return write_json(request, 200, jwks_document(self.assertions))

    @app.route("/auth/login", methods=["POST"])
    async def login(self, request: IRequest) -> bytes:
        return await self._login(request, "AUTH")

    @app.route("/core/auth/login", methods=["POST"])
    async def core_login(self, request: IRequest) -> bytes:
        return await self._login(request, "CORE")

    async def _login(self, request: IRequest, route: str) -> bytes:
        body = read_json_body(request, self.auth_max_body, route)
        username = body.get("username") if isinstance(body, dict) else None
        password = body.get("password") if isinstance(body, dict) else None
        if (
            not isinstance(username, str)
            or not isinstance(password, str)
            or not username
            or not password
        ):
            raise GatewayError(
                400,
                "INVALID_REQUEST",
                "Username and password are required",
                route,
            )
        address = client_address(request, self.trusted_proxies)
        try:
            # Counted as a failure from here on, unless it succeeds.
            attempt = await self.throttle.start(username, address)
        except StateUnavailable:
            log.warn("Shared state store unavailable during login")
            raise state_unavailable(route) from None
        except Throttled as e:
            raise GatewayError(
                429,
                "TOO_MANY_ATTEMPTS",
                "Too many failed login attempts",
                route,
                {"retryAfter": e.retry_after},
                {b"Retry-After": b"%d" % (e.retry_after,)},
            ) from None
        record = None
        if is_valid_username(username):
            span = child_span(request, "credentials.lookup")
            try:
                record = await call_traced(
                    request, span, lambda: self.store.lookup(username)
                )
            except UnknownAccount:
                record = None
            except StoreUnavailable as e:
                attempt.abandoned()
                log.warn(
                    "Credential store unavailable during login: {why}",
                    why=str(e),
                )
                raise store_unavailable(route) from None
            finally:
                end_span(span)
        span = child_span(request, "password.check")
        try:
            matched = await self.passwords.check(record, password)
        except BadParameters:
            attempt.abandoned()
            log.warn("Unusable password parameters in an account record")
            raise store_unavailable(route) from None
        finally:
            end_span(span)
        if (
            record is None
            or not matched
            # The record's own name becomes projectId, which needs as many
            # characters as a login name does.
            or len(record.username) < MIN_USERNAME_CHARS
        ):
            raise GatewayError(401, "INVALID_CREDENTIALS", "Invalid credentials", route)
        attempt.succeeded()
        note_subject(request, record.username)
        token = self.tokens.issue(record.username, route, [record.role], "production")
        return login_answer(request, token, record.username, record.role)

    @app.route("/core/auth/github", methods=["POST"])
    async def github_login(self, request: IRequest) -> bytes:
        body = read_json_body(request, self.auth_max_body, "CORE")
        code = body.get("code") if isinstance(body, dict) else None
        if not isinstance(code, str) or not code:
            raise GatewayError(400, "INVALID_REQUEST", "Missing GitHub code", "CORE")
        if self.github is None or not self.github.configured:
            raise GatewayError(
                500, "GITHUB_NOT_CONFIGURED", "GitHub sign-in is not configured", "CORE"
            )
        redirect_uri = body.get("redirectUri") if isinstance(body, dict) else None
        answer = await self.github.sign_in(
            code, redirect_uri if isinstance(redirect_uri, str) else None
        )
        return write_json(request, 200, answer)

    @app.route("/auth/guest", methods=["POST"])
    def guest(self, request: IRequest) -> bytes:
        body = read_json_body(request, self.auth_max_body, "AUTH")
        wanted = body.get("route") if isinstance(body, dict) else None
        route = "BUILD"
        if isinstance(wanted, str) and wanted.upper() in self.tokens.routes:
            route = wanted.upper()
        token = self.tokens.issue("guest", route, ["guest"], "staging")
        return write_json(
            request, 200, {"success": True, "token": token, "route": route}
        )

    def _session_claims(self, request: IRequest, code: str, message: str) -> Claims:
        """
        The claims of the request's token, when it is valid for route
        ``CORE``: its ``route`` claim is ``CORE`` or ``AUTH`` (a token for
        another route is as bad as a forged one here, or a refresh would
        widen it to a ``CORE`` token).

        :raises GatewayError: ``401`` without a token, ``403`` with a bad
            one, each with ``code`` and ``message``.
        """
        token = request_token(request.requestHeaders)
        if token is None:
            raise GatewayError(401, code, message, "CORE")
        try:
            claims = self.tokens.verify(token)
        except InvalidToken:
            raise GatewayError(403, code, message, "CORE") from None
        if not claims.may_reach("CORE"):
            raise GatewayError(403, code, message, "CORE")
        note_subject(request, claims.project_id)
        return claims

    @app.route("/core/session", methods=["GET"])
    def session(self, request: IRequest) -> bytes:
        claims = self._session_claims(
            request, "INVALID_SESSION", "Session invalid or expired"
        )
        token = request_token(request.requestHeaders)
        assert token is not None
        return session_answer(request, claims, token)

    @app.route("/core/session/refresh", methods=["POST"])
    def refresh(self, request: IRequest) -> bytes:
        claims = self._session_claims(
            request, "REFRESH_FAILED", "Unable to refresh session"
        )
        token = self.tokens.issue(
            claims.project_id, "CORE", [claims.role], claims.environment
        )
        return session_answer(request, claims, token)

    @app.route("/core/logout", methods=["POST"])
    def logout(self, request: IRequest) -> bytes:
        """
        Revoke the bearer token sent, if it is valid, and answer ``200``.

        Any valid token is revoked, whatever route it was issued for:
        revoking can only take access away, and a client holding only a
        ``BUILD`` token can still end its session.
        """
        token = request_token(request.requestHeaders)
        if token is not None:
            try:
                claims = self.tokens.verify(token)
            except InvalidToken:
                pass
            else:
                self.tokens.revoke(claims)
        return write_json(request, 200, {"success": True})
