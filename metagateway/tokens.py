"""
Issuing and verifying the gateway's HS256 tokens (CONTRACT §3).

PyJWT checks the signature, the algorithm, ``iss`` and ``aud``; the time
claims are checked here against an injected clock, with the configured
leeway, so tests need no sleeps.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import jwt

#: The route names a token may carry.
ROUTES = ("AUTH", "KV", "BUILD", "CORE", "BASE", "WEBHOOK")

ISSUER = "gateway.metacogna.ai"
AUDIENCE = "metacogna-clients"
LIFETIME = 3600

#: How many verified tokens are remembered, to skip re-verification.
_VERIFIED_CACHE_SIZE = 4096

#: How many revoked token ids are remembered at most.
_REVOKED_LIMIT = 100_000


class InvalidToken(Exception):
    """
    The token is not valid: bad signature, wrong algorithm, expired,
    revoked, or claims of the wrong shape.
    """


@dataclass(frozen=True)
class Claims:
    """
    The verified claims of a token.
    """

    project_id: str
    route: str
    scopes: tuple[str, ...]
    environment: str
    issued_by: str
    expires: float
    jti: Optional[str]

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
    """
    return hashlib.sha256(b"metagateway-kid\0" + secret.encode("utf-8")).hexdigest()[:16]


class RevocationList:
    """
    Token ids revoked until their expiry, held in memory and bounded.

    The interface is small (``revoke``, ``is_revoked``) so a shared store can
    stand in for it where several gateways must agree.
    """

    def __init__(self, now: Callable[[], float], limit: int = _REVOKED_LIMIT) -> None:
        self._now = now
        self._limit = limit
        self._revoked: OrderedDict[str, float] = OrderedDict()

    def revoke(self, jti: str, expires: float) -> None:
        """
        Refuse the token ``jti`` until ``expires`` (POSIX seconds).
        """
        self._purge()
        self._revoked[jti] = expires
        self._revoked.move_to_end(jti)
        while len(self._revoked) > self._limit:
            # Dropping the oldest entry is safe only for expired ones; past
            # the bound we drop the one closest to its own expiry.
            self._revoked.popitem(last=False)

    def is_revoked(self, jti: Optional[str]) -> bool:
        """
        Whether ``jti`` is revoked now.
        """
        if jti is None:
            return False
        expires = self._revoked.get(jti)
        return expires is not None and expires > self._now()

    def _purge(self) -> None:
        now = self._now()
        for jti in [j for j, e in self._revoked.items() if e <= now][:1000]:
            del self._revoked[jti]


class TokenAuthority:
    """
    Issues and verifies tokens.

    :param secret: the current signing key.
    :param previous_secrets: former keys, accepted for verification only.
    :param now: returns the current POSIX time.
    :param clock_skew: seconds of leeway on ``exp``, ``iat``, ``nbf``.
    :param revocations: the revoked token ids; a fresh list if omitted.
    """

    def __init__(
        self,
        secret: str,
        now: Callable[[], float],
        previous_secrets: Iterable[str] = (),
        clock_skew: float = 0.0,
        revocations: Optional[RevocationList] = None,
    ) -> None:
        self._secret = secret
        self._kid = key_id(secret)
        self._now = now
        self._skew = clock_skew
        self._keys = {self._kid: secret}
        for old in previous_secrets:
            self._keys.setdefault(key_id(old), old)
        self.revocations = revocations or RevocationList(now)
        self._verified: OrderedDict[str, Claims] = OrderedDict()

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

        :raises InvalidToken: if it is not valid now.
        """
        claims = self._verified.get(token)
        if claims is None:
            claims = self._decode(token)
            self._verified[token] = claims
            if len(self._verified) > _VERIFIED_CACHE_SIZE:
                self._verified.popitem(last=False)
        if claims.expires + self._skew <= self._now():
            self._verified.pop(token, None)
            raise InvalidToken("expired")
        if self.revocations.is_revoked(claims.jti):
            raise InvalidToken("revoked")
        return claims

    def revoke(self, claims: Claims) -> None:
        """
        Revoke the token with ``claims`` until it expires.
        """
        if claims.jti is not None:
            self.revocations.revoke(claims.jti, claims.expires + self._skew)

    def _decode(self, token: str) -> Claims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise InvalidToken("malformed") from None
        kid = header.get("kid")
        if kid is None:
            candidates = list(self._keys.values())
        elif isinstance(kid, str) and kid in self._keys:
            candidates = [self._keys[kid]]
        else:
            raise InvalidToken("unknown key id")
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
                        "require": ["exp", "iat", "iss", "aud"],
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
        return self._shape(payload)

    def _shape(self, payload: dict[str, Any]) -> Claims:
        now = self._now()
        exp, iat, nbf = payload.get("exp"), payload.get("iat"), payload.get("nbf")
        for value in (exp, iat) + ((nbf,) if nbf is not None else ()):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidToken("time claim is not a number")
        if exp + self._skew <= now:  # type: ignore[operator]
            raise InvalidToken("expired")
        if iat - self._skew > now:  # type: ignore[operator]
            raise InvalidToken("issued in the future")
        if nbf is not None and nbf - self._skew > now:
            raise InvalidToken("not yet valid")
        project_id = payload.get("projectId")
        if not isinstance(project_id, str) or len(project_id) < 4:
            raise InvalidToken("bad projectId")
        route = payload.get("route")
        if route not in ROUTES:
            raise InvalidToken("bad route")
        scopes = payload.get("scopes", [])
        if not isinstance(scopes, list) or not all(
            isinstance(s, str) and s for s in scopes
        ):
            raise InvalidToken("bad scopes")
        environment = payload.get("environment", "production")
        if environment not in ("staging", "production"):
            raise InvalidToken("bad environment")
        issued_by = payload.get("issuedBy", ISSUER)
        if not isinstance(issued_by, str):
            raise InvalidToken("bad issuedBy")
        jti = payload.get("jti")
        if jti is not None and not isinstance(jti, str):
            raise InvalidToken("bad jti")
        return Claims(
            project_id=project_id,
            route=route,  # type: ignore[arg-type]
            scopes=tuple(scopes),
            environment=environment,
            issued_by=issued_by,
            expires=float(exp),  # type: ignore[arg-type]
            jti=jti,
        )


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
