"""
Verifying the gateway's assertion in a Python upstream (:ref:`contract-assertions`,
``docs/trusting.rst``).

Every request the gateway proxies carries ``X-Gateway-Assertion``, an
ES256 JWT signed with a key whose public half the gateway publishes at
``GET /.well-known/jwks.json``. An upstream that accepts only requests
with a valid assertion accepts only requests that came through the
gateway, and can believe the user (``sub``) and ``scopes`` it names.

This module needs PyJWT with its ``crypto`` extra, and nothing of
Twisted's unless :class:`TwistedAssertionVerifier` is used:

- :func:`verify_assertion` checks one assertion against a :class:`KeySet`
  (signature, ``alg`` ES256, ``iss``, ``aud``, ``exp``, ``method``,
  ``path``): no I/O.
- :class:`AssertionVerifier` fetches the JWKS (blocking, ``urllib``) and
  caches it, for WSGI (:meth:`AssertionVerifier.wsgi` wraps an app) or
  any synchronous code.
- :class:`TwistedAssertionVerifier` does the same with a Twisted
  ``IAgent``, returning ``Deferred``\\ s.

Both fetch the JWKS again when it is older than its ``max-age`` (the
gateway sends 300 s) or when an assertion names a ``kid`` they do not
know: at once the first time a ``kid`` is seen (a rotated key is then
taken without refusing anything), provided a second has passed since the
last fetch; a ``kid`` still unknown after that (a made-up one) fetches
at most once per ``refresh_interval`` seconds.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Iterable,
    Mapping,
    Optional,
    Union,
)
from urllib.parse import unquote

import jwt

if TYPE_CHECKING:  # pragma: no cover
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IReactorTime
    from twisted.web.iweb import IAgent, IRequest

#: The issuer every assertion names.
ISSUER = "gateway.metacogna.ai"

#: The header the assertion travels in.
HEADER = "X-Gateway-Assertion"

#: What an assertion must hold.
REQUIRED_CLAIMS = ("iss", "aud", "sub", "iat", "exp", "jti", "method", "path")

#: How long a fetched JWKS is used when its answer names no ``max-age``.
DEFAULT_MAX_AGE = 300.0

_MAX_AGE = re.compile(r"max-age\s*=\s*(\d+)", re.IGNORECASE)


class InvalidAssertion(Exception):
    """
    The request carries no assertion, or one that does not verify: the
    message says why (safe to log; it holds no token).
    """


@dataclass(frozen=True)
class Assertion:
    """
    A verified assertion.

    :ivar subject: the user the gateway verified (``sub``), or
        ``anonymous``.
    :ivar scopes: the user's scopes.
    :ivar route: the route the request was proxied for (``aud``).
    :ivar request_id: the request's ``X-Request-Id`` (``jti``).
    :ivar method: the method the gateway sent.
    :ivar path: the path the gateway sent, without the query.
    :ivar issued: ``iat``.
    :ivar expires: ``exp``.
    :ivar claims: every claim, as signed.
    """

    subject: str
    scopes: tuple[str, ...]
    route: str
    request_id: str
    method: str
    path: str
    issued: float
    expires: float
    claims: Mapping[str, Any]

    @property
    def anonymous(self) -> bool:
        """
        Whether the request carried no verified token.
        """
        return self.subject == "anonymous"


class KeySet:
    """
    The gateway's public keys, by ``kid``, from its JWKS document. Keys of
    another type or algorithm than EC P-256 / ES256 are left out.

    :param document: the parsed JWKS (``{"keys": [...]}``).
    :raises InvalidAssertion: when ``document`` is not a JWKS.
    """

    def __init__(self, document: Mapping[str, Any]) -> None:
        keys = document.get("keys") if isinstance(document, Mapping) else None
        if not isinstance(keys, list):
            raise InvalidAssertion("the JWKS document has no 'keys' list")
        self.keys: dict[str, Any] = {}
        for jwk in keys:
            if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
                continue
            if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
                continue
            if jwk.get("alg", "ES256") != "ES256":
                continue
            try:
                self.keys[jwk["kid"]] = jwt.PyJWK(jwk, "ES256").key
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError):
                continue

    @classmethod
    def from_json(cls, data: Union[bytes, str]) -> KeySet:
        """
        The key set in a JWKS document's text.

        :raises InvalidAssertion: when it is not JSON or not a JWKS.
        """
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise InvalidAssertion("the JWKS document is not JSON") from None
        return cls(document)

    def __contains__(self, kid: object) -> bool:
        return kid in self.keys


def assertion_kid(token: str) -> Optional[str]:
    """
    The ``kid`` an assertion names, unverified; ``None`` when it names none
    or is not a JWT.
    """
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError:
        return None
    return kid if isinstance(kid, str) else None


def same_path(signed: str, actual: str) -> bool:
    """
    Whether the path the gateway signed is the one received: equal as
    sent, or once percent-decoded (a WSGI server hands over ``PATH_INFO``
    decoded).
    """
    return signed == actual or unquote(signed) == unquote(actual)


def verify_assertion(
    token: str,
    keys: KeySet,
    audience: Union[str, Iterable[str]],
    method: str,
    path: str,
    now: Optional[float] = None,
    leeway: float = 0.0,
) -> Assertion:
    """
    Verify one assertion.

    :param token: the ``X-Gateway-Assertion`` header's value.
    :param keys: the gateway's public keys.
    :param audience: the route name (or names) this service serves, such
        as ``"BUILD"``.
    :param method: the request's method, as received.
    :param path: the request's path, as received, without the query.
    :param now: the time (seconds since the epoch); the wall clock's if
        omitted.
    :param leeway: seconds of clock difference allowed on ``exp``.
    :raises InvalidAssertion: when the signature, ``alg``, ``kid``,
        ``iss``, ``aud``, ``exp``, ``method`` or ``path`` is wrong.
    """
    kid = assertion_kid(token)
    if kid is None:
        raise InvalidAssertion("not a JWT naming a key (kid)")
    key = keys.keys.get(kid)
    if key is None:
        raise InvalidAssertion("signed with an unknown key (kid %r)" % (kid,))
    wanted = [audience] if isinstance(audience, str) else list(audience)
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=["ES256"],
            audience=wanted,
            issuer=ISSUER,
            # The time claims are checked below, against ``now``.
            options={
                "require": list(REQUIRED_CLAIMS),
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except jwt.PyJWTError as e:
        raise InvalidAssertion(str(e) or e.__class__.__name__) from None
    if now is None:
        now = time.time()
    expires = claims["exp"]
    if not isinstance(expires, (int, float)) or expires + leeway <= now:
        raise InvalidAssertion("expired")
    if claims["method"] != method:
        raise InvalidAssertion(
            "signed for method %r, received %r" % (claims["method"], method)
        )
    if not isinstance(claims["path"], str) or not same_path(claims["path"], path):
        raise InvalidAssertion("signed for another path")
    scopes = claims.get("scopes", [])
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise InvalidAssertion("scopes is not a list of strings")
    return Assertion(
        subject=str(claims["sub"]),
        scopes=tuple(scopes),
        route=str(claims["aud"]),
        request_id=str(claims["jti"]),
        method=claims["method"],
        path=claims["path"],
        issued=claims["iat"],
        expires=expires,
        claims=claims,
    )


def max_age(cache_control: Optional[str], default: float = DEFAULT_MAX_AGE) -> float:
    """
    The ``max-age`` of a ``Cache-Control`` value, else ``default``.
    """
    found = _MAX_AGE.search(cache_control or "")
    return float(found.group(1)) if found else default


def _fetch_urllib(url: str, timeout: float) -> tuple[bytes, Optional[str]]:
    """
    GET ``url`` with ``urllib``: the body and ``Cache-Control``.
    """
    if not url.startswith(("http://", "https://")):
        raise OSError("the JWKS URL must be http:// or https://")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310
        return answer.read(1024 * 1024), answer.headers.get("Cache-Control")


#: Seconds after any fetch before a newly seen ``kid`` may fetch again (or
#: ``refresh_interval``, when that is shorter).
FIRST_SIGHT_GAP = 1.0

#: Unknown ``kid``\ s remembered as tried.
MAX_TRIED = 64


class _Cache:
    """
    When a fetched key set is stale, and when an unknown ``kid`` may fetch
    it again.
    """

    def __init__(self, clock: Callable[[], float], refresh_interval: float) -> None:
        self.clock = clock
        self.refresh_interval = refresh_interval
        self.keys: Optional[KeySet] = None
        self.fetched = -float("inf")
        self.fresh_until = -float("inf")
        #: Unknown ``kid``\ s that fetched once already, latest last.
        self.tried: dict[str, None] = {}

    def wants_fetch(self, kid: Optional[str]) -> bool:
        now = self.clock()
        if self.keys is None or now >= self.fresh_until:
            return True
        if kid is None or kid in self.keys:
            return False
        since = now - self.fetched
        if kid in self.tried:
            return since >= self.refresh_interval
        if since < min(FIRST_SIGHT_GAP, self.refresh_interval):
            return False
        # First sight of this kid: most likely the gateway's new key.
        self.tried[kid] = None
        if len(self.tried) > MAX_TRIED:
            del self.tried[next(iter(self.tried))]
        return True

    def store(self, keys: KeySet, cache_control: Optional[str]) -> None:
        now = self.clock()
        self.keys = keys
        self.fetched = now
        self.fresh_until = now + max_age(cache_control)


class AssertionVerifier:
    """
    Verifies assertions against the gateway's JWKS, fetched (blocking) and
    cached: for WSGI servers and synchronous code.

    :param jwks_url: the gateway's ``…/.well-known/jwks.json``.
    :param audience: the route name (or names) this service serves.
    :param leeway: seconds of clock difference allowed on ``exp``.
    :param fetch: GETs a URL, returning the body and the ``Cache-Control``
        value (``urllib`` by default).
    :param clock: the time (``time.time`` by default).
    :param refresh_interval: the least time, in seconds, between two
        fetches caused by an unknown ``kid``.
    :param timeout: seconds each fetch may take.
    """

    def __init__(
        self,
        jwks_url: str,
        audience: Union[str, Iterable[str]],
        leeway: float = 0.0,
        fetch: Optional[Callable[[str, float], tuple[bytes, Optional[str]]]] = None,
        clock: Callable[[], float] = time.time,
        refresh_interval: float = 10.0,
        timeout: float = 5.0,
    ) -> None:
        self.jwks_url = jwks_url
        self.audience = audience if isinstance(audience, str) else tuple(audience)
        self.leeway = leeway
        self.fetch = fetch if fetch is not None else _fetch_urllib
        self.clock = clock
        self.timeout = timeout
        self._cache = _Cache(clock, refresh_interval)

    def keys(self, kid: Optional[str] = None) -> KeySet:
        """
        The key set, fetched again when stale or when ``kid`` is unknown.

        :raises InvalidAssertion: when no key set could ever be fetched.
        """
        cache = self._cache
        if cache.wants_fetch(kid):
            try:
                body, cache_control = self.fetch(self.jwks_url, self.timeout)
                cache.store(KeySet.from_json(body), cache_control)
            except (OSError, InvalidAssertion) as e:
                if cache.keys is None:
                    raise InvalidAssertion(
                        "the gateway's JWKS could not be fetched: %s" % (e,)
                    ) from None
        assert cache.keys is not None
        return cache.keys

    def verify(self, token: Optional[str], method: str, path: str) -> Assertion:
        """
        Verify the assertion ``token`` for a request of ``method`` to
        ``path`` (without the query).

        :raises InvalidAssertion: when there is none or it does not verify.
        """
        if not token:
            raise InvalidAssertion("no %s header" % (HEADER,))
        keys = self.keys(assertion_kid(token))
        return verify_assertion(
            token, keys, self.audience, method, path, self.clock(), self.leeway
        )

    def verify_environ(self, environ: Mapping[str, Any]) -> Assertion:
        """
        Verify the assertion of a WSGI request.

        :raises InvalidAssertion: when there is none or it does not verify.
        """
        path = environ.get("RAW_URI") or environ.get("REQUEST_URI")
        if path:
            path = str(path).split("?", 1)[0]
        else:
            path = str(environ.get("SCRIPT_NAME", "")) + str(
                environ.get("PATH_INFO", "")
            )
        return self.verify(
            environ.get("HTTP_X_GATEWAY_ASSERTION"),
            str(environ.get("REQUEST_METHOD", "")),
            path,
        )

    def wsgi(self, app: Callable[..., Any]) -> Callable[..., Any]:
        """
        Wrap a WSGI application: a request without a valid assertion gets
        ``401`` and never reaches ``app``; one with it reaches ``app`` with
        the :class:`Assertion` in ``environ["metagateway.assertion"]``.
        """

        def checked(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            try:
                environ["metagateway.assertion"] = self.verify_environ(environ)
            except InvalidAssertion:
                start_response(
                    "401 Unauthorized", [("Content-Type", "application/json")]
                )
                return [b'{"error":"invalid gateway assertion"}']
            return app(environ, start_response)

        return checked


class TwistedAssertionVerifier:
    """
    Verifies assertions against the gateway's JWKS, fetched with a Twisted
    ``IAgent`` and cached: for Twisted upstreams.

    :param agent: fetches the JWKS (such as ``Agent(reactor)``).
    :param jwks_url: the gateway's ``…/.well-known/jwks.json``.
    :param audience: the route name (or names) this service serves.
    :param clock: the reactor (its ``seconds``).
    :param leeway: seconds of clock difference allowed on ``exp``.
    :param refresh_interval: the least time, in seconds, between two
        fetches caused by an unknown ``kid``.
    """

    def __init__(
        self,
        agent: IAgent,
        jwks_url: str,
        audience: Union[str, Iterable[str]],
        clock: IReactorTime,
        leeway: float = 0.0,
        refresh_interval: float = 10.0,
    ) -> None:
        self.agent = agent
        self.jwks_url = jwks_url
        self.audience = audience if isinstance(audience, str) else tuple(audience)
        self.clock = clock
        self.leeway = leeway
        self._cache = _Cache(clock.seconds, refresh_interval)
        self._fetching: Optional[Deferred[None]] = None

    def verify(
        self, token: Optional[str], method: str, path: str
    ) -> Deferred[Assertion]:
        """
        Verify the assertion ``token`` for a request of ``method`` to
        ``path`` (without the query).

        :return: a ``Deferred`` firing with the :class:`Assertion`, or
            failing with :class:`InvalidAssertion`.
        """
        from twisted.internet.defer import Deferred

        return Deferred.fromCoroutine(self._verify(token, method, path))

    def verify_request(self, request: IRequest) -> Deferred[Assertion]:
        """
        Verify the assertion of a ``twisted.web`` request.

        :return: as :meth:`verify`.
        """
        token = request.getHeader(HEADER.encode("ascii"))
        return self.verify(
            token.decode("latin-1") if token is not None else None,
            request.method.decode("latin-1"),
            request.path.decode("latin-1"),
        )

    async def _verify(self, token: Optional[str], method: str, path: str) -> Assertion:
        if not token:
            raise InvalidAssertion("no %s header" % (HEADER,))
        cache = self._cache
        if cache.wants_fetch(assertion_kid(token)):
            try:
                await self._refresh()
            except Exception as e:
                if cache.keys is None:
                    raise InvalidAssertion(
                        "the gateway's JWKS could not be fetched: %s" % (e,)
                    ) from None
        if cache.keys is None:
            raise InvalidAssertion("the gateway's JWKS could not be fetched")
        return verify_assertion(
            token,
            cache.keys,
            self.audience,
            method,
            path,
            self.clock.seconds(),
            self.leeway,
        )

    async def _refresh(self) -> None:
        """
        Fetch the key set, sharing a fetch already under way.
        """
        from twisted.internet.defer import Deferred

        fetching = self._fetching
        if fetching is None:
            fetching = self._fetching = Deferred.fromCoroutine(self._fetch())

            def done(result: object) -> object:
                self._fetching = None
                return result

            fetching.addBoth(done)
            await fetching
            return
        # A fetch under way: wait for it, leaving its result to its owner.
        waiting: Deferred[None] = Deferred()

        def wake(result: object) -> object:
            waiting.callback(None)
            return result

        fetching.addBoth(wake)
        await waiting

    async def _fetch(self) -> None:
        from twisted.web.client import readBody
        from twisted.web.http_headers import Headers

        answer = await self.agent.request(
            b"GET",
            self.jwks_url.encode("ascii"),
            Headers({b"Accept": [b"application/json"]}),
        )
        body = await readBody(answer)
        if answer.code != 200:
            raise InvalidAssertion("the JWKS answered %d" % (answer.code,))
        values = answer.headers.getRawHeaders(b"cache-control") or [b""]
        self._cache.store(KeySet.from_json(body), values[0].decode("latin-1"))
