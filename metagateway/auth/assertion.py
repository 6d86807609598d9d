"""
The gateway's signed assertion (:ref:`contract-assertions`): an ES256 JWT on every
proxied request, ``X-Gateway-Assertion``, that tells an upstream who the
caller is in a way nobody but the gateway can produce; and the JWKS
document (``GET /.well-known/jwks.json``) an upstream verifies it with.

Signing is on the proxy's hot path, and the one ECDSA P-256 signature per
request (``jti`` differs each time) is the bulk of its cost: about 27 µs
in ``cryptography`` here, of which OpenSSL's own signing is about 21 µs
(docs/trusting.rst has the measurements). :class:`AssertionSigner` keeps
everything around it close to nothing: the header segment (``alg``,
``typ``, ``kid``) is encoded once per key; the claims that are the same for
every request of one route, user, scopes and method are rendered once into
a ``%`` template (:func:`payload_template`), so a request formats in only
``iat``, ``exp``, ``jti`` and ``path`` (escaped by the ``json`` module's own
C string encoder); base64url is :func:`binascii.b2a_base64` and one
``translate``; and the DER signature becomes JWS's raw ``r || s``
(:func:`raw_signature`). The result is an ordinary JWS compact
serialisation, which PyJWT (and :mod:`metagateway.verify`) verify.

The key file is re-read by :meth:`AssertionSigner.reload` (``SIGHUP``): a
new key signs from then on, and the one it replaced stays in the JWKS for
:data:`LIFETIME` seconds, until the last assertion it signed has expired.
"""

from __future__ import annotations

import hashlib
import json
from binascii import b2a_base64
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any, Callable, Optional, Sequence

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

#: The assertion's ``iss``, the tokens' issuer (:ref:`contract-tokens`).
ISSUER = "gateway.metacogna.ai"

#: Seconds an assertion is valid: its ``exp`` is its ``iat`` plus this.
LIFETIME = 60

#: The header the assertion travels in.
HEADER = b"X-Gateway-Assertion"

#: The ``sub`` of a request that carried no verified token.
ANONYMOUS = "anonymous"

#: Where the environment names the key file.
KEY_FILE_VARIABLE = "GATEWAY_ASSERTION_KEY_FILE"

_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())

#: base64 to base64url.
_URLSAFE = bytes.maketrans(b"+/", b"-_")

#: How many payload templates a signer keeps (one per route, user, scopes
#: and method seen) before it starts over.
TEMPLATES_MAX = 4096


class AssertionKeyError(Exception):
    """
    The assertion key file cannot be used: the message says which file and
    why, in one line.
    """


def b64url(data: bytes) -> bytes:
    """
    Unpadded base64url, as JWS uses it.
    """
    return b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=")


def _coordinate(value: int) -> str:
    """
    A P-256 coordinate as a JWK holds it: 32 big-endian bytes, base64url.
    """
    return b64url(value.to_bytes(32, "big")).decode("ascii")


def public_jwk(public_key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """
    The public key as a JWK (RFC 7517/7518): ``kty``, ``crv``, ``x``,
    ``y``, ``kid`` (:func:`key_id`), ``use`` ``sig``, ``alg`` ``ES256``.
    """
    numbers = public_key.public_numbers()
    x, y = _coordinate(numbers.x), _coordinate(numbers.y)
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": x,
        "y": y,
        "kid": _thumbprint(x, y),
        "use": "sig",
        "alg": "ES256",
    }


def _thumbprint(x: str, y: str) -> str:
    """
    The RFC 7638 thumbprint of an EC public key: base64url SHA-256 of its
    required members in lexical order, without whitespace.
    """
    canonical = '{"crv":"P-256","kty":"EC","x":"%s","y":"%s"}' % (x, y)
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest()).decode("ascii")


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """
    The key's ``kid``: its RFC 7638 JWK thumbprint, so the same key always
    has the same ``kid``, on every process and host.
    """
    return public_jwk(public_key)["kid"]


def parse_key(data: bytes, name: str) -> ec.EllipticCurvePrivateKey:
    """
    Read an unencrypted PEM EC P-256 private key.

    :param name: how errors name the key's source (the file).
    :raises AssertionKeyError: for anything else.
    """
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise AssertionKeyError(
            "%s: the key is encrypted; give an unencrypted PEM key" % (name,)
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise AssertionKeyError(
            "%s: not a PEM private key (make one with "
            "'metagateway-admin assertion-key new FILE')" % (name,)
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise AssertionKeyError("%s: not an EC key (ES256 needs P-256)" % (name,))
    if not isinstance(key.curve, ec.SECP256R1):
        raise AssertionKeyError(
            "%s: the key's curve is %s, not P-256 (ES256)" % (name, key.curve.name)
        )
    return key


def load_key(path: str) -> ec.EllipticCurvePrivateKey:
    """
    Read the PEM EC P-256 private key in ``path``.

    :raises AssertionKeyError: naming the variable, the file and the reason.
    """
    name = "%s (%s)" % (KEY_FILE_VARIABLE, path)
    try:
        with open(path, "rb") as f:
            data = f.read(1024 * 1024)
    except OSError as e:
        raise AssertionKeyError(
            "%s: cannot be read: %s" % (name, e.strerror or e)
        ) from None
    return parse_key(data, name)


def new_key_pem() -> bytes:
    """
    A fresh EC P-256 private key, as unencrypted PKCS#8 PEM.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def payload_template(
    route: str, subject: Optional[str], scopes: Sequence[str], method: bytes
) -> str:
    """
    The claims of every assertion for one route, user, scopes and upstream
    method, as compact JSON with ``%`` placeholders for what differs per
    request: ``iat`` and ``exp`` (``%d``), then ``jti`` and ``path``
    (``%s``, each a JSON string as :func:`json.encoder.encode_basestring_ascii`
    renders it). The members are in the contract's order: ``iss``, ``aud``,
    ``sub``, ``scopes``, ``iat``, ``exp``, ``jti``, ``method``, ``path``.
    """
    head = json.dumps(
        {
            "iss": ISSUER,
            "aud": route,
            "sub": subject if subject is not None else ANONYMOUS,
            "scopes": list(scopes),
        },
        separators=(",", ":"),
    )
    verb = encode_basestring_ascii(method.decode("latin-1"))
    return "%s,%s}" % (
        head[:-1].replace("%", "%%"),
        '"iat":%%d,"exp":%%d,"jti":%%s,"method":%s,"path":%%s'
        % (verb.replace("%", "%%"),),
    )


def raw_signature(der: bytes) -> bytes:
    """
    A DER ``ECDSA-Sig-Value`` (what OpenSSL returns) as JWS's ES256
    signature: ``r`` and ``s`` as 32 big-endian bytes each (RFC 7518 §3.4).
    ``cryptography``'s DER parser does it as fast as slicing the DER by
    hand would (about 1.3 µs either way, measured), so it does it.

    :raises ValueError: for what is not DER.
    :raises OverflowError: for an integer wider than 32 bytes.
    """
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@dataclass(frozen=True)
class _SigningKey:
    """
    A key ready to sign: the key object, its JWK, and the encoded header
    segment (with the dot that follows it).
    """

    key: ec.EllipticCurvePrivateKey
    jwk: dict[str, str]
    prefix: bytes

    @classmethod
    def of(cls, key: ec.EllipticCurvePrivateKey) -> _SigningKey:
        jwk = public_jwk(key.public_key())
        header = json.dumps(
            {"alg": "ES256", "typ": "JWT", "kid": jwk["kid"]}, separators=(",", ":")
        )
        return cls(key, jwk, b64url(header.encode("ascii")) + b".")


class AssertionSigner:
    """
    Signs the gateway's assertions and publishes their public keys.

    :param key: the signing key.
    :param clock: the time, in seconds since the epoch (``reactor.seconds``).
    :param path: the file the key was read from, re-read by
        :meth:`reload`; ``None`` for a key given in code (nothing to
        re-read).
    """

    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey,
        clock: Callable[[], float],
        path: Optional[str] = None,
    ) -> None:
        self.clock = clock
        self.path = path
        self._current = _SigningKey.of(key)
        #: :func:`payload_template` by route, subject, scopes and method.
        self._templates: dict[tuple[str, Optional[str], Sequence[str], bytes], str] = {}
        #: The keys replaced, each with the time its last assertion expires.
        self._previous: list[tuple[_SigningKey, float]] = []

    @classmethod
    def from_file(cls, path: str, clock: Callable[[], float]) -> AssertionSigner:
        """
        A signer with the key in ``path``.

        :raises AssertionKeyError: when the file cannot be read or holds no
            EC P-256 private key.
        """
        return cls(load_key(path), clock, path)

    @property
    def kid(self) -> str:
        """
        The current key's ``kid``.
        """
        return self._current.jwk["kid"]

    def sign(
        self,
        route: str,
        subject: Optional[str],
        scopes: Sequence[str],
        request_id: str,
        method: bytes,
        path: bytes,
    ) -> bytes:
        """
        An assertion for one upstream request, as the header's value.

        :param route: the route name, the assertion's ``aud``.
        :param subject: the verified ``projectId``; ``None`` for
            ``anonymous``.
        :param scopes: the verified token's scopes (empty without one); a
            tuple, as :class:`~metagateway.auth.tokens.Claims` holds them,
            lets the claims around them be cached.
        :param request_id: the request's ``X-Request-Id``, its ``jti``.
        :param method: the upstream request's method.
        :param path: the upstream request's path, without the query.
        """
        signing = self._current
        templates = self._templates
        try:
            template = templates[route, subject, scopes, method]
        except KeyError:
            if len(templates) >= TEMPLATES_MAX:
                templates.clear()
            template = templates[route, subject, scopes, method] = payload_template(
                route, subject, scopes, method
            )
        except TypeError:  # scopes in a list: nothing to cache them by
            template = payload_template(route, subject, scopes, method)
        issued = int(self.clock())
        payload = template % (
            issued,
            issued + LIFETIME,
            encode_basestring_ascii(request_id),
            encode_basestring_ascii(path.decode("latin-1")),
        )
        signed = signing.prefix + (
            b2a_base64(payload.encode("ascii"), newline=False)
            .translate(_URLSAFE)
            .rstrip(b"=")
        )
        signature = raw_signature(signing.key.sign(signed, _ECDSA_SHA256))
        # 64 bytes are 88 base64 characters, the last two of them padding.
        return (
            signed
            + b"."
            + b2a_base64(signature, newline=False)[:86].translate(_URLSAFE)
        )

    def jwks(self) -> dict[str, Any]:
        """
        The JWKS document: the current key, then each key it replaced whose
        assertions may not have expired yet.
        """
        now = self.clock()
        self._previous = [(k, until) for k, until in self._previous if until > now]
        return {"keys": [self._current.jwk] + [k.jwk for k, _ in self._previous]}

    def replace(self, key: ec.EllipticCurvePrivateKey) -> bool:
        """
        Sign with ``key`` from now on; the key it replaces stays published
        for :data:`LIFETIME` seconds.

        :return: whether the key changed (the same key again changes
            nothing).
        """
        new = _SigningKey.of(key)
        if new.jwk["kid"] == self.kid:
            return False
        now = self.clock()
        kept = [
            (k, until)
            for k, until in self._previous
            if until > now and k.jwk["kid"] != new.jwk["kid"]
        ]
        self._previous = [(self._current, now + LIFETIME)] + kept
        self._current = new
        return True

    def reload(self) -> bool:
        """
        Re-read the key file (on ``SIGHUP``): a new key signs from now on,
        and the one it replaced stays in the JWKS for :data:`LIFETIME`
        seconds. A file that cannot be used changes nothing.

        :return: whether the key changed.
        :raises AssertionKeyError: when the file cannot be read or holds no
            EC P-256 key (the current key stays).
        """
        if self.path is None:
            return False
        return self.replace(load_key(self.path))


def jwks_document(signer: Optional[AssertionSigner]) -> dict[str, Any]:
    """
    The JWKS ``GET /.well-known/jwks.json`` answers: ``signer``'s keys, or
    ``{"keys": []}`` without one.
    """
    if signer is None:
        return {"keys": []}
    return signer.jwks()
