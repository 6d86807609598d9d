"""
The signed assertion upstreams get (:ref:`contract-assertions`): signing, claims,
``kid``, the JWKS and key rotation on a fake clock; the header through the gateway
in memory; the JWKS endpoint.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from metagateway.auth import assertion as assertion_module
from metagateway.auth.assertion import (
    ISSUER,
    LIFETIME,
    AssertionKeyError,
    AssertionSigner,
    jwks_document,
    key_id,
    load_key,
    new_key_pem,
    parse_key,
    payload_template,
    raw_signature,
)
from metagateway.config import ConfigurationError
from metagateway.gateway import Gateway
from metagateway.testing import USERNAME, GatewayHarness, make_config
from metagateway.verify import KeySet, verify_assertion

NOW = 1_800_000_000


def write_key(case: SynchronousTestCase, pem: bytes | None = None) -> str:
    """
    A new key file (``pem``, or a fresh P-256 key) in the test's directory.
    """
    path = case.mktemp()
    with open(path, "wb") as f:
        f.write(pem if pem is not None else new_key_pem())
    return path


def decode_segment(segment: str) -> Any:
    """
    A JWS segment's JSON.
    """
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


class SignerTests(SynchronousTestCase):
    """
    :class:`AssertionSigner` signs ES256 assertions with the §10 claims.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.path = write_key(self)
        self.signer = AssertionSigner.from_file(self.path, self.clock.seconds)

    def sign(self, **kw: Any) -> str:
        """
        An assertion with defaults for every argument not given.
        """
        args: dict[str, Any] = dict(
            route="BUILD",
            subject="alice",
            scopes=("admin",),
            request_id="req-1",
            method=b"POST",
            path=b"/base/x/y",
        )
        args.update(kw)
        return self.signer.sign(**args).decode("ascii")

    def test_claims(self) -> None:
        """
        The claims are the contract's: ``iss``, ``aud`` the route, ``sub``,
        ``scopes``, ``iat``, ``exp`` 60 s later, ``jti`` the request id,
        ``method`` and ``path``; the signature verifies with PyJWT and the
        public key, under ES256 only.
        """
        token = self.sign()
        public = load_key(self.path).public_key()
        claims = jwt.decode(
            token,
            public,
            algorithms=["ES256"],
            audience="BUILD",
            options={"verify_exp": False, "verify_iat": False},
        )
        self.assertEqual(
            claims,
            {
                "iss": ISSUER,
                "aud": "BUILD",
                "sub": "alice",
                "scopes": ["admin"],
                "iat": NOW,
                "exp": NOW + 60,
                "jti": "req-1",
                "method": "POST",
                "path": "/base/x/y",
            },
        )
        self.assertEqual(
            jwt.get_unverified_header(token),
            {"alg": "ES256", "typ": "JWT", "kid": self.signer.kid},
        )

    def test_anonymous(self) -> None:
        """
        Without a verified user, ``sub`` is ``anonymous`` and ``scopes``
        is empty.
        """
        claims = decode_segment(self.sign(subject=None, scopes=()).split(".")[1])
        self.assertEqual((claims["sub"], claims["scopes"]), ("anonymous", []))

    def test_signature_raw(self) -> None:
        """
        The signature is JWS's raw ``r || s`` (64 bytes), not DER, and
        differs for every signing (ECDSA); the header segment is the same.
        """
        first, second = self.sign(), self.sign()
        head1, _, sig1 = first.split(".")
        head2, _, sig2 = second.split(".")
        self.assertEqual(len(base64.urlsafe_b64decode(sig1 + "==")), 64)
        self.assertEqual(head1, head2)
        self.assertNotEqual(sig1, sig2)

    def decode_with_jwks(self, token: str, audience: str = "BUILD") -> Any:
        """
        ``token``'s claims as PyJWT decodes them, ES256 only, with the key
        its ``kid`` names in the signer's own JWKS.
        """
        keys = jwt.PyJWKSet.from_dict(self.signer.jwks())
        kid = jwt.get_unverified_header(token)["kid"]
        (key,) = [k for k in keys.keys if k.key_id == kid]
        return jwt.decode(
            token,
            key,
            algorithms=["ES256"],
            audience=audience,
            options={"verify_exp": False, "verify_iat": False},
        )

    def test_jwks_key_verifies_with_pyjwt(self) -> None:
        """
        PyJWT verifies an assertion with the public key from the JWKS, and
        its claims are exactly the contract's; a second one signed 30.7 s
        later has that ``iat`` (the claims template caches no time) and
        ``exp`` 60 s after it.
        """
        self.assertEqual(
            self.decode_with_jwks(self.sign()),
            {
                "iss": ISSUER,
                "aud": "BUILD",
                "sub": "alice",
                "scopes": ["admin"],
                "iat": NOW,
                "exp": NOW + LIFETIME,
                "jti": "req-1",
                "method": "POST",
                "path": "/base/x/y",
            },
        )
        self.clock.advance(30.7)
        claims = self.decode_with_jwks(self.sign(request_id="req-2"))
        self.assertEqual(
            (claims["iat"], claims["exp"], claims["jti"]),
            (NOW + 30, NOW + 30 + 60, "req-2"),
        )

    def test_any_characters(self) -> None:
        """
        Route, user, scopes, request id, method and path may hold any
        character: quotes, backslashes, ``%`` (the template's own marker),
        control characters, non-ASCII, a lone surrogate; the payload is
        byte for byte what ``json.dumps`` makes of the claims, and PyJWT
        reads them back unchanged.
        """
        odd = 'q"b\\s%s%d%%\x00\n\t\u00e9\U0001f600\ud800'
        token = self.sign(
            route="R" + odd,
            subject=odd,
            scopes=(odd, "", "%"),
            request_id=odd,
            method=b"M%s\xff",
            path=b'/a%2e"\\/\xe9\x00',
        )
        expected = {
            "iss": ISSUER,
            "aud": "R" + odd,
            "sub": odd,
            "scopes": [odd, "", "%"],
            "iat": NOW,
            "exp": NOW + LIFETIME,
            "jti": odd,
            "method": "M%s\xff",
            "path": '/a%2e"\\/\xe9\x00',
        }
        payload = token.split(".")[1]
        self.assertEqual(
            base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)),
            json.dumps(expected, separators=(",", ":")).encode("ascii"),
        )
        self.assertEqual(self.decode_with_jwks(token, "R" + odd), expected)

    def test_template(self) -> None:
        """
        :func:`payload_template` renders the claims constant for a route,
        user, scopes and method, with placeholders for the rest, in the
        contract's order.
        """
        self.assertEqual(
            payload_template("BUILD", None, ("a", "b"), b"GET"),
            '{"iss":"gateway.metacogna.ai","aud":"BUILD","sub":"anonymous",'
            '"scopes":["a","b"],"iat":%d,"exp":%d,"jti":%s,"method":"GET",'
            '"path":%s}',
        )

    def test_templates_per_caller(self) -> None:
        """
        Each route, user, scopes and method gets its own claims, however
        the calls interleave; past :data:`TEMPLATES_MAX` the signer starts
        over rather than growing, and still signs what it is asked; scopes
        in a list (unhashable) are signed too, without a cached template.
        """
        self.patch(assertion_module, "TEMPLATES_MAX", 3)
        calls: list[dict[str, Any]] = [
            dict(route="BUILD", subject="alice", scopes=("admin",), method=b"GET"),
            dict(route="BUILD", subject="bob", scopes=("admin",), method=b"GET"),
            dict(route="KV", subject="alice", scopes=("admin",), method=b"GET"),
            dict(route="BUILD", subject="alice", scopes=(), method=b"GET"),
            dict(route="BUILD", subject="alice", scopes=("admin",), method=b"PUT"),
            dict(route="BUILD", subject=None, scopes=(), method=b"GET"),
            dict(route="BUILD", subject="carol", scopes=["a", "b"], method=b"GET"),
        ]
        for args in calls + calls[::-1] + calls:
            claims = self.decode_with_jwks(self.sign(**args), args["route"])
            self.assertEqual(
                (claims["aud"], claims["sub"], claims["scopes"], claims["method"]),
                (
                    args["route"],
                    args["subject"] or "anonymous",
                    list(args["scopes"]),
                    args["method"].decode(),
                ),
            )
            self.assertLessEqual(len(self.signer._templates), 3)

    def test_rotation_signs_with_new_key(self) -> None:
        """
        After a rotation the same caller's next assertion carries the new
        ``kid`` and verifies with the new JWKS key (the cached claims do not
        hold a key); the one signed before still verifies with the old.
        """
        before = self.sign()
        with open(self.path, "wb") as f:
            f.write(new_key_pem())
        self.assertTrue(self.signer.reload())
        after = self.sign()
        kids = [k["kid"] for k in self.signer.jwks()["keys"]]
        self.assertEqual(
            [jwt.get_unverified_header(t)["kid"] for t in (after, before)], kids
        )
        self.assertEqual(self.decode_with_jwks(after)["sub"], "alice")
        self.assertEqual(self.decode_with_jwks(before)["sub"], "alice")
        public = load_key(self.path).public_key()
        jwt.decode(
            after,
            public,
            algorithms=["ES256"],
            audience="BUILD",
            options={"verify_exp": False, "verify_iat": False},
        )
        self.assertRaises(
            jwt.InvalidSignatureError,
            jwt.decode,
            before,
            public,
            algorithms=["ES256"],
            audience="BUILD",
            options={"verify_exp": False, "verify_iat": False},
        )

    def test_kid_thumbprint(self) -> None:
        """
        ``kid`` is the key's RFC 7638 thumbprint: the same for the same key
        read again, another for another key.
        """
        jwk = self.signer.jwks()["keys"][0]
        canonical = json.dumps(
            {k: jwk[k] for k in ("crv", "kty", "x", "y")},
            sort_keys=True,
            separators=(",", ":"),
        )
        expected = (
            base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest())
            .rstrip(b"=")
            .decode()
        )
        self.assertEqual(self.signer.kid, expected)
        self.assertEqual(key_id(load_key(self.path).public_key()), expected)
        other = AssertionSigner.from_file(write_key(self), self.clock.seconds)
        self.assertNotEqual(other.kid, expected)

    def test_jwks(self) -> None:
        """
        The JWKS holds the public key with the contract's members, and no
        private part; an assertion verifies against it.
        """
        document = self.signer.jwks()
        self.assertEqual(len(document["keys"]), 1)
        jwk = document["keys"][0]
        self.assertEqual(sorted(jwk), ["alg", "crv", "kid", "kty", "use", "x", "y"])
        self.assertEqual(
            (jwk["kty"], jwk["crv"], jwk["use"], jwk["alg"]),
            ("EC", "P-256", "sig", "ES256"),
        )
        assertion = verify_assertion(
            self.sign(), KeySet(document), "BUILD", "POST", "/base/x/y", now=NOW
        )
        self.assertEqual(assertion.subject, "alice")
        self.assertEqual(jwks_document(None), {"keys": []})

    def test_reload_overlap(self) -> None:
        """
        After :meth:`reload` with a new key file, the new key signs at
        once and the replaced one stays in the JWKS for 60 s (the last
        assertion it signed verifies until it expires), then goes.
        """
        old_kid = self.signer.kid
        old_token = self.sign()
        with open(self.path, "wb") as f:
            f.write(new_key_pem())
        self.assertTrue(self.signer.reload())
        new_kid = self.signer.kid
        self.assertNotEqual(new_kid, old_kid)
        self.assertEqual(jwt.get_unverified_header(self.sign())["kid"], new_kid)
        self.clock.advance(LIFETIME - 1)
        keys = self.signer.jwks()["keys"]
        self.assertEqual([k["kid"] for k in keys], [new_kid, old_kid])
        verify_assertion(
            old_token,
            KeySet({"keys": keys}),
            "BUILD",
            "POST",
            "/base/x/y",
            now=self.clock.seconds(),
        )
        self.clock.advance(1)
        self.assertEqual([k["kid"] for k in self.signer.jwks()["keys"]], [new_kid])

    def test_reload_twice(self) -> None:
        """
        Two rotations within a minute keep both replaced keys, each for its
        own 60 s.
        """
        kids = [self.signer.kid]
        for _ in range(2):
            with open(self.path, "wb") as f:
                f.write(new_key_pem())
            self.signer.reload()
            kids.insert(0, self.signer.kid)
            self.clock.advance(30)
        self.assertEqual([k["kid"] for k in self.signer.jwks()["keys"]], kids[:2])
        self.clock.advance(30)
        self.assertEqual([k["kid"] for k in self.signer.jwks()["keys"]], kids[:1])

    def test_reload_same_key(self) -> None:
        """
        Reloading an unchanged file changes nothing: one key published.
        """
        self.assertFalse(self.signer.reload())
        self.assertEqual(len(self.signer.jwks()["keys"]), 1)

    def test_reload_bad_file(self) -> None:
        """
        A key file that became unusable is refused by :meth:`reload`, and
        the current key keeps signing.
        """
        kid = self.signer.kid
        with open(self.path, "wb") as f:
            f.write(b"garbage")
        self.assertRaises(AssertionKeyError, self.signer.reload)
        self.assertEqual(self.signer.kid, kid)
        os.remove(self.path)
        self.assertRaises(AssertionKeyError, self.signer.reload)
        self.assertEqual([k["kid"] for k in self.signer.jwks()["keys"]], [kid])

    def test_reload_without_file(self) -> None:
        """
        A signer given its key in code has nothing to re-read.
        """
        signer = AssertionSigner(
            ec.generate_private_key(ec.SECP256R1()), self.clock.seconds
        )
        self.assertFalse(signer.reload())


class RawSignatureTests(SynchronousTestCase):
    """
    :func:`raw_signature` turns OpenSSL's DER signature into JWS's ``r || s``
    exactly as ``cryptography``'s DER parser would.
    """

    def expected(self, der: bytes) -> bytes:
        """
        ``r || s`` by ``cryptography``'s parser.
        """
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def test_real_signatures(self) -> None:
        """
        Five hundred real P-256 signatures (short, 32- and 33-byte
        integers all occur) convert to 64 bytes, ``r`` then ``s``.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        algorithm = ec.ECDSA(hashes.SHA256())
        ders = [key.sign(b"%d" % (i,), algorithm) for i in range(500)]
        expected = [self.expected(der) for der in ders]
        self.assertEqual(len({len(der) for der in ders}) > 1, True)
        self.assertEqual([raw_signature(der) for der in ders], expected)

    def test_edges(self) -> None:
        """
        The smallest and largest integers, and those with and without a
        high bit (a leading zero in DER), convert exactly.
        """
        for r, s in [
            (1, 1),
            (0x7F, 0x80),
            (2**255, 2**256 - 1),
            (2**248 - 1, 2**8),
            (2**256 - 1, 1),
            (12345678901234567890, 2**255 - 19),
        ]:
            der = encode_dss_signature(r, s)
            self.assertEqual(
                raw_signature(der), r.to_bytes(32, "big") + s.to_bytes(32, "big")
            )
            self.assertEqual(raw_signature(der), self.expected(der))

    def test_not_a_p256_signature(self) -> None:
        """
        What is not a P-256 signature is refused: not DER is a
        ``ValueError``, an integer wider than 32 bytes an ``OverflowError``;
        neither becomes a wrong signature.
        """
        self.assertRaises(ValueError, raw_signature, b"")
        self.assertRaises(ValueError, raw_signature, b"\x30\x06\x02\x01\x01\x02")
        self.assertRaises(OverflowError, raw_signature, encode_dss_signature(2**256, 1))
        self.assertRaises(OverflowError, raw_signature, encode_dss_signature(1, 2**263))


class KeyFileTests(SynchronousTestCase):
    """
    An unusable key file is refused in one line naming the variable, the
    file and the reason.
    """

    def refused(self, data: bytes, reason: str) -> None:
        """
        Assert the file holding ``data`` is refused with ``reason``.
        """
        path = write_key(self, data)
        e = self.assertRaises(AssertionKeyError, load_key, path)
        message = str(e)
        self.assertIn("GATEWAY_ASSERTION_KEY_FILE (%s)" % (path,), message)
        self.assertIn(reason, message)
        self.assertNotIn("\n", message)

    def test_not_pem(self) -> None:
        """
        Not a PEM key.
        """
        self.refused(b"not a key", "not a PEM private key")

    def test_rsa(self) -> None:
        """
        An RSA key.
        """
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.refused(pem, "not an EC key")

    def test_other_curve(self) -> None:
        """
        An EC key on P-384.
        """
        key = ec.generate_private_key(ec.SECP384R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.refused(pem, "not P-256")

    def test_encrypted(self) -> None:
        """
        An encrypted key.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass"),
        )
        self.refused(pem, "encrypted")

    def test_missing(self) -> None:
        """
        A file that does not exist.
        """
        path = self.mktemp()
        e = self.assertRaises(AssertionKeyError, load_key, path)
        self.assertIn("cannot be read", str(e))

    def test_new_key(self) -> None:
        """
        :func:`new_key_pem` makes a key :func:`parse_key` accepts.
        """
        key = parse_key(new_key_pem(), "test")
        self.assertIsInstance(key.curve, ec.SECP256R1)

    def test_gateway_refuses(self) -> None:
        """
        A gateway whose configuration names an unusable key file is not
        built: ``ConfigurationError`` with the same line.
        """
        path = write_key(self, b"junk")
        e = self.assertRaises(
            ConfigurationError,
            Gateway,
            make_config(assertion_key_file=path),
            Clock(),
        )
        self.assertIn("GATEWAY_ASSERTION_KEY_FILE", str(e))


class ProxiedAssertionTests(SynchronousTestCase):
    """
    Through the gateway in memory: each proxied request carries an
    assertion that verifies against the gateway's own JWKS.
    """

    def setUp(self) -> None:
        self.harness = GatewayHarness(make_config(assertion_key_file=write_key(self)))

    def keys(self) -> KeySet:
        """
        The gateway's JWKS, fetched from it.
        """
        response, body = self.harness.request(self, "GET", "/.well-known/jwks.json")
        self.assertEqual(response.code, 200)
        return KeySet.from_json(body)

    def test_reload_rereads_key(self) -> None:
        """
        ``Gateway.reload`` (what ``SIGHUP`` does) re-reads the key file: the
        new key signs, and the JWKS publishes both until the old one's
        assertions have expired.
        """
        gateway = self.harness.gateway
        assert gateway.assertions is not None
        path = gateway.config.assertion_key_file
        assert path is not None
        before = {key["kid"] for key in gateway.assertions.jwks()["keys"]}
        with open(path, "wb") as f:
            f.write(new_key_pem())
        gateway.reload(gateway.config)
        after = {key["kid"] for key in gateway.assertions.jwks()["keys"]}
        self.assertEqual(len(before), 1)
        self.assertEqual(len(after), 2)
        self.assertTrue(before < after)

    def sent(self) -> tuple[bytes, bytes, Any, bytes]:
        """
        The last request the upstream saw.
        """
        return self.harness.upstream.requests[-1]  # type: ignore[no-any-return]

    def test_anonymous(self) -> None:
        """
        A request without a token gets an assertion for ``anonymous``,
        ``aud`` its route, ``path`` the upstream's path without the query,
        ``jti`` the request id sent upstream.
        """
        self.harness.request(
            self, "GET", "/kv/a/b?x=1", headers={"X-Request-Id": "r-9"}
        )
        method, uri, headers, _ = self.sent()
        self.assertEqual(uri, b"/a/b?x=1")
        token = headers.getRawHeaders(b"x-gateway-assertion")[0].decode()
        assertion = verify_assertion(
            token, self.keys(), "KV", "GET", "/a/b", now=self.harness.clock.seconds()
        )
        self.assertEqual(
            (
                assertion.subject,
                assertion.scopes,
                assertion.route,
                assertion.request_id,
            ),
            ("anonymous", (), "KV", "r-9"),
        )
        self.assertTrue(assertion.anonymous)
        self.assertEqual(assertion.issued, int(self.harness.clock.seconds()))

    def test_user(self) -> None:
        """
        With a verified token, ``sub`` and ``scopes`` are its user's; the
        path includes the service URL's own path.
        """
        token = self.harness.login(self)
        self.harness.request(
            self,
            "PUT",
            "/build/x/%2e%2e%2Fy",
            headers={"Authorization": "Bearer " + token},
            data=b"body",
        )
        method, uri, headers, _ = self.sent()
        self.assertEqual(method, b"PUT")
        signed = headers.getRawHeaders(b"x-gateway-assertion")[0].decode()
        assertion = verify_assertion(
            signed,
            self.keys(),
            "BUILD",
            "PUT",
            uri.decode(),
            now=self.harness.clock.seconds(),
        )
        self.assertEqual(assertion.path, uri.decode())
        self.assertTrue(assertion.path.startswith("/base/"))
        self.assertEqual((assertion.subject, assertion.scopes), (USERNAME, ("admin",)))

    def test_client_assertion_dropped(self) -> None:
        """
        An ``X-Gateway-Assertion`` sent by the client never reaches the
        upstream: the gateway's own replaces it.
        """
        self.harness.request(
            self, "GET", "/kv/a", headers={"X-Gateway-Assertion": "forged"}
        )
        values = self.sent()[2].getRawHeaders(b"x-gateway-assertion")
        self.assertEqual(len(values), 1)
        self.assertNotEqual(values[0], b"forged")

    def test_jwks_endpoint(self) -> None:
        """
        ``GET /.well-known/jwks.json`` answers 200 JSON with
        ``Cache-Control: max-age=300``, is never proxied, and is labelled
        ``JWKS``; after a reload it lists both keys.
        """
        response, body = self.harness.request(self, "GET", "/.well-known/jwks.json")
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders(b"cache-control"), [b"max-age=300"]
        )
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [b"application/json"]
        )
        self.assertEqual(
            json.loads(body),
            self.harness.gateway.assertions.jwks(),  # type: ignore[union-attr]
        )
        self.assertEqual(self.harness.upstream.requests, [])
        self.assertEqual(
            self.harness.gateway.metrics.requests, {("JWKS", "GET", "2xx"): 1}
        )
        signer = self.harness.gateway.assertions
        assert signer is not None
        assert signer.path is not None
        with open(signer.path, "wb") as f:
            f.write(new_key_pem())
        signer.reload()
        _, body = self.harness.request(self, "GET", "/.well-known/jwks.json")
        self.assertEqual(len(json.loads(body)["keys"]), 2)

    def test_jwks_other_method(self) -> None:
        """
        Another method on the JWKS path is a 404, not proxied.
        """
        response, _ = self.harness.request(self, "POST", "/.well-known/jwks.json")
        self.assertEqual(response.code, 404)
        self.assertEqual(self.harness.upstream.requests, [])


class WithoutKeyTests(SynchronousTestCase):
    """
    Without ``GATEWAY_ASSERTION_KEY_FILE``: no assertion, an empty JWKS.
    """

    def test_no_assertion(self) -> None:
        """
        No assertion goes upstream, and a client's is still dropped.
        """
        harness = GatewayHarness()
        harness.request(self, "GET", "/kv/a", headers={"X-Gateway-Assertion": "x"})
        headers = harness.upstream.requests[-1][2]
        self.assertFalse(headers.hasHeader(b"x-gateway-assertion"))
        self.assertIsNone(harness.gateway.assertions)

    def test_empty_jwks(self) -> None:
        """
        The JWKS is ``{"keys": []}``, 200.
        """
        harness = GatewayHarness()
        response, body = harness.request(self, "GET", "/.well-known/jwks.json")
        self.assertEqual((response.code, json.loads(body)), (200, {"keys": []}))
