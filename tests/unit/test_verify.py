"""
:mod:`metagateway.verify`, the upstream's side: one assertion checked
against a key set, the cached JWKS (blocking and Twisted), the WSGI
wrapper.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from treq.testing import RequestTraversalAgent

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from metagateway.auth.assertion import AssertionSigner
from metagateway.verify import (
    AssertionVerifier,
    InvalidAssertion,
    KeySet,
    TwistedAssertionVerifier,
    max_age,
    same_path,
    verify_assertion,
)

NOW = 1_800_000_000.0


class Fixture:
    """
    A signer on a fake clock, and its key set.
    """

    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.signer = AssertionSigner(
            ec.generate_private_key(ec.SECP256R1()), self.clock.seconds
        )

    def token(self, **kw: Any) -> str:
        """
        An assertion for ``GET /svc/x`` on ``BUILD`` unless told otherwise.
        """
        args: dict[str, Any] = dict(
            route="BUILD",
            subject="alice",
            scopes=["admin"],
            request_id="r1",
            method=b"GET",
            path=b"/svc/x",
        )
        args.update(kw)
        return self.signer.sign(**args).decode("ascii")

    def keys(self) -> KeySet:
        """
        The signer's JWKS as a key set.
        """
        return KeySet(self.signer.jwks())


class VerifyAssertionTests(SynchronousTestCase):
    """
    :func:`verify_assertion` checks signature, ``alg``, ``iss``, ``aud``,
    ``exp``, ``method`` and ``path``.
    """

    def setUp(self) -> None:
        self.f = Fixture()

    def refused(self, token: str, **kw: Any) -> str:
        """
        Assert ``token`` is refused; return the reason.
        """
        args: dict[str, Any] = dict(
            keys=self.f.keys(), audience="BUILD", method="GET", path="/svc/x", now=NOW
        )
        args.update(kw)
        return str(self.assertRaises(InvalidAssertion, verify_assertion, token, **args))

    def test_valid(self) -> None:
        """
        A fresh assertion for this route, method and path verifies; a list
        of audiences may hold the route.
        """
        a = verify_assertion(
            self.f.token(), self.f.keys(), ["KV", "BUILD"], "GET", "/svc/x", NOW
        )
        self.assertEqual((a.subject, a.scopes, a.route), ("alice", ("admin",), "BUILD"))
        self.assertFalse(a.anonymous)

    def test_wrong_audience(self) -> None:
        """
        An assertion for another route is refused.
        """
        self.refused(self.f.token(), audience="KV")

    def test_expired(self) -> None:
        """
        Refused once ``exp`` is reached, unless within the leeway.
        """
        token = self.f.token()
        self.assertIn("expired", self.refused(token, now=NOW + 60))
        verify_assertion(
            token, self.f.keys(), "BUILD", "GET", "/svc/x", NOW + 60, leeway=5
        )

    def test_method_and_path(self) -> None:
        """
        Another method or path than signed is refused; a path that differs
        only in percent-encoding is the same path.
        """
        self.refused(self.f.token(), method="POST")
        self.refused(self.f.token(), path="/svc/y")
        token = self.f.token(path=b"/svc/a%20b")
        verify_assertion(token, self.f.keys(), "BUILD", "GET", "/svc/a b", NOW)
        self.assertTrue(same_path("/a%2Fb", "/a/b"))
        self.assertFalse(same_path("/a", "/b"))

    def test_tampered(self) -> None:
        """
        A changed payload no longer verifies.
        """
        head, payload, sig = self.f.token().split(".")
        other = self.f.token(subject="admin").split(".")[1]
        self.refused(".".join([head, other, sig]))
        self.assertNotEqual(payload, other)

    def test_unknown_key(self) -> None:
        """
        An assertion signed by a key not in the set is refused.
        """
        stranger = Fixture()
        self.assertIn("unknown key", self.refused(stranger.token()))

    def test_other_algorithms(self) -> None:
        """
        An HS256 token (keyed with the public key's coordinate) naming
        the gateway's ``kid``, and an unsigned one, are refused.
        """
        jwk = self.f.signer.jwks()["keys"][0]
        claims = jwt.decode(self.f.token(), options={"verify_signature": False})
        hs = jwt.encode(
            claims, jwk["x"] * 2, algorithm="HS256", headers={"kid": jwk["kid"]}
        )
        self.refused(hs)
        none = jwt.encode(claims, "", algorithm="none", headers={"kid": jwk["kid"]})
        self.refused(none)
        self.refused("not a token")

    def test_wrong_issuer(self) -> None:
        """
        A token with another ``iss``, even signed by the key, is refused.
        """
        claims = jwt.decode(self.f.token(), options={"verify_signature": False})
        claims["iss"] = "someone.else"
        key = self.f.signer._current.key
        token = jwt.encode(
            claims, key, algorithm="ES256", headers={"kid": self.f.signer.kid}
        )
        self.refused(token)

    def test_key_set(self) -> None:
        """
        Keys of another type are left out of a key set; a document that is
        not a JWKS is refused.
        """
        document = self.f.signer.jwks()
        document["keys"].append({"kty": "RSA", "kid": "r", "n": "x", "e": "AQAB"})
        self.assertEqual(list(KeySet(document).keys), [self.f.signer.kid])
        self.assertRaises(InvalidAssertion, KeySet.from_json, b"nope")
        self.assertRaises(InvalidAssertion, KeySet.from_json, b"{}")

    def test_max_age(self) -> None:
        """
        ``max-age`` is read from ``Cache-Control``, else the default.
        """
        self.assertEqual(max_age("public, max-age=120"), 120)
        self.assertEqual(max_age(None), 300)


class AssertionVerifierTests(SynchronousTestCase):
    """
    :class:`AssertionVerifier` fetches and caches the JWKS.
    """

    def setUp(self) -> None:
        self.f = Fixture()
        self.fetches: list[str] = []
        self.failing = False
        self.verifier = AssertionVerifier(
            "https://gateway.test/.well-known/jwks.json",
            "BUILD",
            fetch=self.fetch,
            clock=self.f.clock.seconds,
        )

    def fetch(self, url: str, timeout: float) -> tuple[bytes, Optional[str]]:
        """
        Answer with the signer's JWKS, or fail.
        """
        self.fetches.append(url)
        if self.failing:
            raise OSError("refused")
        return json.dumps(self.f.signer.jwks()).encode(), "max-age=300"

    def test_cached(self) -> None:
        """
        Two verifications fetch once; after ``max-age`` it is fetched again.
        """
        self.verifier.verify(self.f.token(), "GET", "/svc/x")
        self.verifier.verify(self.f.token(), "GET", "/svc/x")
        self.assertEqual(len(self.fetches), 1)
        self.f.clock.advance(300)
        self.verifier.verify(self.f.token(), "GET", "/svc/x")
        self.assertEqual(len(self.fetches), 2)

    def test_rotation(self) -> None:
        """
        An assertion signed by a new key (a rotation) fetches the JWKS
        again and verifies; an unknown ``kid`` fetches at most once per
        ``refresh_interval``.
        """
        self.verifier.verify(self.f.token(), "GET", "/svc/x")
        self.f.clock.advance(10)
        self.f.signer.replace(ec.generate_private_key(ec.SECP256R1()))
        self.verifier.verify(self.f.token(), "GET", "/svc/x")
        self.assertEqual(len(self.fetches), 2)
        stranger = Fixture()
        self.assertRaises(
            InvalidAssertion, self.verifier.verify, stranger.token(), "GET", "/svc/x"
        )
        self.assertEqual(len(self.fetches), 2)

    def test_rotation_soon_after_fetch(self) -> None:
        """
        A key rotated well within ``refresh_interval`` of the last fetch is
        fetched at the first assertion naming it (nothing refused), and a
        made-up ``kid`` then fetches once, not on every request.
        """
        self.verifier.verify(self.f.token(), "GET", "/svc/x")
        self.f.clock.advance(2)
        self.f.signer.replace(ec.generate_private_key(ec.SECP256R1()))
        self.verifier.verify(self.f.token(), "GET", "/svc/x")
        self.assertEqual(len(self.fetches), 2)
        self.f.clock.advance(2)
        stranger = Fixture()
        for _ in range(3):
            self.assertRaises(
                InvalidAssertion,
                self.verifier.verify,
                stranger.token(),
                "GET",
                "/svc/x",
            )
        self.assertEqual(len(self.fetches), 3)

    def test_fetch_fails(self) -> None:
        """
        No JWKS ever fetched: refused. A failed refresh keeps the keys held.
        """
        self.failing = True
        e = self.assertRaises(
            InvalidAssertion, self.verifier.verify, self.f.token(), "GET", "/svc/x"
        )
        self.assertIn("could not be fetched", str(e))
        self.failing = False
        self.verifier.verify(self.f.token(), "GET", "/svc/x")
        self.failing = True
        self.f.clock.advance(301)
        self.verifier.verify(self.f.token(), "GET", "/svc/x")

    def test_missing(self) -> None:
        """
        No header: refused without a fetch.
        """
        self.assertRaises(InvalidAssertion, self.verifier.verify, None, "GET", "/x")
        self.assertEqual(self.fetches, [])

    def test_wsgi(self) -> None:
        """
        The WSGI wrapper answers 401 without a valid assertion, and hands
        the app the verified one in ``environ``.
        """
        seen: list[Any] = []

        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            seen.append(environ["metagateway.assertion"])
            start_response("200 OK", [])
            return [b"ok"]

        wrapped = self.verifier.wsgi(app)
        statuses: list[str] = []

        def start(status: str, headers: Any) -> None:
            statuses.append(status)

        environ = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "/svc", "PATH_INFO": "/x"}
        self.assertEqual(
            wrapped(dict(environ), start), [b'{"error":"invalid gateway assertion"}']
        )
        environ["HTTP_X_GATEWAY_ASSERTION"] = self.f.token()
        self.assertEqual(wrapped(dict(environ), start), [b"ok"])
        self.assertEqual(statuses, ["401 Unauthorized", "200 OK"])
        self.assertEqual(seen[0].subject, "alice")
        environ["RAW_URI"] = "/svc/other?q=1"
        wrapped(dict(environ), start)
        self.assertEqual(statuses[-1], "401 Unauthorized")


class JWKSResource(Resource):
    """
    Serves a signer's JWKS and counts the fetches.
    """

    isLeaf = True

    def __init__(self, signer: AssertionSigner) -> None:
        super().__init__()
        self.signer = signer
        self.fetches = 0

    def render_GET(self, request: Request) -> bytes:
        self.fetches += 1
        request.setHeader(b"Cache-Control", b"max-age=300")
        return json.dumps(self.signer.jwks()).encode()


class TwistedVerifierTests(SynchronousTestCase):
    """
    :class:`TwistedAssertionVerifier` fetches the JWKS with an ``IAgent``.
    """

    def setUp(self) -> None:
        self.f = Fixture()
        self.jwks = JWKSResource(self.f.signer)
        self.client = RequestTraversalAgent(self.jwks)
        self.verifier = TwistedAssertionVerifier(
            self.client,
            "http://gateway.test/.well-known/jwks.json",
            "BUILD",
            self.f.clock,
        )

    def verify(self, token: Optional[str], path: str = "/svc/x") -> Any:
        """
        Start a verification and deliver the fetch.
        """
        d = self.verifier.verify(token, "GET", path)
        self.client.flush()
        return d

    def test_verified_and_cached(self) -> None:
        """
        Concurrent verifications share one fetch; the next uses the cache.
        """
        first = self.verifier.verify(self.f.token(), "GET", "/svc/x")
        second = self.verifier.verify(self.f.token(), "GET", "/svc/x")
        self.client.flush()
        self.assertEqual(self.successResultOf(first).subject, "alice")
        self.assertEqual(self.successResultOf(second).subject, "alice")
        self.successResultOf(self.verify(self.f.token()))
        self.assertEqual(self.jwks.fetches, 1)

    def test_refused(self) -> None:
        """
        A bad or missing assertion fails with :class:`InvalidAssertion`.
        """
        self.failureResultOf(
            self.verify(self.f.token(), "/elsewhere"), InvalidAssertion
        )
        self.failureResultOf(self.verify(None), InvalidAssertion)
