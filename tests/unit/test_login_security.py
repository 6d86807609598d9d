"""
Security behaviour through the whole in-memory gateway
(:class:`metagateway.testing.GatewayHarness`): login throttling, trusted proxies,
revocation by ``/core/logout``, key rotation, clock-skew leeway, scrypt
records, and nothing secret in answers or logs.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import jwt
from zope.interface import implementer

from twisted.internet.defer import Deferred, fail
from twisted.logger import globalLogPublisher
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from metagateway.addresses import TrustedProxies
from metagateway.auth.passwords import make_record
from metagateway.auth.throttle import LoginThrottle
from metagateway.auth.tokens import key_id
from metagateway.config import ConfigurationError
from metagateway.credentials.directory import DirectoryCredentialStore
from metagateway.credentials.interfaces import (
    AccountRecord,
    ICredentialStore,
    StoreUnavailable,
    UnknownAccount,
)
from metagateway.credentials.memory import MemoryCredentialStore
from metagateway.testing import (
    PASSWORD,
    SECRET,
    USERNAME,
    FakeThreadPool,
    GatewayHarness,
    ImmediateReactor,
    make_config,
)
from tests.helpers import (
    assert_invalid_credentials,
    assert_json,
    assert_json_error,
    token_claims,
)

OLD_SECRET = "the-secret-we-used-last-month-32-bytes!!"
STRANGER = "a-secret-this-gateway-never-heard-of-32b"

#: Cheap scrypt parameters, so the tests stay fast.
FAST = {"n": 2**8, "r": 8, "p": 1, "dklen": 32}


def login_body(username: Any = USERNAME, password: Any = PASSWORD) -> bytes:
    return json.dumps({"username": username, "password": password}).encode()


@implementer(ICredentialStore)
class CountingStore:
    """
    A memory store that counts lookups.
    """

    def __init__(self, *records: AccountRecord) -> None:
        self.inner = MemoryCredentialStore(
            records or [make_record(USERNAME, PASSWORD, "admin")]
        )
        self.lookups = 0

    def lookup(self, username: str) -> Deferred[AccountRecord]:
        self.lookups += 1
        return self.inner.lookup(username)


@implementer(ICredentialStore)
class PendingStore:
    """
    A store whose lookups wait until the test answers them.

    :ivar pending: ``(username, Deferred)`` of each unanswered lookup.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[str, Deferred[AccountRecord]]] = []

    def lookup(self, username: str) -> Deferred[AccountRecord]:
        d: Deferred[AccountRecord] = Deferred()
        self.pending.append((username, d))
        return d


@implementer(ICredentialStore)
class DownStore:
    """
    A store that cannot answer.
    """

    def lookup(self, username: str) -> Deferred[AccountRecord]:
        return fail(StoreUnavailable("down"))


class SecurityCase(SynchronousTestCase):
    """
    Helpers for requests through a harness.
    """

    def login(
        self,
        h: GatewayHarness,
        username: Any = USERNAME,
        password: Any = PASSWORD,
        path: str = "/auth/login",
        forwarded: Optional[str] = None,
    ) -> tuple[Any, bytes]:
        headers = {} if forwarded is None else {"X-Forwarded-For": forwarded}
        return h.request(  # type: ignore[no-any-return]
            self, "POST", path, data=login_body(username, password), headers=headers
        )

    def assert_throttled(
        self, response: Any, body: bytes, retry_after: int, route: str = "AUTH"
    ) -> None:
        document = assert_json_error(
            self, response, body, 429, "TOO_MANY_ATTEMPTS", route
        )
        self.assertEqual(response.phrase, b"Too Many Requests")
        self.assertEqual(
            response.headers.getRawHeaders(b"retry-after"), [b"%d" % (retry_after,)]
        )
        self.assertEqual(document["details"], {"retryAfter": retry_after})

    def assert_denied(self, response: Any, body: bytes, route: str = "AUTH") -> None:
        assert_invalid_credentials(self, response, body, route)
        self.assertIsNone(response.headers.getRawHeaders(b"retry-after"))

    def bearer(self, token: str) -> dict[str, str]:
        return {"Authorization": "Bearer " + token}


class ThrottleTests(SecurityCase):
    """
    Failed logins per username and per address (defaults 5 and 20 per 60 s).
    """

    def test_per_user_limit(self) -> None:
        """
        After 5 failures for a username the next attempts, even with the
        right password, get ``429 TOO_MANY_ATTEMPTS`` with ``Retry-After``
        and never reach the store; after the window the right password
        works.
        """
        store = CountingStore()
        h = GatewayHarness(store=store)
        for _ in range(5):
            self.assert_denied(*self.login(h, password="guess"))
        self.assertEqual(store.lookups, 5)
        self.assert_throttled(*self.login(h, password="guess"), 60)
        self.assert_throttled(*self.login(h), 60)
        self.assertEqual(store.lookups, 5)
        h.clock.advance(20)
        self.assert_throttled(*self.login(h), 40)
        h.clock.advance(40)
        response, body = self.login(h)
        self.assertEqual(response.code, 200, body)

    def test_unknown_user_same_answers(self) -> None:
        """
        An unknown username is throttled exactly like a known one, so the
        429 tells nothing about which accounts exist.
        """
        h = GatewayHarness()
        for name in (USERNAME, "nobody-at-all"):
            answers = []
            for _ in range(6):
                response, body = self.login(h, name, "guess")
                answers.append(response.code)
            self.assertEqual(answers, [401] * 5 + [429])

    def test_shared_between_endpoints(self) -> None:
        """
        ``/auth/login`` and ``/core/auth/login`` share the counters; errors
        carry each endpoint's route.
        """
        h = GatewayHarness()
        for _ in range(3):
            self.assert_denied(*self.login(h, password="x"))
        for _ in range(2):
            self.assert_denied(
                *self.login(h, password="x", path="/core/auth/login"), route="CORE"
            )
        self.assert_throttled(*self.login(h), 60)
        self.assert_throttled(*self.login(h, path="/core/auth/login"), 60, "CORE")

    def test_success_resets_user(self) -> None:
        """
        A successful login resets the username's count.
        """
        h = GatewayHarness()
        for _ in range(4):
            self.assert_denied(*self.login(h, password="x"))
        self.assertEqual(self.login(h)[0].code, 200)
        for _ in range(4):
            self.assert_denied(*self.login(h, password="x"))
        self.assertEqual(self.login(h)[0].code, 200)

    def test_other_users_unaffected(self) -> None:
        """
        Holding back one username does not hold back another.
        """
        h = GatewayHarness(
            store=MemoryCredentialStore(
                [make_record(USERNAME, PASSWORD), make_record("bobby", "pw")]
            )
        )
        for _ in range(5):
            self.login(h, password="x")
        self.assert_throttled(*self.login(h), 60)
        self.assertEqual(self.login(h, "bobby", "pw")[0].code, 200)

    def test_bad_requests_not_counted(self) -> None:
        """
        Requests missing a field are ``400`` and count as nothing.
        """
        h = GatewayHarness()
        for _ in range(20):
            response, body = h.request(
                self, "POST", "/auth/login", data=json.dumps({"username": USERNAME})
            )
            assert_json_error(self, response, body, 400, "INVALID_REQUEST")
        self.assertEqual(self.login(h)[0].code, 200)

    def test_store_unavailable_not_counted(self) -> None:
        """
        Logins the store could not decide (``503``) count against nothing.
        """
        h = GatewayHarness(store=DownStore())
        for _ in range(30):
            response, body = self.login(h)
            assert_json_error(self, response, body, 503, "CREDENTIAL_STORE_UNAVAILABLE")
        self.assertIsNone(h.gateway.throttle.retry_after(USERNAME, "127.0.0.1"))

    def test_concurrent_guesses_held(self) -> None:
        """
        Guesses sent all at once, before the store has answered any, are
        held to the limit: the rest are refused without a lookup.
        """
        store = PendingStore()
        h = GatewayHarness(store=store)
        responses = [
            h.client.request(
                "POST", "http://gateway.test/auth/login", data=login_body(password="x")
            )
            for _ in range(12)
        ]
        h.flush()
        self.assertEqual(len(store.pending), 5)
        for _, d in store.pending:
            d.errback(UnknownAccount(USERNAME))
        h.flush()
        codes = sorted(self.successResultOf(d).code for d in responses)
        self.assertEqual(codes, [401] * 5 + [429] * 7)

    def test_limits_off(self) -> None:
        """
        ``0`` turns each limit off.
        """
        h = GatewayHarness(
            config=make_config(login_failures_per_user=0, login_failures_per_address=0)
        )
        for _ in range(60):
            self.assert_denied(*self.login(h, password="x"))
        self.assertEqual(self.login(h)[0].code, 200)

    def test_per_user_off_per_address_on(self) -> None:
        """
        With the per-user limit off, the per-address one still applies.
        """
        h = GatewayHarness(
            config=make_config(login_failures_per_user=0, login_failures_per_address=7)
        )
        for _ in range(7):
            self.assert_denied(*self.login(h, password="x"))
        self.assert_throttled(*self.login(h), 60)

    def test_configured_limits(self) -> None:
        """
        The limits and the window come from the configuration.
        """
        h = GatewayHarness(
            config=make_config(login_failures_per_user=2, login_window=2)
        )
        for _ in range(2):
            self.assert_denied(*self.login(h, password="x"))
        self.assert_throttled(*self.login(h), 2)
        h.clock.advance(2)
        self.assertEqual(self.login(h)[0].code, 200)

    def test_no_secrets_in_429(self) -> None:
        """
        The 429 answer is the contract's JSON error and holds no password,
        salt or hash.
        """
        h = GatewayHarness()
        for _ in range(5):
            self.login(h, password="hunter2-guess")
        response, body = self.login(h, password="hunter2-guess")
        assert_json(self, response)
        self.assertNotIn(b"hunter2", body)
        self.assertNotIn(PASSWORD.encode(), body)


class AddressTests(SecurityCase):
    """
    The per-address limit and where the address comes from.
    """

    def test_per_address_limit(self) -> None:
        """
        Behind a trusted proxy, 20 failures from one client address for
        any usernames hold that address back; another address is not.
        """
        h = GatewayHarness(config=make_config(trusted_proxies=("127.0.0.1",)))
        for i in range(20):
            self.assert_denied(
                *self.login(h, "user-%d" % (i,), "x", forwarded="203.0.113.5")
            )
        self.assert_throttled(*self.login(h, forwarded="203.0.113.5"), 60)
        self.assertEqual(self.login(h, forwarded="203.0.113.6")[0].code, 200)

    def test_success_not_counted_against_address(self) -> None:
        """
        Many successful logins from one address never hold it back.
        """
        h = GatewayHarness(
            config=make_config(login_failures_per_address=3),
        )
        for _ in range(10):
            self.assertEqual(self.login(h)[0].code, 200)

    def test_untrusted_peer_forwarded_ignored(self) -> None:
        """
        ``X-Forwarded-For`` from a peer that is not a trusted proxy is
        ignored: varying it does not escape the per-address limit.
        """
        h = GatewayHarness()
        for i in range(20):
            self.assert_denied(
                *self.login(h, "user-%d" % (i,), "x", forwarded="198.51.100.%d" % (i,))
            )
        self.assert_throttled(*self.login(h, forwarded="198.51.100.99"), 60)

    def test_spoofed_hops_ignored(self) -> None:
        """
        Behind a trusted proxy the nearest untrusted hop counts: what the
        client itself put in ``X-Forwarded-For`` does not.
        """
        h = GatewayHarness(
            config=make_config(trusted_proxies=("127.0.0.1", "10.0.0.2"))
        )
        for i in range(20):
            self.assert_denied(
                *self.login(
                    h,
                    "user-%d" % (i,),
                    "x",
                    forwarded="198.51.100.%d, 203.0.113.5, 10.0.0.2" % (i,),
                )
            )
        self.assert_throttled(
            *self.login(h, forwarded="192.0.2.1, 203.0.113.5, 10.0.0.2"), 60
        )
        self.assertEqual(self.login(h, forwarded="203.0.113.7, 10.0.0.2")[0].code, 200)

    def test_ipv6_by_network(self) -> None:
        """
        IPv6 clients count by ``/64``: rotating the interface identifier
        does not escape the per-address limit.
        """
        h = GatewayHarness(config=make_config(trusted_proxies=("127.0.0.1",)))
        for i in range(20):
            self.assert_denied(
                *self.login(
                    h, "user-%d" % (i,), "x", forwarded="2001:db8::%x" % (i + 1,)
                )
            )
        self.assert_throttled(*self.login(h, forwarded="2001:db8::abcd"), 60)
        self.assertEqual(self.login(h, forwarded="2001:db8:0:1::1")[0].code, 200)


class TrustedProxiesTests(SecurityCase):
    """
    :class:`TrustedProxies`: which peers are trusted proxies.
    """

    def test_addresses_and_networks(self) -> None:
        """
        An address matches itself, however it is written; a network
        matches every address in it; nothing else matches.
        """
        trusted = TrustedProxies(["10.0.0.7", "172.16.0.0/12", "fd00::/8", "::1"])
        for host in (
            "10.0.0.7",
            "::ffff:10.0.0.7",
            "172.16.0.1",
            "172.31.255.254",
            "::ffff:172.20.1.1",
            "fd12:3456::1",
            "FD00::1",
            "[fd00::2]",
            "::1",
            "0:0:0:0:0:0:0:1",
        ):
            self.assertIn(host, trusted)
        for host in (
            "10.0.0.8",
            "172.32.0.1",
            "fe80::1",
            "unix",
            "",
            "10.0.0.7, 10.0.0.8",
            "not an address",
        ):
            self.assertNotIn(host, trusted)
        self.assertTrue(trusted)
        self.assertFalse(TrustedProxies([]))
        self.assertNotIn("10.0.0.7", TrustedProxies([]))

    def test_bad_entry(self) -> None:
        """
        An entry that is neither an address nor a network is refused, and
        a gateway configured with one is not built.
        """
        self.assertRaises(ValueError, TrustedProxies, ["lb.internal"])
        self.assertRaises(
            ConfigurationError,
            GatewayHarness,
            config=make_config(trusted_proxies=("10.0.0.1", "lb.internal")),
        )

    def test_network_of_proxies(self) -> None:
        """
        Behind proxies named by a network, every hop in it is skipped and
        the nearest address outside counts against the limit.
        """
        h = GatewayHarness(
            config=make_config(trusted_proxies=("127.0.0.0/8", "10.0.0.0/24"))
        )
        for i in range(20):
            self.assertEqual(
                self.login(
                    h, "user-%d" % (i,), "x", forwarded="203.0.113.5, 10.0.0.%d" % (i,)
                )[0].code,
                401,
            )
        response = self.login(h, forwarded="203.0.113.5, 10.0.0.200, 10.0.0.9")[0]
        self.assertEqual(response.code, 429)
        self.assertEqual(self.login(h, forwarded="203.0.113.6, 10.0.0.1")[0].code, 200)


class BoundedStateTests(SecurityCase):
    """
    A flood of random usernames cannot exhaust memory, nor free a held-back
    account.
    """

    def test_flood_of_usernames(self) -> None:
        """
        Thousands of random usernames from many addresses leave each counter
        at its bound, and the account under attack still held back.
        """
        h = GatewayHarness(config=make_config(trusted_proxies=("127.0.0.1",)))
        throttle = LoginThrottle(5, 20, 60, h.clock.seconds, max_keys=100)
        h.gateway.auth.throttle = throttle
        for _ in range(5):
            self.login(h, password="x", forwarded="203.0.113.1")
        for i in range(1500):
            self.login(
                h,
                "random-%d" % (i,),
                "x",
                forwarded="198.51.%d.%d" % (i // 250, i % 250),
            )
        self.assertLessEqual(len(throttle.users), 100)
        self.assertLessEqual(len(throttle.addresses), 100)
        self.assert_throttled(*self.login(h, forwarded="192.0.2.200"), 60)

    def test_huge_usernames(self) -> None:
        """
        Usernames as large as the body allows cost a bounded key each.
        """
        h = GatewayHarness()
        throttle = LoginThrottle(5, 0, 60, h.clock.seconds, max_keys=20)
        h.gateway.auth.throttle = throttle
        for i in range(40):
            response, _ = self.login(h, ("%d" % (i,)) * 30_000, "x")
            self.assertEqual(response.code, 401)
        self.assertEqual(len(throttle.users), 20)
        self.assertLessEqual(max(len(k) for k in throttle.users._counting), 80)


class RevocationTests(SecurityCase):
    """
    ``POST /core/logout`` revokes the token it is sent with.
    """

    def test_logout_refused_everywhere(self) -> None:
        """
        After logout the token is refused by ``/core/session``,
        ``/core/session/refresh``, ``/build`` and a proxied ``/core`` path;
        the user's other tokens still work.
        """
        h = GatewayHarness()
        token = h.login(self)
        other = h.login(self, "/core/auth/login")
        response, _ = h.request(
            self, "GET", "/core/session", headers=self.bearer(token)
        )
        self.assertEqual(response.code, 200)
        response, body = h.request(
            self, "POST", "/core/logout", headers=self.bearer(token)
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body), {"success": True})
        response, body = h.request(
            self, "GET", "/core/session", headers=self.bearer(token)
        )
        assert_json_error(self, response, body, 403, "INVALID_SESSION", "CORE")
        response, body = h.request(
            self, "POST", "/core/session/refresh", headers=self.bearer(token)
        )
        assert_json_error(self, response, body, 403, "REFRESH_FAILED", "CORE")
        response, body = h.request(self, "GET", "/build/x", headers=self.bearer(token))
        assert_json_error(self, response, body, 403, "INVALID_TOKEN", "BUILD")
        response, body = h.request(self, "GET", "/core/x", headers=self.bearer(token))
        assert_json_error(self, response, body, 403, "INVALID_TOKEN", "CORE")
        self.assertEqual(len(h.upstream.requests), 0)
        response, _ = h.request(self, "GET", "/build/x", headers=self.bearer(other))
        self.assertEqual(response.code, 200)

    def test_refused_until_expiry(self) -> None:
        """
        The revocation lasts as long as the token would have.
        """
        h = GatewayHarness()
        token = h.login(self)
        h.request(self, "POST", "/core/logout", headers=self.bearer(token))
        h.clock.advance(3599)
        response, body = h.request(self, "GET", "/build/x", headers=self.bearer(token))
        assert_json_error(self, response, body, 403, "INVALID_TOKEN")

    def test_logout_always_succeeds(self) -> None:
        """
        Logout answers ``200 {"success":true}`` without a token, with a bad
        one, and for an already revoked one.
        """
        h = GatewayHarness()
        token = h.login(self)
        for headers in (
            {},
            self.bearer("garbage"),
            {"Authorization": "Basic dXNlcjpwYXNz"},
            self.bearer(token),
            self.bearer(token),
        ):
            response, body = h.request(self, "POST", "/core/logout", headers=headers)
            self.assertEqual(response.code, 200)
            assert_json(self, response)
            self.assertEqual(json.loads(body), {"success": True})

    def test_guest_token_revocable(self) -> None:
        """
        A guest token can be logged out like any other.
        """
        h = GatewayHarness()
        response, body = h.request(self, "POST", "/auth/guest", data=b"{}")
        token = json.loads(body)["token"]
        self.assertEqual(
            h.request(self, "GET", "/build/x", headers=self.bearer(token))[0].code, 200
        )
        h.request(self, "POST", "/core/logout", headers=self.bearer(token))
        response, body = h.request(self, "GET", "/build/x", headers=self.bearer(token))
        assert_json_error(self, response, body, 403, "INVALID_TOKEN")

    def test_guest_logout_flood(self) -> None:
        """
        A flood of guest logouts past the revocation bound never makes a
        revoked token valid again, nor logs a user out.
        """
        from metagateway.auth.tokens import RevocationList

        h = GatewayHarness()
        h.gateway.tokens.revocations = RevocationList(
            h.clock.seconds, limit=40, per_subject_limit=10
        )
        user = h.login(self)
        logged_out = h.login(self)
        h.request(self, "POST", "/core/logout", headers=self.bearer(logged_out))
        for _ in range(60):
            h.clock.advance(1)
            _, body = h.request(self, "POST", "/auth/guest", data=b"{}")
            guest = json.loads(body)["token"]
            h.request(self, "POST", "/core/logout", headers=self.bearer(guest))
        response, _ = h.request(
            self, "GET", "/build/x", headers=self.bearer(logged_out)
        )
        self.assertEqual(response.code, 403)
        response, _ = h.request(self, "GET", "/build/x", headers=self.bearer(user))
        self.assertEqual(response.code, 200)


class RotationTests(SecurityCase):
    """
    Tokens signed with a former secret, by the original gateway, or badly.
    """

    def payload(self, h: GatewayHarness, **overrides: Any) -> dict[str, Any]:
        return token_claims(int(h.clock.seconds()), **overrides)

    def assert_accepted(self, h: GatewayHarness, token: str) -> None:
        response, body = h.request(
            self, "GET", "/core/session", headers=self.bearer(token)
        )
        self.assertEqual(response.code, 200, body)
        self.assertEqual(json.loads(body)["user"]["username"], USERNAME)
        response, _ = h.request(self, "GET", "/build/x", headers=self.bearer(token))
        self.assertEqual(response.code, 200)

    def assert_refused(self, h: GatewayHarness, token: str) -> None:
        response, body = h.request(
            self, "GET", "/core/session", headers=self.bearer(token)
        )
        assert_json_error(self, response, body, 403, "INVALID_SESSION", "CORE")
        response, body = h.request(self, "GET", "/build/x", headers=self.bearer(token))
        assert_json_error(self, response, body, 403, "INVALID_TOKEN", "BUILD")

    def test_previous_secret(self) -> None:
        """
        A token issued under the previous secret is accepted after the
        rotation: no forced logout.
        """
        before = GatewayHarness(config=make_config(jwt_secret=OLD_SECRET))
        token = before.login(self)
        h = GatewayHarness(config=make_config(previous_secrets=(OLD_SECRET,)))
        h.clock.advance(60)
        self.assert_accepted(h, token)
        response, body = h.request(
            self, "POST", "/core/session/refresh", headers=self.bearer(token)
        )
        fresh = json.loads(body)["token"]
        self.assertEqual(jwt.get_unverified_header(fresh)["kid"], key_id(SECRET))

    def test_unknown_secret(self) -> None:
        """
        A token signed with a secret the gateway does not hold is refused,
        with or without a ``kid``.
        """
        h = GatewayHarness(config=make_config(previous_secrets=(OLD_SECRET,)))
        self.assert_refused(h, jwt.encode(self.payload(h), STRANGER, algorithm="HS256"))
        self.assert_refused(
            h,
            jwt.encode(
                self.payload(h),
                STRANGER,
                algorithm="HS256",
                headers={"kid": key_id(SECRET)},
            ),
        )

    def test_dropped_secret(self) -> None:
        """
        Once dropped from the previous secrets, a secret's tokens are
        refused.
        """
        token = GatewayHarness(config=make_config(jwt_secret=OLD_SECRET)).login(self)
        self.assert_refused(GatewayHarness(), token)

    def test_original_format(self) -> None:
        """
        A token as the original gateway issued it (no ``kid``, no ``jti``)
        is accepted, whether signed with the current or a previous secret,
        and can be logged out.
        """
        h = GatewayHarness(config=make_config(previous_secrets=(OLD_SECRET,)))
        for age, secret in enumerate((SECRET, OLD_SECRET)):
            payload = self.payload(h, iat=int(h.clock.seconds()) - age)
            token = jwt.encode(payload, secret, algorithm="HS256")
            self.assertNotIn("kid", jwt.get_unverified_header(token))
            self.assert_accepted(h, token)
            h.request(self, "POST", "/core/logout", headers=self.bearer(token))
            self.assert_refused(h, token)

    def test_alg_none(self) -> None:
        """
        An unsigned ``alg: none`` token is refused.
        """
        h = GatewayHarness()
        token = jwt.encode(self.payload(h), None, algorithm="none")  # type: ignore[arg-type]
        self.assert_refused(h, token)
        self.assert_refused(h, token + "c2ln")

    def test_other_algorithm(self) -> None:
        """
        HS512 with the right secret is refused: HS256 only.
        """
        h = GatewayHarness()
        self.assert_refused(h, jwt.encode(self.payload(h), SECRET, algorithm="HS512"))

    def test_clock_skew(self) -> None:
        """
        ``clock_skew`` accepts a token that expired less than that long ago,
        or was issued up to that far in the future; without it, neither.
        """
        strict = GatewayHarness()
        lenient = GatewayHarness(config=make_config(clock_skew=30))
        now = int(strict.clock.seconds())
        recently_expired = self.payload(strict, iat=now - 3620, exp=now - 20)
        long_expired = self.payload(strict, iat=now - 3640, exp=now - 31)
        from_the_future = self.payload(strict, iat=now + 20, exp=now + 3620)
        not_yet = self.payload(strict, nbf=now + 25)
        for payload in (recently_expired, from_the_future, not_yet):
            token = jwt.encode(payload, SECRET, algorithm="HS256")
            self.assert_refused(strict, token)
            self.assert_accepted(lenient, token)
        self.assert_refused(
            lenient, jwt.encode(long_expired, SECRET, algorithm="HS256")
        )

    def test_expiry(self) -> None:
        """
        An issued token is accepted for an hour, then refused.
        """
        h = GatewayHarness()
        token = h.login(self)
        h.clock.advance(3599)
        self.assert_accepted(h, token)
        h.clock.advance(1)
        self.assert_refused(h, token)


class ScryptLoginTests(SecurityCase):
    """
    Logging in with scrypt records (as ``metagateway-admin --scheme
    scrypt`` writes them).
    """

    def test_memory_store(self) -> None:
        """
        An scrypt record logs in with its password and not without.
        """
        record = make_record(
            "scrypt-user", "pw", "editor", scheme="scrypt", params=FAST
        )
        h = GatewayHarness(store=MemoryCredentialStore([record]))
        response, body = self.login(h, "scrypt-user", "pw")
        self.assertEqual(response.code, 200, body)
        self.assertEqual(
            json.loads(body)["user"], {"username": "scrypt-user", "role": "editor"}
        )
        self.assert_denied(*self.login(h, "scrypt-user", "PW"))

    def test_directory_store(self) -> None:
        """
        An scrypt record with the default parameters, written to an
        accounts directory and read back, logs in.
        """
        root = FilePath(self.mktemp())
        DirectoryCredentialStore(root).store(
            make_record("scrypt-user", "pw", scheme="scrypt")
        )
        h = GatewayHarness(store=DirectoryCredentialStore(root))
        self.assertEqual(self.login(h, "scrypt-user", "pw")[0].code, 200)

    def test_unknown_user_costs_scrypt(self) -> None:
        """
        After an scrypt record has been checked, unknown usernames are
        checked against an scrypt decoy with its parameters.
        """
        record = make_record("scrypt-user", "pw", scheme="scrypt", params=FAST)
        h = GatewayHarness(store=MemoryCredentialStore([record]))
        self.login(h, "scrypt-user", "wrong")
        decoys = h.gateway.auth.decoys
        self.assertEqual(decoys.record.scheme, "scrypt")
        self.assertEqual(dict(decoys.record.params), FAST)
        self.assert_denied(*self.login(h, "nobody-at-all", "pw"))

    def test_checked_off_the_reactor(self) -> None:
        """
        While the gateway's service runs, an scrypt login is answered only
        once the password pool has checked it, and other requests are
        answered meanwhile.
        """
        record = make_record("scrypt-user", "pw", scheme="scrypt", params=FAST)
        h = GatewayHarness(store=MemoryCredentialStore([record]))
        pool = FakeThreadPool()
        h.gateway.passwords.pool = pool  # type: ignore[assignment]
        h.gateway.passwords.reactor = ImmediateReactor()
        right = h.client.post(
            "http://gateway.test/auth/login", data=login_body("scrypt-user", "pw")
        )
        wrong = h.client.post(
            "http://gateway.test/auth/login", data=login_body("scrypt-user", "x")
        )
        h.flush()
        self.assertNoResult(right)
        self.assertNoResult(wrong)
        self.assertEqual(len(pool.work), 2)
        self.assertEqual(h.request(self, "GET", "/health")[0].code, 200)
        pool.run()
        response, body = h.finish(self, right)
        self.assertEqual(response.code, 200, body)
        self.assert_denied(*h.finish(self, wrong))

    def test_bad_parameters_fail_closed(self) -> None:
        """
        A record whose scrypt parameters are out of bounds fails the login
        closed (``503``), counted against nothing.
        """
        record = AccountRecord(
            "scrypt-user", "s", "x", scheme="scrypt", params={"n": 2**20, "r": 32}
        )
        h = GatewayHarness(store=MemoryCredentialStore([record]))
        for _ in range(10):
            response, body = self.login(h, "scrypt-user", "pw")
            assert_json_error(self, response, body, 503, "CREDENTIAL_STORE_UNAVAILABLE")


class HygieneTests(SecurityCase):
    """
    Nothing secret reaches the logs.
    """

    def test_logs_clean(self) -> None:
        """
        Logins (good, bad, throttled, store down), sessions and logouts log
        no password, token, secret, salt or hash.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)  # type: ignore[arg-type]
        self.addCleanup(globalLogPublisher.removeObserver, events.append)  # type: ignore[arg-type]
        record = make_record(USERNAME, PASSWORD)
        h = GatewayHarness(
            config=make_config(previous_secrets=(OLD_SECRET,)),
            store=MemoryCredentialStore([record]),
        )
        token = h.login(self)
        for _ in range(6):
            self.login(h, password="guess-123")
        h.request(self, "GET", "/core/session", headers=self.bearer(token))
        h.request(self, "GET", "/build/x", headers=self.bearer(token))
        h.request(self, "POST", "/core/logout", headers=self.bearer(token))
        h.request(self, "GET", "/build/x", headers=self.bearer(token))
        down = GatewayHarness(store=DownStore())
        self.login(down)
        text = "\n".join(repr(event) for event in events)
        for secret in (
            PASSWORD,
            "guess-123",
            token,
            token.split(".")[2],
            SECRET,
            OLD_SECRET,
            record.salt,
            record.hash,
        ):
            self.assertNotIn(secret, text)
