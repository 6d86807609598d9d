"""
The shared security state in a real Redis (``redis-server`` on a free
loopback port, :mod:`tests.redisserver`): the contract every state passes,
then what only a store in another process can do (be unreachable, restart).
"""

from __future__ import annotations

from typing import Any, Callable, Coroutine, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from metagateway.config import StateSettings
from metagateway.state.interfaces import StateUnavailable
from metagateway.state.redis import RedisSecurityState
from tests.redisserver import RedisServer, redis_problem
from tests.statecontract import SecurityStateContractMixin

#: How often the tests look again, in seconds.
POLL = 0.02


async def eventually(
    check: Callable[[], bool], within: float, what: str = "condition"
) -> float:
    """
    Poll ``check()`` every :data:`POLL` seconds until it holds.

    :return: the seconds it took.
    :raises AssertionError: if it does not hold within ``within`` seconds.
    """
    start = reactor.seconds()
    while not check():
        if reactor.seconds() - start > within:
            raise AssertionError("%s not met within %g s" % (what, within))
        await deferLater(reactor, POLL, lambda: None)
    return reactor.seconds() - start


class RedisCase(TestCase):
    """
    A test with its own ``redis-server``, and states that are stopped in
    cleanup.
    """

    password: Optional[str] = None

    def setUp(self) -> None:
        problem = redis_problem()
        if problem is not None:
            raise SkipTest(problem)
        super().setUp()
        self.redis = RedisServer(self.password)
        self.redis.start()
        self.addCleanup(self.redis.stop)

    def state(self, now: Optional[Callable[[], float]] = None, **kwargs: Any) -> Any:
        """
        A started :class:`RedisSecurityState` on this test's server.
        """
        state = RedisSecurityState(
            StateSettings.from_url(self.redis.url), reactor, now=now, **kwargs
        )
        state.startService()
        self.addCleanup(state.stopService)
        return state

    async def synced(self, *states: Any) -> None:
        """
        Wait until every state has reloaded from Redis.
        """
        await eventually(lambda: all(s.synced for s in states), 5.0, "synced")


class RedisStateContractTests(SecurityStateContractMixin, RedisCase):
    """
    The contract for :class:`RedisSecurityState`: two states on one
    ``redis-server``, as two processes would hold them.
    """

    async def make_states(
        self, per_user: int, per_address: int, window: float
    ) -> tuple[Any, Any]:
        self.redis.command("FLUSHALL")
        limits = {"per_user": per_user, "per_address": per_address, "window": window}
        a = self.state(self.clock.seconds, **limits)
        b = self.state(self.clock.seconds, **limits)
        await self.synced(a, b)
        return a, b

    async def propagated(self, check: Callable[[], bool]) -> None:
        await eventually(check, 1.0, "propagation")

    def run_async(self, test: Callable[[], Coroutine[Any, Any, None]]) -> Any:
        return Deferred.fromCoroutine(test())


class RedisPasswordContractTests(RedisStateContractTests):
    """
    The contract again, on a server that needs a password.
    """

    password = "state-pass:@/x"


class RedisFaultTests(RedisCase):
    """
    :ref:`contract-shared-state`'s faults: the store unreachable at start or later, and
    restarted empty.
    """

    def test_unreachable_at_start(self) -> Any:
        """
        With Redis down, a state starts: logins fail with
        :class:`StateUnavailable`, a revocation holds here at once, and it
        reaches Redis (and another process) once Redis is up.
        """

        async def test() -> None:
            self.redis.stop()
            a = self.state()
            failure = await Deferred.fromCoroutine(
                self._fails(a.begin_login("u001", "a"))
            )
            self.assertIsInstance(failure, StateUnavailable)
            until = reactor.seconds() + 3600
            a.revoke("jti:down", "u001", until)
            self.assertTrue(a.is_revoked("jti:down", "u001", until))
            failure = await Deferred.fromCoroutine(
                self._fails(a.revoke_user("u002", reactor.seconds(), until))
            )
            self.assertIsInstance(failure, StateUnavailable)
            self.assertFalse(a.stats.connected)
            self.redis.start()
            await self.synced(a)
            self.assertTrue(a.stats.connected)
            b = self.state()
            await self.synced(b)
            self.assertTrue(b.is_revoked("jti:down", "u001", until))
            self.assertTrue(b.is_revoked("j", "u002", until, reactor.seconds() - 1))
            await a.begin_login("u001", "a")

        return Deferred.fromCoroutine(test())

    async def _fails(self, d: Deferred[Any]) -> BaseException:
        try:
            await d
        except Exception as e:  # noqa: BLE001
            return e
        raise AssertionError("did not fail")

    def test_restart_republished(self) -> Any:
        """
        After Redis restarts empty, the revocations the processes hold are
        written back: a process that starts afterwards refuses them, and a
        revocation made while Redis was down reaches the other process.
        """

        async def test() -> None:
            a = self.state()
            b = self.state()
            await self.synced(a, b)
            until = reactor.seconds() + 3600
            a.revoke("jti:before", "u001", until)
            await eventually(lambda: b.is_revoked("jti:before", "u001", until), 1.0)
            self.redis.stop()
            await eventually(lambda: not a.stats.connected, 5.0, "noticed")
            a.revoke("jti:during", "u001", until)
            self.assertFalse(b.is_revoked("jti:during", "u001", until))
            self.redis.start()
            await eventually(lambda: b.is_revoked("jti:during", "u001", until), 10.0)
            await self.synced(a, b)
            self.assertGreaterEqual(a.stats.reconnects, 1)
            c = self.state()
            await self.synced(c)
            self.assertTrue(c.is_revoked("jti:before", "u001", until))
            self.assertTrue(c.is_revoked("jti:during", "u001", until))

        return Deferred.fromCoroutine(test())

    def test_keys_expire(self) -> Any:
        """
        A revoked id's key expires with the token; failure counters expire
        a window after the last failure.
        """

        async def test() -> None:
            a = self.state(window=30.0)
            await self.synced(a)
            a.revoke("jti:x", "u001", reactor.seconds() + 100)
            await a.begin_login("u001", "192.0.2.1")
            await eventually(
                lambda: (
                    self.redis.command("PTTL", "metagateway:revoked:token:jti:x")
                    != b":-2"
                ),
                1.0,
            )
            ttl = int(self.redis.command("PTTL", "metagateway:revoked:token:jti:x")[1:])
            self.assertTrue(90_000 < ttl <= 100_000, ttl)
            ttl = int(self.redis.command("PTTL", "metagateway:fail:user:u001")[1:])
            self.assertTrue(25_000 < ttl <= 30_000, ttl)

        return Deferred.fromCoroutine(test())

    def test_pubsub_stats(self) -> Any:
        """
        Revocations received are counted, with the publication's lag.
        """

        async def test() -> None:
            a = self.state()
            b = self.state()
            await self.synced(a, b)
            seen = b.stats.revocations_seen
            a.revoke("jti:y", "u001", reactor.seconds() + 100)
            await eventually(lambda: b.stats.revocations_seen > seen, 1.0)
            self.assertLess(b.stats.pubsub_lag, 1.0)
            self.assertTrue(b.stats.connected)

        return Deferred.fromCoroutine(test())

    def test_unusual_names(self) -> Deferred[None]:
        """
        Names that are not valid UTF-8 text (a lone surrogate, which a JSON
        body can hold) and names with Redis pattern characters are counted
        and revoked like any other, and reloaded as they were.
        """

        async def test() -> None:
            a = self.state(per_user=1)
            await self.synced(a)
            for name in ("\ud800lone", "star*[x]?", "zoë"):
                await a.begin_login(name, "192.0.2.1")
                failure = await self._fails(a.begin_login(name, "192.0.2.2"))
                self.assertEqual(type(failure).__name__, "Throttled")
                until = reactor.seconds() + 100
                a.revoke("jti:" + name, name, until)
                await self.settle_writes(a)
                await a.revoke_user(name, reactor.seconds(), until)
            b = self.state()
            await self.synced(b)
            for name in ("\ud800lone", "star*[x]?", "zoë"):
                self.assertTrue(
                    b.is_revoked("jti:" + name, name, reactor.seconds() + 100)
                )
                self.assertTrue(b.is_revoked("j", name, reactor.seconds() + 100, 0))

        return Deferred.fromCoroutine(test())

    async def settle_writes(self, state: Any) -> None:
        """
        Wait until what ``state`` sent without waiting has been applied.
        """
        await state.retry_after("nobody-flush", "0.0.0.0")
