"""
Tests for :mod:`metagateway.auth.tokens`: issuing, verifying against an injected
clock, key rotation, clock-skew leeway, claim shapes, revocation and the
verified-token cache (:ref:`contract-tokens`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any, Optional

import jwt
from zope.interface.verify import verifyObject

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from metagateway.auth.tokens import (
    AUDIENCE,
    ISSUER,
    LIFETIME,
    InvalidToken,
    IRevocationList,
    RevocationList,
    TokenAuthority,
    bearer_token,
    key_id,
    request_token,
)
from tests.helpers import token_claims

SECRET = "current-secret-that-is-long-enough-for-hs512-0123456789abcdef01234567"
OLD = "previous-secret-that-is-at-least-32-bytes"
OLDER = "older-secret-that-is-at-least-32-bytes!!"
STRANGER = "somebody-elses-secret-at-least-32-bytes!"

NOW = 1_800_000_000


def claims(**overrides: Any) -> dict[str, Any]:
    """
    A valid payload issued at :data:`NOW`, with ``overrides`` applied; a
    value of ``None`` removes the claim.
    """
    return token_claims(NOW, **{"jti": "0123456789abcdef", **overrides})


def sign(
    payload: dict[str, Any],
    secret: str = SECRET,
    kid: Optional[str] = "auto",
    algorithm: str = "HS256",
) -> str:
    """
    Sign ``payload``; ``kid="auto"`` names ``secret``, ``None`` leaves the
    header without ``kid`` (the original gateway's format).
    """
    headers = {} if kid is None else {"kid": key_id(secret) if kid == "auto" else kid}
    return jwt.encode(payload, secret, algorithm=algorithm, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def raw_sign(header: dict[str, Any], payload: Any, secret: str = SECRET) -> str:
    """
    A token built and HS256-signed by hand, so that its header or payload
    can be anything (PyJWT refuses to make some of them).
    """
    signed = "%s.%s" % (
        b64(json.dumps(header).encode()),
        b64(json.dumps(payload).encode()),
    )
    mac = hmac.new(secret.encode(), signed.encode(), hashlib.sha256).digest()
    return "%s.%s" % (signed, b64(mac))


def unsigned(payload: dict[str, Any], header: dict[str, Any]) -> str:
    """
    A token with the given header and an empty signature, built by hand.
    """
    return "%s.%s." % (
        b64(json.dumps(header).encode()),
        b64(json.dumps(payload).encode()),
    )


class AuthorityCase(SynchronousTestCase):
    """
    A clock at :data:`NOW` and an authority on it.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.authority = self.make()

    def make(self, secret: str = SECRET, **kw: Any) -> TokenAuthority:
        return TokenAuthority(secret, self.clock.seconds, **kw)

    def refused(self, token: str, authority: Optional[TokenAuthority] = None) -> None:
        self.assertRaises(InvalidToken, (authority or self.authority).verify, token)


class IssueTests(AuthorityCase):
    """
    :meth:`TokenAuthority.issue`.
    """

    def test_header(self) -> None:
        """
        Tokens are HS256 JWTs naming the current secret in ``kid``.
        """
        token = self.authority.issue("alice", "AUTH", ["admin"])
        header = jwt.get_unverified_header(token)
        self.assertEqual(header, {"alg": "HS256", "typ": "JWT", "kid": key_id(SECRET)})
        self.assertEqual(self.authority.kid, key_id(SECRET))

    def test_claims(self) -> None:
        """
        Every §3 claim is present, ``exp`` an hour after ``iat``.
        """
        self.clock.advance(0.7)
        token = self.authority.issue("alice", "BUILD", ["guest"], "staging")
        payload = jwt.decode(
            token,
            SECRET,
            algorithms=["HS256"],
            audience=AUDIENCE,
            options={"verify_exp": False, "verify_iat": False},
        )
        jti = payload.pop("jti")
        self.assertIsInstance(jti, str)
        self.assertEqual(
            payload,
            {
                "projectId": "alice",
                "route": "BUILD",
                "scopes": ["guest"],
                "environment": "staging",
                "issuedBy": ISSUER,
                "iss": ISSUER,
                "aud": AUDIENCE,
                "sub": "alice",
                "iat": NOW,
                "exp": NOW + 3600,
            },
        )

    def test_unique_jti(self) -> None:
        """
        Two tokens issued in the same second have different ``jti``.
        """
        jtis = {
            jwt.decode(
                self.authority.issue("alice", "CORE", []),
                SECRET,
                algorithms=["HS256"],
                audience=AUDIENCE,
                options={"verify_exp": False, "verify_iat": False},
            )["jti"]
            for _ in range(50)
        }
        self.assertEqual(len(jtis), 50)

    def test_key_id(self) -> None:
        """
        ``kid`` is a short fingerprint that differs per secret and does not
        contain it.
        """
        self.assertEqual(key_id(SECRET), key_id(SECRET))
        self.assertNotEqual(key_id(SECRET), key_id(OLD))
        self.assertEqual(len(key_id(SECRET)), 16)
        self.assertNotIn(SECRET[:8], key_id(SECRET))

    def test_round_trip(self) -> None:
        """
        An issued token verifies to its claims.
        """
        token = self.authority.issue("alice", "KV", ["editor"], "staging")
        verified = self.authority.verify(token)
        self.assertEqual(verified.project_id, "alice")
        self.assertEqual(verified.route, "KV")
        self.assertEqual(verified.scopes, ("editor",))
        self.assertEqual(verified.role, "editor")
        self.assertEqual(verified.environment, "staging")
        self.assertEqual(verified.issued_by, ISSUER)
        self.assertEqual(verified.expires, NOW + LIFETIME)
        self.assertTrue(verified.jti)
        self.assertTrue(verified.may_reach("KV"))
        self.assertFalse(verified.may_reach("BUILD"))


class RotationTests(AuthorityCase):
    """
    ``kid`` and ``GATEWAY_JWT_PREVIOUS_SECRETS``.
    """

    def test_previous_secret_accepted(self) -> None:
        """
        A token signed before a rotation verifies after it when its secret
        is among the previous ones; new tokens use the new secret.
        """
        before = self.make(OLD).issue("alice", "CORE", ["admin"])
        rotated = self.make(SECRET, previous_secrets=[OLDER, OLD])
        self.assertEqual(rotated.verify(before).project_id, "alice")
        after = rotated.issue("alice", "CORE", ["admin"])
        self.assertEqual(jwt.get_unverified_header(after)["kid"], key_id(SECRET))
        self.assertEqual(rotated.verify(after).project_id, "alice")

    def test_previous_secret_not_listed(self) -> None:
        """
        Once a secret is dropped from the previous ones, its tokens are
        refused.
        """
        before = self.make(OLD).issue("alice", "CORE", ["admin"])
        self.refused(before, self.make(SECRET))
        self.refused(before, self.make(SECRET, previous_secrets=[OLDER]))

    def test_previous_secret_never_signs(self) -> None:
        """
        Previous secrets verify only: new tokens never carry their ``kid``.
        """
        rotated = self.make(SECRET, previous_secrets=[OLD])
        token = rotated.issue("alice", "CORE", [])
        self.assertEqual(jwt.get_unverified_header(token)["kid"], key_id(SECRET))
        self.assertRaises(
            jwt.InvalidSignatureError,
            jwt.decode,
            token,
            OLD,
            algorithms=["HS256"],
            audience=AUDIENCE,
        )

    def test_unknown_secret(self) -> None:
        """
        A token signed with a secret the gateway does not know is refused,
        whatever ``kid`` it claims.
        """
        for kid in ("auto", key_id(SECRET), key_id(OLD), None, "nonsense"):
            self.refused(
                sign(claims(), STRANGER, kid),
                self.make(SECRET, previous_secrets=[OLD]),
            )

    def test_kid_names_one_key(self) -> None:
        """
        A token whose ``kid`` names one known secret but is signed with
        another known secret is refused.
        """
        authority = self.make(SECRET, previous_secrets=[OLD])
        self.refused(sign(claims(), OLD, key_id(SECRET)), authority)

    def test_unknown_kid(self) -> None:
        """
        A token whose ``kid`` names no secret the gateway holds is tried
        against every secret, like one without ``kid``: it verifies when
        signed with the current or a listed previous secret, and is refused
        otherwise.
        """
        authority = self.make(SECRET, previous_secrets=[OLD])
        for kid in ("deadbeef", "", key_id(OLDER)):
            for secret in (SECRET, OLD):
                token = sign(claims(), secret, kid)
                self.assertEqual(authority.verify(token).project_id, "alice")
            self.refused(sign(claims(), OLDER, kid), authority)
            self.refused(sign(claims(), STRANGER, kid), authority)

    def test_unknown_kid_cached(self) -> None:
        """
        A verified token with an unknown ``kid`` is cached by its whole
        text: the same header and claims under another secret are still
        refused, and revoking the token holds for later checks.
        """
        token = sign(claims(), SECRET, "deadbeef")
        self.authority.verify(token)
        self.authority.verify(token)
        self.refused(sign(claims(), STRANGER, "deadbeef"))
        self.authority.revoke(self.authority.verify(token))
        self.refused(token)
        self.refused(sign(claims(), SECRET, kid=None))

    def test_kid_not_a_string(self) -> None:
        """
        A ``kid`` that is not a string is refused, not an error.
        """
        for kid in (7, ["x"], {"a": 1}, None):
            self.refused(raw_sign({"alg": "HS256", "typ": "JWT", "kid": kid}, claims()))

    def test_original_format(self) -> None:
        """
        A token without ``kid`` (as the original gateway issued) and
        without ``jti`` verifies against the current secret and against
        each previous one.
        """
        authority = self.make(SECRET, previous_secrets=[OLD, OLDER])
        for secret in (SECRET, OLD, OLDER):
            token = sign(claims(jti=None), secret, kid=None)
            verified = authority.verify(token)
            self.assertEqual(verified.project_id, "alice")
            self.assertIsNone(verified.jti)

    def test_empty_previous_secret_ignored(self) -> None:
        """
        An empty previous secret never becomes a verification key.
        """
        authority = self.make(SECRET, previous_secrets=[""])
        self.refused(raw_sign({"alg": "HS256", "typ": "JWT"}, claims(), ""), authority)


class AlgorithmTests(AuthorityCase):
    """
    Only HS256 is accepted.
    """

    def test_none_refused(self) -> None:
        """
        ``alg: none`` (in any spelling), with or without a ``kid``, is
        refused.
        """
        for alg in ("none", "None", "NONE"):
            for header in (
                {"alg": alg, "typ": "JWT"},
                {"alg": alg, "typ": "JWT", "kid": key_id(SECRET)},
            ):
                self.refused(unsigned(claims(), header))

    def test_unknown_kid_other_algorithms(self) -> None:
        """
        An unknown ``kid`` does not open the door to ``alg: none`` or to
        another HMAC signed with the right secret.
        """
        for alg in ("none", "None"):
            header = {"alg": alg, "typ": "JWT", "kid": "deadbeef"}
            self.refused(unsigned(claims(), header))
        for alg in ("HS384", "HS512"):
            self.refused(sign(claims(), SECRET, "deadbeef", algorithm=alg))

    def test_other_hmac_refused(self) -> None:
        """
        HS384 and HS512 signed with the right secret are refused.
        """
        for alg in ("HS384", "HS512"):
            self.refused(sign(claims(), SECRET, algorithm=alg))
            self.refused(sign(claims(), SECRET, kid=None, algorithm=alg))

    def test_asymmetric_refused(self) -> None:
        """
        An RS256 or ES256 header is refused.
        """
        for alg in ("RS256", "ES256", "PS256"):
            header = {"alg": alg, "typ": "JWT", "kid": key_id(SECRET)}
            self.refused(unsigned(claims(), header) + "c2lnbmF0dXJl")

    def test_tampered(self) -> None:
        """
        Changing the payload after signing breaks the signature.
        """
        token = sign(claims())
        header, _, signature = token.split(".")
        forged = b64(json.dumps(claims(projectId="mallory")).encode())
        self.refused("%s.%s.%s" % (header, forged, signature))

    def test_malformed(self) -> None:
        """
        Garbage is refused, not an error.
        """
        for token in ("", "x", "a.b", "a.b.c", "....", "e30.e30.", "\u00e9.\u00e9.x"):
            self.refused(token)


class TimeTests(AuthorityCase):
    """
    ``exp``, ``iat`` and ``nbf`` against the injected clock, with leeway.
    """

    def test_expiry_without_skew(self) -> None:
        """
        With no leeway a token is valid until just before ``exp``.
        """
        token = self.authority.issue("alice", "CORE", [])
        self.clock.advance(LIFETIME - 1)
        self.authority.verify(token)
        self.clock.advance(1)
        self.refused(token)

    def test_expiry_with_skew(self) -> None:
        """
        ``--clock-skew`` extends acceptance past ``exp`` by that much.
        """
        authority = self.make(clock_skew=30)
        token = authority.issue("alice", "CORE", [])
        self.clock.advance(LIFETIME + 29)
        authority.verify(token)
        self.clock.advance(1)
        self.refused(token, authority)

    def test_expired_before_first_sight(self) -> None:
        """
        A token first seen after its expiry is refused.
        """
        self.refused(sign(claims(iat=NOW - 4000, exp=NOW - 400)))
        self.refused(sign(claims(iat=NOW - 4000, exp=NOW)))
        authority = self.make(clock_skew=500)
        authority.verify(sign(claims(iat=NOW - 4000, exp=NOW - 400)))

    def test_issued_in_the_future(self) -> None:
        """
        A token issued later than now is refused unless within the leeway.
        """
        token = sign(claims(iat=NOW + 10, exp=NOW + 3610))
        self.refused(token)
        self.make(clock_skew=10).verify(token)
        self.refused(token, self.make(clock_skew=9))

    def test_not_before(self) -> None:
        """
        ``nbf`` in the future is refused unless within the leeway; in the
        past it is fine.
        """
        token = sign(claims(nbf=NOW + 5))
        self.refused(token)
        self.make(clock_skew=5).verify(token)
        self.authority.verify(sign(claims(nbf=NOW - 5)))
        self.clock.advance(5)
        self.authority.verify(token)

    def test_time_claim_shapes(self) -> None:
        """
        Missing, non-numeric, boolean, infinite, NaN or absurdly large time
        claims are refused, not errors.
        """
        for overrides in (
            {"exp": None},
            {"exp": "9999999999"},
            {"iat": str(NOW)},
            {"exp": True},
            {"iat": [NOW]},
            {"nbf": "0"},
            {"nbf": False},
            {"exp": float("inf")},
            {"exp": float("nan")},
            {"iat": float("-inf")},
            {"nbf": float("nan")},
            {"exp": 10**400},
        ):
            self.refused(sign(claims(**overrides)))
        for name in ("exp", "iat"):
            payload = claims()
            payload[name] = None
            self.refused(raw_sign({"alg": "HS256", "typ": "JWT"}, payload))

    def test_without_iat(self) -> None:
        """
        ``iat`` is optional: a token without it verifies, and its ``exp``
        and ``nbf`` are checked as for any other token.
        """
        self.authority.verify(sign(claims(iat=None)))
        self.authority.verify(sign(claims(iat=None, jti=None), kid=None))
        self.refused(sign(claims(iat=None, exp=NOW)))
        self.refused(sign(claims(iat=None, nbf=NOW + 5)))
        token = sign(claims(iat=None, jti="without-iat"))
        self.authority.verify(token)
        self.clock.advance(LIFETIME)
        self.refused(token)

    def test_float_times(self) -> None:
        """
        Fractional time claims are numbers like any other.
        """
        self.authority.verify(sign(claims(iat=NOW - 0.5, exp=NOW + 0.5)))


class ShapeTests(AuthorityCase):
    """
    The claims must fit the shapes of §3.
    """

    def test_defaults(self) -> None:
        """
        ``scopes``, ``environment`` and ``issuedBy`` may be missing; the
        defaults are ``[]``, ``production`` and the issuer; the role is then
        ``admin``.
        """
        verified = self.authority.verify(
            sign(claims(scopes=None, environment=None, issuedBy=None, jti=None))
        )
        self.assertEqual(verified.scopes, ())
        self.assertEqual(verified.role, "admin")
        self.assertEqual(verified.environment, "production")
        self.assertEqual(verified.issued_by, ISSUER)

    def test_every_route(self) -> None:
        """
        Each route name of §3 is accepted.
        """
        for route in ("AUTH", "KV", "BUILD", "CORE", "BASE", "WEBHOOK"):
            self.assertEqual(
                self.authority.verify(sign(claims(route=route))).route, route
            )

    def test_bad_shapes(self) -> None:
        """
        A claim of the wrong shape, a wrong ``iss`` or ``aud`` make the
        token invalid.
        """
        for overrides in (
            {"projectId": None},
            {"projectId": "abc"},
            {"projectId": 1234},
            {"projectId": ["alice"]},
            {"route": None},
            {"route": "core"},
            {"route": "ADMIN"},
            {"route": ["CORE"]},
            {"route": {"CORE": 1}},
            {"scopes": "admin"},
            {"scopes": [""]},
            {"scopes": [1]},
            {"scopes": [None]},
            {"scopes": {"admin": True}},
            {"environment": "development"},
            {"environment": ["production"]},
            {"environment": {"a": 1}},
            {"issuedBy": 7},
            {"issuedBy": ["x"]},
            {"iss": None},
            {"iss": "evil.example"},
            {"aud": None},
            {"aud": "someone-else"},
            {"jti": 5},
            {"jti": ""},
        ):
            self.refused(sign(claims(**overrides)))

    def test_payload_not_an_object(self) -> None:
        """
        A signed payload that is not a JSON object is refused.
        """
        for payload in ([1, 2, 3], "alice", 7, None):
            self.refused(raw_sign({"alg": "HS256", "typ": "JWT"}, payload))


class RevocationTests(AuthorityCase):
    """
    Revoking tokens through the authority.
    """

    def test_revoke(self) -> None:
        """
        A revoked token is refused; other tokens of the same user are not.
        """
        token = self.authority.issue("alice", "CORE", [])
        other = self.authority.issue("alice", "CORE", [])
        self.authority.revoke(self.authority.verify(token))
        self.refused(token)
        self.authority.verify(other)

    def test_revoked_until_expiry(self) -> None:
        """
        The revocation outlives the token by the leeway, then is forgotten.
        """
        authority = self.make(clock_skew=60)
        token = authority.issue("alice", "CORE", [])
        authority.revoke(authority.verify(token))
        self.clock.advance(LIFETIME + 59)
        self.refused(token, authority)
        self.clock.advance(1)
        self.refused(token, authority)
        authority.revoke(authority.verify(authority.issue("bob-", "CORE", [])))
        self.assertEqual(len(authority.revocations), 1)  # type: ignore[arg-type]

    def test_cached_token_revoked(self) -> None:
        """
        Revocation applies to a token already verified (and cached).
        """
        token = self.authority.issue("alice", "CORE", [])
        for _ in range(3):
            self.authority.verify(token)
        self.authority.revoke(self.authority.verify(token))
        self.refused(token)
        self.refused(token)

    def test_cached_token_expires(self) -> None:
        """
        Expiry applies to a token already verified (and cached).
        """
        token = self.authority.issue("alice", "CORE", [])
        self.authority.verify(token)
        self.clock.advance(LIFETIME)
        self.refused(token)

    def test_cache_bounded(self) -> None:
        """
        The verified-token cache holds a bounded number of tokens, and a
        token dropped from it still verifies.
        """
        first = self.authority.issue("alice", "CORE", [])
        self.authority.verify(first)
        for _ in range(5000):
            self.authority.verify(self.authority.issue("alice", "CORE", []))
        self.assertLessEqual(len(self.authority._verified), 4096)
        self.assertNotIn(first, self.authority._verified)
        self.authority.verify(first)

    def test_original_format_revocable(self) -> None:
        """
        A token without ``jti`` (the original format) can be revoked too,
        and re-spelling its signature's base64 (whose last character carries
        two unused bits) does not get around that.
        """
        token = sign(claims(jti=None), SECRET, kid=None)
        self.authority.revoke(self.authority.verify(token))
        self.refused(token)
        head, _, signature = token.rpartition(".")
        # The last character of a 32-byte signature carries 2 unused bits.
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        index = alphabet.index(signature[-1])
        variant = "%s.%s%s" % (head, signature[:-1], alphabet[index ^ 1])
        self.assertNotEqual(variant, token)
        self.refused(variant)

    def test_token_without_jti_distinct(self) -> None:
        """
        Revoking one original-format token leaves another one valid.
        """
        one = sign(claims(jti=None), SECRET, kid=None)
        two = sign(claims(jti=None, iat=NOW - 1), SECRET, kid=None)
        self.authority.revoke(self.authority.verify(one))
        self.authority.verify(two)

    def test_shared_revocation_list(self) -> None:
        """
        Two authorities given one revocation list agree on revocations:
        the seam a shared store would use.
        """
        shared = RevocationList(self.clock.seconds)
        one = self.make(revocations=shared)
        two = self.make(revocations=shared)
        token = one.issue("alice", "CORE", [])
        two.revoke(two.verify(token))
        self.refused(token, one)


class RevocationListTests(SynchronousTestCase):
    """
    :class:`RevocationList`: bounded, and failing closed when full.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)

    def test_interface(self) -> None:
        """
        :class:`RevocationList` provides :class:`IRevocationList`.
        """
        self.assertTrue(
            verifyObject(IRevocationList, RevocationList(self.clock.seconds))
        )

    def test_revoke_and_expire(self) -> None:
        """
        A revocation holds until its time, then is purged.
        """
        revoked = RevocationList(self.clock.seconds)
        revoked.revoke("a", "alice", NOW + 10)
        self.assertTrue(revoked.is_revoked("a", "alice", NOW + 10))
        self.assertFalse(revoked.is_revoked("b", "alice", NOW + 10))
        self.clock.advance(10)
        self.assertFalse(revoked.is_revoked("a", "alice", NOW + 10))
        revoked.revoke("c", "alice", NOW + 20)
        self.assertEqual(len(revoked), 1)

    def test_already_expired_ignored(self) -> None:
        """
        Revoking a token that has already expired remembers nothing.
        """
        revoked = RevocationList(self.clock.seconds)
        revoked.revoke("a", "alice", NOW)
        self.assertEqual(len(revoked), 0)

    def test_revoke_twice(self) -> None:
        """
        Revoking the same token twice remembers it once.
        """
        revoked = RevocationList(self.clock.seconds)
        revoked.revoke("a", "alice", NOW + 10)
        revoked.revoke("a", "alice", NOW + 10)
        self.assertEqual(len(revoked), 1)

    def test_per_subject_bound_fails_closed(self) -> None:
        """
        Past the per-subject bound the revocations closest to expiry are
        replaced by a floor: every one of them stays refused, tokens of that
        subject expiring even sooner are refused too, and other subjects are
        untouched.
        """
        revoked = RevocationList(self.clock.seconds, limit=1000, per_subject_limit=10)
        for i in range(25):
            revoked.revoke("guest-%d" % (i,), "guest", NOW + 100 + i)
        self.assertEqual(len(revoked), 10)
        for i in range(25):
            self.assertTrue(
                revoked.is_revoked("guest-%d" % (i,), "guest", NOW + 100 + i)
            )
        # Collateral: an unrevoked guest token expiring before the floor.
        self.assertTrue(revoked.is_revoked("other", "guest", NOW + 50))
        # A guest token expiring later is fine, and so is everyone else.
        self.assertFalse(revoked.is_revoked("other", "guest", NOW + 200))
        self.assertFalse(revoked.is_revoked("other", "alice", NOW + 50))

    def test_overall_bound_fails_closed(self) -> None:
        """
        Past the overall bound the revocation closest to expiry is replaced
        by a floor for everyone: still refused, never valid again.
        """
        revoked = RevocationList(self.clock.seconds, limit=5, per_subject_limit=5)
        for i in range(8):
            revoked.revoke("t%d" % (i,), "user-%d" % (i,), NOW + 100 + i)
        self.assertEqual(len(revoked), 5)
        for i in range(8):
            self.assertTrue(
                revoked.is_revoked("t%d" % (i,), "user-%d" % (i,), NOW + 100 + i)
            )
        self.assertTrue(revoked.is_revoked("x", "anyone", NOW + 102))
        self.assertFalse(revoked.is_revoked("x", "anyone", NOW + 103))

    def test_floors_expire(self) -> None:
        """
        Once past, floors refuse nothing more (everything under them has
        expired) and are forgotten.
        """
        revoked = RevocationList(self.clock.seconds, limit=1000, per_subject_limit=1)
        revoked.revoke("a", "guest", NOW + 10)
        revoked.revoke("b", "guest", NOW + 20)
        self.assertTrue(revoked.is_revoked("a", "guest", NOW + 10))
        self.clock.advance(30)
        revoked.revoke("c", "guest", NOW + 100)
        self.assertFalse(revoked.is_revoked("d", "guest", NOW + 40))
        self.assertEqual(revoked._floors, {})

    def test_flood_stays_bounded(self) -> None:
        """
        A long flood of revocations by one subject keeps memory (entries and
        internal heaps) near the bound.
        """
        revoked = RevocationList(self.clock.seconds, limit=100, per_subject_limit=20)
        for i in range(5000):
            revoked.revoke("g%d" % (i,), "guest", NOW + 3600 + i)
            if i % 7 == 0:
                revoked.revoke("u%d" % (i,), "user-%d" % (i % 13,), NOW + 3600 + i)
        self.assertLessEqual(len(revoked), 100)
        self.assertLessEqual(len(revoked._heap), 2 * 100 + 64 + 1)
        for heap in revoked._subject_heaps.values():
            self.assertLessEqual(len(heap), 2 * 20 + 64 + 1)
        self.assertTrue(revoked.is_revoked("g0", "guest", NOW + 3600))
        self.assertTrue(revoked.is_revoked("g4999", "guest", NOW + 3600 + 4999))
        self.clock.advance(3600 + 5000)
        revoked.revoke("last", "alice", NOW + 10000)
        self.assertEqual(len(revoked), 1)

    def test_authority_flood_of_guest_logouts(self) -> None:
        """
        Through the authority: a flood of guest logouts past the bounds
        never makes a revoked token valid again, and leaves a user's
        unrevoked tokens alone.
        """
        revoked = RevocationList(self.clock.seconds, limit=50, per_subject_limit=10)
        authority = TokenAuthority(SECRET, self.clock.seconds, revocations=revoked)
        alice = authority.issue("alice", "CORE", [])
        alice_out = authority.issue("alice", "CORE", [])
        authority.revoke(authority.verify(alice_out))
        guests = []
        for _ in range(200):
            self.clock.advance(1)
            token = authority.issue("guest", "BUILD", ["guest"])
            authority.revoke(authority.verify(token))
            guests.append(token)
        for token in guests + [alice_out]:
            self.assertRaises(InvalidToken, authority.verify, token)
        authority.verify(alice)


class BearerTokenTests(SynchronousTestCase):
    """
    :func:`bearer_token`.
    """

    def test_parse(self) -> None:
        """
        The token after ``Bearer`` (any case, extra spaces) is returned;
        anything else is ``None``.
        """
        self.assertEqual(bearer_token(b"Bearer abc.def.ghi"), "abc.def.ghi")
        self.assertEqual(bearer_token(b"bearer   abc "), "abc")
        self.assertEqual(bearer_token(b"BEARER abc"), "abc")
        for value in (
            None,
            b"",
            b"Bearer",
            b"Bearer ",
            b"Basic dXNlcjpwYXNz",
            b"Token abc",
            b"Bearer \xff\xfe",
        ):
            self.assertIsNone(bearer_token(value))

    def test_request_token(self) -> None:
        """
        :func:`request_token` reads a request's one ``Authorization``
        header; none, or more than one, is no token.
        """
        self.assertEqual(
            request_token(Headers({b"Authorization": [b"Bearer abc"]})), "abc"
        )
        for values in ([], [b"Bearer abc", b"Bearer abc"], [b"Basic x", b"Bearer abc"]):
            headers = Headers({b"Authorization": values} if values else {})
            self.assertIsNone(request_token(headers))
