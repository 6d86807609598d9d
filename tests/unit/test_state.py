"""
The shared security state held in one process: the contract every
implementation passes (:mod:`tests.statecontract`), and what the in-process
pieces add.
"""

from __future__ import annotations

from typing import Any, Callable, Coroutine

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from metagateway.auth.throttle import LoginThrottle
from metagateway.auth.tokens import TokenAuthority
from metagateway.config import ConfigurationError, StateSettings
from metagateway.state.memory import MemorySecurityState
from metagateway.state.revocations import RevocationList
from tests.statecontract import SecurityStateContractMixin


class SynchronousContractMixin(SecurityStateContractMixin):
    """
    Runs the contract's coroutines to the end at once: every Deferred an
    in-process state returns has fired (or fires when :meth:`settle` moves
    its transport along).
    """

    def run_async(self, test: Callable[[], Coroutine[Any, Any, None]]) -> Any:
        """
        Run ``test()``, which must finish without waiting on anything.
        """
        d = Deferred.fromCoroutine(test())
        self.successResultOf(d)  # type: ignore[attr-defined]

    async def propagated(self, check: Callable[[], bool]) -> None:
        """
        In one process, a change is seen at once.
        """
        self.assertTrue(check())  # type: ignore[attr-defined]


class MemoryStateContractTests(SynchronousContractMixin, SynchronousTestCase):
    """
    The contract for :class:`MemorySecurityState`: two handles are the same
    object.
    """

    async def make_states(
        self, per_user: int, per_address: int, window: float
    ) -> tuple[Any, Any]:
        state = MemorySecurityState(self.clock.seconds, per_user, per_address, window)
        return state, state


class RevocationListUserTests(SynchronousTestCase):
    """
    :class:`RevocationList`'s user revocations and its listing of what it
    holds (what a shared state writes back after a store restart).
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.revoked = RevocationList(self.clock.seconds)

    def test_entries(self) -> None:
        """
        :meth:`RevocationList.entries` and :meth:`RevocationList.user_entries`
        list the live revocations, not the expired ones.
        """
        self.revoked.revoke("a", "alice", 1010)
        self.revoked.revoke("b", "bob1", 1100)
        self.revoked.revoke_user("carol", 999, 1050)
        self.assertEqual(
            sorted(self.revoked.entries()), [("a", "alice", 1010), ("b", "bob1", 1100)]
        )
        self.assertEqual(list(self.revoked.user_entries()), [("carol", 999, 1050)])
        self.clock.advance(60)
        self.assertEqual(list(self.revoked.entries()), [("b", "bob1", 1100)])
        self.assertEqual(list(self.revoked.user_entries()), [])

    def test_user_revocation_purged(self) -> None:
        """
        An expired user revocation is dropped at the next change.
        """
        self.revoked.revoke_user("carol", 999, 1050)
        self.clock.advance(100)
        self.revoked.revoke("x", "dave", 2000)
        self.assertEqual(self.revoked._users, {})

    def test_expired_user_revocation_ignored(self) -> None:
        """
        A user revocation that has already ended is not taken.
        """
        self.revoked.revoke_user("carol", 999, 1000)
        self.assertFalse(self.revoked.is_revoked("x", "carol", 1500, 990))

    def test_default_issued(self) -> None:
        """
        Without ``issued`` (the former signature), a user revocation
        refuses nothing: such callers know no ``iat``.
        """
        self.revoked.revoke_user("carol", 999, 2000)
        self.assertFalse(self.revoked.is_revoked("x", "carol", 1500))


class TokenAuthorityUserRevocationTests(SynchronousTestCase):
    """
    :class:`TokenAuthority` checks a token's ``iat`` against the user
    revocations of its state.
    """

    def test_user_revoked(self) -> None:
        """
        Tokens issued up to the revocation's time are refused; one issued
        in a later second is not.
        """
        from metagateway.auth.tokens import InvalidToken

        clock = Clock()
        clock.advance(1_700_000_000)
        state = MemorySecurityState(clock.seconds)
        tokens = TokenAuthority("s" * 32, clock.seconds, revocations=state)
        old = tokens.issue("alice", "CORE", ["admin"])
        other = tokens.issue("bob1", "CORE", ["admin"])
        state.revoke_user("alice", clock.seconds(), clock.seconds() + 3700)
        self.assertRaises(InvalidToken, tokens.verify, old)
        tokens.verify(other)
        clock.advance(1)
        tokens.verify(tokens.issue("alice", "CORE", ["admin"]))


class LoginThrottleStateTests(SynchronousTestCase):
    """
    :class:`LoginThrottle` counts in its state, which by default is held in
    this process on its own counters.
    """

    def test_default_state_shares_counters(self) -> None:
        """
        Logins started through :meth:`LoginThrottle.start` are counted on
        :attr:`LoginThrottle.users` and :attr:`LoginThrottle.addresses`.
        """
        clock = Clock()
        throttle = LoginThrottle(2, 20, 60, clock.seconds)
        self.successResultOf(throttle.start("alice", "192.0.2.1"))
        self.successResultOf(throttle.start("alice", "192.0.2.1"))
        self.assertEqual(throttle.retry_after("alice", "192.0.2.1"), 60)
        self.assertIsInstance(throttle.state, MemorySecurityState)

    def test_given_state(self) -> None:
        """
        A given state is the one counted in.
        """
        clock = Clock()
        state = MemorySecurityState(clock.seconds, 1, 20, 60)
        throttle = LoginThrottle(5, 20, 60, clock.seconds, state=state)
        self.successResultOf(throttle.start("alice", "192.0.2.1"))
        self.failureResultOf(throttle.start("alice", "192.0.2.1"))
        self.assertEqual(state.wait("alice", "192.0.2.1"), 60)


class StateSettingsTests(SynchronousTestCase):
    """
    ``--state-url``: ``redis://`` and ``rediss://`` URLs.
    """

    def test_full(self) -> None:
        """
        Password, host, port and database are read; the password is
        percent-decoded and never shown.
        """
        settings = StateSettings.from_url("redis://:p%40ss@cache.example:6380/2")
        self.assertEqual(
            (settings.host, settings.port, settings.db, settings.password),
            ("cache.example", 6380, 2, "p@ss"),
        )
        self.assertFalse(settings.tls)
        self.assertIsNone(settings.username)
        self.assertNotIn("p@ss", repr(settings))
        self.assertEqual(settings.display(), "redis://cache.example:6380/2")

    def test_defaults_and_tls(self) -> None:
        """
        ``rediss://`` is TLS; the port defaults to 6379, the database to 0;
        an ACL user name is read.
        """
        settings = StateSettings.from_url("rediss://gw:secret@[::1]")
        self.assertEqual(
            (settings.host, settings.port, settings.db, settings.username),
            ("::1", 6379, 0, "gw"),
        )
        self.assertTrue(settings.tls)
        self.assertEqual(settings.display(), "rediss://[::1]:6379/0")

    def test_bad(self) -> None:
        """
        Anything else is a :class:`ConfigurationError` naming the setting.
        """
        for url in (
            "http://host:6379",
            "redis://",
            "redis://host:port",
            "redis://host:6379/zero",
            "redis://host:6379/0?x=1",
            "host:6379",
        ):
            with self.assertRaises(ConfigurationError) as caught:
                StateSettings.from_url(url)
            self.assertIn("--state-url", str(caught.exception))


class StateMetricsTests(SynchronousTestCase):
    """
    The shared state store's figures in ``/metrics``.
    """

    def test_exposition(self) -> None:
        """
        A gateway whose state reports figures exposes them, labelled with
        the worker; one held in this process adds nothing.
        """
        from metagateway.observability.metrics import Metrics
        from metagateway.state.stats import StateStats
        from tests.unit.test_metrics import samples

        metrics = Metrics(worker=1)
        self.assertNotIn(b"metagateway_state_", metrics.exposition())
        metrics.state = StateStats(
            connected=True, reconnects=2, revocations_seen=7, pubsub_lag=0.25
        )
        text = metrics.exposition().decode("utf-8")
        self.assertIn("# TYPE metagateway_state_connected gauge\n", text)
        found = samples(text.encode("utf-8"))
        for key, value in (
            ('metagateway_state_connected{worker="1"}', 1),
            ('metagateway_state_reconnects_total{worker="1"}', 2),
            ('metagateway_state_revocations_seen_total{worker="1"}', 7),
            ('metagateway_state_pubsub_lag_seconds{worker="1"}', 0.25),
        ):
            self.assertEqual(found[key], value)
        metrics.state.connected = False
        self.assertEqual(
            samples(metrics.exposition())['metagateway_state_connected{worker="1"}'],
            0,
        )

    def test_gateway_wires_stats(self) -> None:
        """
        A :class:`~metagateway.gateway.Gateway` given a state with figures
        reports them in its metrics.
        """
        from metagateway.config import GatewayConfig
        from metagateway.gateway import Gateway
        from metagateway.state.supervisor import SupervisedSecurityState

        clock = Clock()
        state = SupervisedSecurityState(clock, None)
        config = GatewayConfig(jwt_secret="s" * 32, accounts_dir=self.mktemp())
        gateway = Gateway(config, clock, state=state, access_log=None)
        self.assertIs(gateway.metrics.state, state.stats)
        self.assertIs(gateway.tokens.revocations, state)
        self.assertIs(gateway.throttle.state, state)


class UnreachableStateGatewayTests(SynchronousTestCase):
    """
    A gateway whose Redis state store cannot be reached (:ref:`contract-shared-state`):
    logins answer ``503 STATE_UNAVAILABLE`` under their route; tokens are
    checked against what is known; logout answers ``200`` and holds at
    once; ``/health`` never asks the store.
    """

    def setUp(self) -> None:
        from metagateway.state.redis import RedisSecurityState
        from metagateway.testing import GatewayHarness, make_config

        self.harness = GatewayHarness(
            make_config(state=StateSettings.from_url("redis://127.0.0.1:1/0"))
        )
        self.state = self.harness.gateway.state
        self.assertIsInstance(self.state, RedisSecurityState)

    def test_logins_503(self) -> None:
        """
        Both login endpoints answer ``503 STATE_UNAVAILABLE``, never 401.
        """
        import json

        from metagateway.testing import PASSWORD, USERNAME
        from tests.helpers import assert_json_error

        for path, route in (("/auth/login", "AUTH"), ("/core/auth/login", "CORE")):
            for password in (PASSWORD, "wrong"):
                response, body = self.harness.request(
                    self,
                    "POST",
                    path,
                    data=json.dumps(
                        {"username": USERNAME, "password": password}
                    ).encode(),
                )
                assert_json_error(self, response, body, 503, "STATE_UNAVAILABLE", route)

    def test_tokens_and_logout(self) -> None:
        """
        A token (issued before, say) is accepted; logout answers ``200``
        and the token is refused at once; ``/health`` answers ``200``.
        """
        from tests.helpers import assert_json_error

        token = self.harness.gateway.tokens.issue("alice", "CORE", ["admin"])
        headers = {"Authorization": "Bearer " + token}
        response, _ = self.harness.request(self, "GET", "/build/x", headers=headers)
        self.assertEqual(response.code, 200)
        response, body = self.harness.request(
            self, "POST", "/core/logout", headers=headers
        )
        self.assertEqual((response.code, body), (200, b'{"success":true}'))
        response, body = self.harness.request(self, "GET", "/build/x", headers=headers)
        assert_json_error(self, response, body, 403, "INVALID_TOKEN")
        response, _ = self.harness.request(self, "GET", "/health")
        self.assertEqual(response.code, 200)

    def test_service_connects(self) -> None:
        """
        Starting the gateway's service starts connecting to the store
        (both links), with the reactor given; stopping it stops that.
        """
        self.harness.gateway.service.startService()
        clients = self.harness.clock.tcpClients
        self.assertEqual(
            [(host, port) for host, port, *_ in clients],
            [("127.0.0.1", 1), ("127.0.0.1", 1)],
        )
        stopping = self.harness.gateway.service.stopService()
        assert stopping is not None
        self.successResultOf(stopping)
        self.assertTrue(self.state.commands.stopped)  # type: ignore[attr-defined]
