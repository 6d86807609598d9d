"""
Issuing and verifying the gateway's HS256 tokens (:ref:`contract-tokens`).

PyJWT checks the signature, the algorithm, ``iss`` and ``aud``; the time
claims are checked here against an injected clock, with the configured
leeway, so tests need no sleeps.

Each token names its signing secret in a ``kid`` header (a one-way
fingerprint of the secret); former secrets are accepted for verification
only, so a secret can be rotated without logging anyone out. A token whose
``kid`` names a secret held here is checked against that secret only; one
without ``kid`` (as the original gateway issued) or with a ``kid`` naming no
secret held here is tried against every secret.

Revoked tokens are remembered (by default) in a bounded
:class:`~metagateway.state.revocations.RevocationList` until
they expire. When it is full it never forgets a revocation silently: it
refuses more tokens rather than fewer (see :class:`RevocationList`).
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import jwt

from twisted.web.http_headers import Headers

from metagateway.http.names import AUTHORIZATION
from metagateway.http.twisted_internals import header_map
from metagateway.routes import TOKEN_ROUTES

# Re-exported: they lived here before the state layer held them.
from metagateway.state.interfaces import IRevocationList as IRevocationList
from metagateway.state.revocations import RevocationList as RevocationList

#: The route names a token may carry, whatever the routes.
ROUTES = TOKEN_ROUTES

ISSUER = "gateway.metacogna.ai"
AUDIENCE = "metacogna-clients"
LIFETIME = 3600

#: How many verified tokens are remembered, to skip re-verification.
_VERIFIED_CACHE_SIZE = 4096


class InvalidToken(Exception):
    """
    The token is not valid: bad signature, wrong algorithm, expired,
    revoked, or claims of the wrong shape.
    """


@dataclass(frozen=True)
class Claims:
    """
    The verified claims of a token.

    :ivar token_id: what revocation remembers the token by: its ``jti``, or
        for a token without one (the original format) a digest of its
        signed part.
    :ivar issued: its ``iat``; ``-inf`` without one (a user revocation
        refuses it).
    """

    project_id: str
    route: str
    scopes: tuple[str, ...]
    environment: str
    issued_by: str
    expires: float
    jti: Optional[str]
    token_id: str = ""
    issued: float = -math.inf

    def may_reach(self, route: str) -> bool:
        """
        Whether this token may reach ``route``: its own, ``CORE`` or ``AUTH``.
        """
        return self.route == route or self.route in ("CORE", "AUTH")

    @property
    def role(self) -> str:
        """
        The role a session reports: the first scope, else ``admin``.
        """
        return self.scopes[0] if self.scopes else "admin"


def key_id(secret: str) -> str:
    """
    The ``kid`` naming ``secret``: a short one-way fingerprint of it.

    It tells nothing about the secret that a signed token does not already
    tell: both are one-way functions of it.
    """
    digest = hashlib.sha256(b"metagateway-kid\0" + secret.encode("utf-8"))
    return digest.hexdigest()[:16]


class TokenAuthority:
    """
    Issues and verifies tokens.

    :param secret: the current signing key.
    :param now: returns the current POSIX time.
    :param previous_secrets: former keys, accepted for verification only.
    :param clock_skew: seconds of leeway on ``exp``, ``iat``, ``nbf``.
    :param revocations: the revoked tokens; a fresh
        :class:`RevocationList` if omitted.
    :param route_names: route names a token may carry besides
        :data:`ROUTES` (a configuration file's, :ref:`contract-config-file`).

    :ivar routes: every route name a token may carry.
    """

    def __init__(
        self,
        secret: str,
        now: Callable[[], float],
        previous_secrets: Iterable[str] = (),
        clock_skew: float = 0.0,
        revocations: Optional[IRevocationList] = None,
        route_names: Iterable[str] = (),
    ) -> None:
        self._secret = secret
        self._kid = key_id(secret)
        self._now = now
        self._skew = clock_skew
        self._previous = tuple(previous_secrets)
        #: Replaced secrets, by kid: (secret, verified until).
        self._retired: dict[str, tuple[str, float]] = {}
        self._keys = self._key_table()
        self.routes = frozenset(ROUTES).union(route_names)
        self.revocations: IRevocationList = (
            RevocationList(now) if revocations is None else revocations
        )
        self._verified: OrderedDict[str, Claims] = OrderedDict()

    def _key_table(self) -> dict[str, str]:
        """
        Every secret that verifies, by kid: the current one, the previous
        ones, and those replaced less than a token's lifetime ago.
        """
        keys = {self._kid: self._secret}
        for old in self._previous:
            if old:
                keys.setdefault(key_id(old), old)
        now = self._now()
        for kid, (old, until) in list(self._retired.items()):
            if until <= now:
                del self._retired[kid]
            else:
                keys.setdefault(kid, old)
        return keys

    def rotate(
        self,
        secret: str,
        previous_secrets: Iterable[str] = (),
        route_names: Iterable[str] = (),
    ) -> None:
        """
        Sign with ``secret`` from now on (:ref:`contract-config-file`'s reload). The
        secret it replaces still verifies the tokens it signed until they expire
        (their lifetime plus the leeway); ``previous_secrets`` replace the
        former ones, and ``route_names`` the extra route names.
        """
        if secret != self._secret:
            self._retired[self._kid] = (
                self._secret,
                self._now() + LIFETIME + self._skew,
            )
            self._retired.pop(key_id(secret), None)
            self._secret = secret
            self._kid = key_id(secret)
        self._previous = tuple(previous_secrets)
        self._keys = self._key_table()
        self.routes = frozenset(ROUTES).union(route_names)
        # Tokens verified with a secret no longer held must be checked again.
        self._verified.clear()

    @property
    def kid(self) -> str:
        """
        The ``kid`` of the current signing secret.
        """
        return self._kid

    def issue(
        self,
        project_id: str,
        route: str,
        scopes: Iterable[str],
        environment: str = "production",
    ) -> str:
        """
        Sign a new token.

        :param project_id: the user name, or ``guest``.
        :param route: one of :data:`ROUTES`.
        :param scopes: the token's scopes.
        :param environment: ``production`` or ``staging``.
        :return: the compact JWT.
        """
        issued = int(self._now())
        payload = {
            "projectId": project_id,
            "route": route,
            "scopes": list(scopes),
            "environment": environment,
            "issuedBy": ISSUER,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": project_id,
            "iat": issued,
            "exp": issued + LIFETIME,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(
            payload, self._secret, algorithm="HS256", headers={"kid": self._kid}
        )

    def verify(self, token: str) -> Claims:
        """
        Check a token and return its claims.

        A token seen before is not decoded again, but its expiry and its
        revocation are checked on every call.

        :raises InvalidToken: if it is not valid now.
        """
        if self._retired:
            self._expire_retired()
        claims = self._verified.get(token)
        if claims is None:
            claims = self._decode(token)
            self._verified[token] = claims
            if len(self._verified) > _VERIFIED_CACHE_SIZE:
                self._verified.popitem(last=False)
        else:
            self._verified.move_to_end(token)
        until = claims.expires + self._skew
        if until <= self._now():
            self._verified.pop(token, None)
            raise InvalidToken("expired")
        if self.revocations.is_revoked(
            claims.token_id, claims.project_id, until, claims.issued
        ):
            raise InvalidToken("revoked")
        return claims

    def _expire_retired(self) -> None:
        """
        Forget the replaced secrets whose tokens have all expired.
        """
        now = self._now()
        if any(until <= now for _, until in self._retired.values()):
            self._keys = self._key_table()
            # Tokens verified with it must not be taken from the cache.
            self._verified.clear()

    def revoke(self, claims: Claims) -> None:
        """
        Revoke the token with ``claims`` until it expires (plus the leeway).
        """
        self.revocations.revoke(
            claims.token_id, claims.project_id, claims.expires + self._skew
        )

    def _decode(self, token: str) -> Claims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise InvalidToken("malformed") from None
        # PyJWT has refused a kid that is not a string. A kid naming a
        # secret held here is checked against that secret only; without
        # one, or with one naming no secret held here, the signature alone
        # decides (:ref:`contract-tokens`), so every secret is tried.
        kid = header.get("kid")
        if isinstance(kid, str) and kid in self._keys:
            candidates = [self._keys[kid]]
        else:
            candidates = list(self._keys.values())
        payload = None
        for key in candidates:
            try:
                payload = jwt.decode(
                    token,
                    key,
                    algorithms=["HS256"],
                    audience=AUDIENCE,
                    issuer=ISSUER,
                    options={
                        "require": ["exp", "iss", "aud"],
                        "verify_exp": False,
                        "verify_iat": False,
                        "verify_nbf": False,
                    },
                )
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.InvalidTokenError:
                raise InvalidToken("invalid") from None
        if payload is None:
            raise InvalidToken("bad signature")
        return self._shape(payload, token)

    def _shape(self, payload: dict[str, Any], token: str) -> Claims:
        now = self._now()
        times = {}
        for name in ("exp", "iat", "nbf"):
            # exp is required; iat and nbf are optional, but a present iat
            # must be a number (a null nbf counts as absent).
            if name != "exp" and name not in payload:
                continue
            value = payload.get(name)
            if value is None and name == "nbf":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidToken("time claim is not a number")
            try:
                times[name] = float(value)
            except OverflowError:
                raise InvalidToken("time claim out of range") from None
            if not math.isfinite(times[name]):
                raise InvalidToken("time claim out of range")
        if times["exp"] + self._skew <= now:
            raise InvalidToken("expired")
        if "iat" in times and times["iat"] - self._skew > now:
            raise InvalidToken("issued in the future")
        if "nbf" in times and times["nbf"] - self._skew > now:
            raise InvalidToken("not yet valid")
        project_id = payload.get("projectId")
        if not isinstance(project_id, str) or len(project_id) < 4:
            raise InvalidToken("bad projectId")
        route = payload.get("route")
        if not isinstance(route, str) or route not in self.routes:
            raise InvalidToken("bad route")
        scopes = payload.get("scopes", [])
        if not isinstance(scopes, list) or not all(
            isinstance(s, str) and s for s in scopes
        ):
            raise InvalidToken("bad scopes")
        environment = payload.get("environment", "production")
        if not isinstance(environment, str) or environment not in (
            "staging",
            "production",
        ):
            raise InvalidToken("bad environment")
        issued_by = payload.get("issuedBy", ISSUER)
        if not isinstance(issued_by, str):
            raise InvalidToken("bad issuedBy")
        jti = payload.get("jti")
        if jti is not None and (not isinstance(jti, str) or not jti):
            raise InvalidToken("bad jti")
        if jti is not None:
            token_id = "jti:" + jti
        else:
            # The signed part cannot be re-encoded without breaking the
            # signature (the signature's own base64 can be), so it names
            # the token however its signature segment is spelled. Tokens
            # with the same header and claims are the same credential.
            signed = token.rsplit(".", 1)[0].encode("ascii")
            token_id = "sig:" + hashlib.sha256(signed).hexdigest()
        return Claims(
            project_id=project_id,
            route=route,
            scopes=tuple(scopes),
            environment=environment,
            issued_by=issued_by,
            expires=times["exp"],
            jti=jti,
            token_id=token_id,
            issued=times.get("iat", -math.inf),
        )


def request_token(headers: Headers) -> Optional[str]:
    """
    The bearer token of a request: that of its one ``Authorization``
    header. ``None`` when there is none, when it is not a usable Bearer
    value, or when there are several (ambiguous credentials are no
    credentials, whichever of them is a good token).
    """
    values = header_map(headers).get(AUTHORIZATION)
    if values is None or len(values) != 1:
        return None
    return bearer_token(values[0])


def bearer_token(authorization: Optional[bytes]) -> Optional[str]:
    """
    The token in an ``Authorization: Bearer …`` header value, if any.

    :param authorization: the raw header value, or ``None``.
    :return: the token text, or ``None`` when the header is absent, not
        Bearer, empty, or not ASCII.
    """
    if not authorization:
        return None
    scheme, _, rest = authorization.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    token = rest.strip()
    if not token:
        return None
    try:
        return token.decode("ascii")
    except UnicodeDecodeError:
        return None
