"""
Tests for :mod:`metagateway.auth.throttle`: sliding-window failure counts,
``Retry-After``, bounded memory, and the login attempt life cycle.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from metagateway.auth.throttle import (
    FailureCounter,
    LoginThrottle,
    Throttled,
    address_key,
    user_key,
)


class ClockCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)


class FailureCounterTests(ClockCase):
    """
    :class:`FailureCounter`.
    """

    def counter(
        self, limit: int = 3, window: float = 60, max_keys: int = 100
    ) -> FailureCounter:
        return FailureCounter(limit, window, self.clock.seconds, max_keys)

    def test_below_limit(self) -> None:
        """
        Fewer failures than the limit hold nothing back.
        """
        counter = self.counter()
        counter.record_failure("k")
        counter.record_failure("k")
        self.assertIsNone(counter.retry_after("k"))
        self.assertIsNone(counter.retry_after("other"))

    def test_at_limit(self) -> None:
        """
        At the limit the key is held back until its oldest failure in the
        window leaves it; ``retry_after`` counts down to that.
        """
        counter = self.counter()
        counter.record_failure("k")
        self.clock.advance(10)
        counter.record_failure("k")
        counter.record_failure("k")
        self.assertEqual(counter.retry_after("k"), 50)
        self.clock.advance(49)
        self.assertEqual(counter.retry_after("k"), 1)
        self.clock.advance(1)
        self.assertIsNone(counter.retry_after("k"))
        # The two later failures still count: one more failure holds it
        # back again, until the first of those leaves the window.
        counter.record_failure("k")
        self.assertEqual(counter.retry_after("k"), 10)

    def test_retry_after_rounds_up(self) -> None:
        """
        A fractional wait is rounded up, so a client waiting exactly
        ``Retry-After`` seconds is let through, and it is never 0.
        """
        counter = self.counter(limit=1, window=2)
        counter.record_failure("k")
        self.clock.advance(0.5)
        self.assertEqual(counter.retry_after("k"), 2)
        self.clock.advance(1.25)
        self.assertEqual(counter.retry_after("k"), 1)
        self.clock.advance(0.25)
        self.assertIsNone(counter.retry_after("k"))

    def test_retry_after_at_most_window(self) -> None:
        """
        A wall clock stepping backwards never makes ``Retry-After`` longer
        than the window.
        """
        counter = self.counter(limit=1, window=60)
        counter.record_failure("k")
        self.clock.rightNow -= 3600
        self.assertEqual(counter.retry_after("k"), 60)

    def test_sliding_window(self) -> None:
        """
        Failures spread out so that fewer than the limit fall in any window
        never hold the key back.
        """
        counter = self.counter(limit=3, window=60)
        for _ in range(20):
            self.assertIsNone(counter.retry_after("k"))
            counter.record_failure("k")
            self.clock.advance(30)

    def test_off(self) -> None:
        """
        A limit of 0 (or a window of 0) turns the counter off: nothing is
        remembered, nothing held back.
        """
        for counter in (self.counter(limit=0), self.counter(window=0)):
            self.assertFalse(counter.enabled)
            for _ in range(100):
                self.assertIsNone(counter.record_failure("k"))
            self.assertIsNone(counter.retry_after("k"))
            self.assertEqual(len(counter), 0)

    def test_reset(self) -> None:
        """
        ``reset`` forgets a key's failures.
        """
        counter = self.counter()
        for _ in range(3):
            counter.record_failure("k")
        counter.reset("k")
        self.assertIsNone(counter.retry_after("k"))
        self.assertEqual(len(counter), 0)

    def test_forgive(self) -> None:
        """
        ``forgive`` takes back exactly the failure recorded at that time.
        """
        counter = self.counter()
        first = counter.record_failure("k")
        self.clock.advance(5)
        counter.record_failure("k")
        self.clock.advance(5)
        last = counter.record_failure("k")
        self.assertIsNotNone(counter.retry_after("k"))
        counter.forgive("k", last)
        self.assertIsNone(counter.retry_after("k"))
        counter.forgive("k", last)  # Already taken back: nothing happens.
        counter.forgive("k", None)
        counter.forgive("unknown", first)
        counter.record_failure("k")
        self.assertEqual(counter.retry_after("k"), 50)

    def test_expired_keys_dropped(self) -> None:
        """
        A key whose failures have all left the window is forgotten.
        """
        counter = self.counter()
        counter.record_failure("k")
        self.clock.advance(60)
        self.assertIsNone(counter.retry_after("k"))
        self.assertEqual(len(counter), 0)

    def test_per_key_memory_bounded(self) -> None:
        """
        A key keeps at most ``limit`` failure times however many it has.
        """
        counter = self.counter(limit=3)
        for _ in range(1000):
            counter.record_failure("k")
        self.assertEqual(len(counter._held["k"]), 3)

    def test_keys_bounded(self) -> None:
        """
        A flood of distinct keys never holds more than ``max_keys``.
        """
        counter = self.counter(max_keys=50)
        for i in range(10_000):
            counter.record_failure("random-%d" % (i,))
        self.assertEqual(len(counter), 50)

    def test_flood_does_not_evict_held_key(self) -> None:
        """
        A flood of one-failure keys evicts its own entries, not a key that
        is being held back.
        """
        counter = self.counter(limit=3, max_keys=50)
        for _ in range(3):
            counter.record_failure("victim")
        for i in range(10_000):
            counter.record_failure("random-%d" % (i,))
            self.clock.advance(0.001)
        self.assertIsNotNone(counter.retry_after("victim"))
        self.assertEqual(len(counter), 50)

    def test_stale_entries_evicted_first(self) -> None:
        """
        Past the bound, entries whose failures have left the window go
        first, even held-back ones before counting ones.
        """
        counter = self.counter(limit=2, window=60, max_keys=3)
        counter.record_failure("old")
        counter.record_failure("old")
        self.clock.advance(61)
        counter.record_failure("a")
        counter.record_failure("a")
        counter.record_failure("b")
        counter.record_failure("c")
        self.assertEqual(len(counter), 3)
        self.assertIsNotNone(counter.retry_after("a"))

    def test_all_held_evicts_oldest(self) -> None:
        """
        When every remembered key is held back, the least recently failed
        is forgotten to make room.
        """
        counter = self.counter(limit=1, max_keys=3)
        for key in ("a", "b", "c", "d"):
            counter.record_failure(key)
            self.clock.advance(1)
        self.assertEqual(len(counter), 3)
        self.assertIsNone(counter.retry_after("a"))
        for key in ("b", "c", "d"):
            self.assertIsNotNone(counter.retry_after(key))

    def test_held_key_returns_to_counting(self) -> None:
        """
        A held key whose oldest failure leaves the window counts again, and
        is evicted like any counting key.
        """
        counter = self.counter(limit=2, window=10, max_keys=2)
        counter.record_failure("k")
        self.clock.advance(5)
        counter.record_failure("k")
        self.assertIn("k", counter._held)
        self.clock.advance(5)
        self.assertIsNone(counter.retry_after("k"))
        self.assertIn("k", counter._counting)


class KeyTests(SynchronousTestCase):
    """
    :func:`user_key` and :func:`address_key`.
    """

    def test_user_key(self) -> None:
        """
        Usernames are their own keys up to 128 bytes, digests beyond, and
        strings that cannot be UTF-8 still make keys.
        """
        self.assertEqual(user_key("alice"), "alice")
        self.assertEqual(user_key("x" * 128), "x" * 128)
        long_key = user_key("x" * 60_000)
        self.assertLessEqual(len(long_key), 80)
        self.assertNotEqual(long_key, user_key("x" * 60_001))
        self.assertEqual(long_key, user_key("x" * 60_000))
        self.assertEqual(user_key("a\ud800b"), "a\ud800b")
        self.assertTrue(user_key("\ud800" * 100).startswith("sha256:"))

    def test_address_key(self) -> None:
        """
        IPv4 addresses are themselves; IPv6 addresses count by ``/64``;
        IPv4-mapped IPv6 addresses as IPv4; other strings as themselves or
        a digest.
        """
        self.assertEqual(address_key("192.0.2.7"), "192.0.2.7")
        self.assertEqual(address_key("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64")
        self.assertEqual(address_key("2001:db8:1:2:ffff::1"), "2001:db8:1:2::/64")
        self.assertEqual(address_key("[2001:db8:1:2::9]"), "2001:db8:1:2::/64")
        self.assertEqual(address_key("fe80::1%eth0"), "fe80::/64")
        self.assertNotEqual(address_key("2001:db8:1:3::1"), "2001:db8:1:2::/64")
        self.assertEqual(address_key("::ffff:192.0.2.7"), "192.0.2.7")
        self.assertEqual(address_key("unix"), "unix")
        self.assertEqual(address_key("not an address"), "not an address")
        self.assertTrue(address_key("x" * 1000).startswith("sha256:"))


class LoginThrottleTests(ClockCase):
    """
    :class:`LoginThrottle`.
    """

    def throttle(
        self,
        per_user: int = 3,
        per_address: int = 5,
        window: float = 60,
        max_keys: int = 1000,
    ) -> LoginThrottle:
        return LoginThrottle(
            per_user, per_address, window, self.clock.seconds, max_keys
        )

    def failures(
        self, throttle: LoginThrottle, user: str, address: str, times: int = 1
    ) -> None:
        for _ in range(times):
            throttle.begin(user, address)

    def test_per_user(self) -> None:
        """
        A username is held back after ``per_user`` failures from any
        addresses; other usernames are not.
        """
        throttle = self.throttle()
        for i in range(3):
            self.failures(throttle, "alice", "192.0.2.%d" % (i,))
        error = self.assertRaises(Throttled, throttle.begin, "alice", "198.51.100.1")
        self.assertEqual(error.retry_after, 60)
        throttle.begin("bob-", "198.51.100.1")

    def test_per_address(self) -> None:
        """
        An address is held back after ``per_address`` failures for any
        usernames; other addresses are not.
        """
        throttle = self.throttle()
        for i in range(5):
            self.failures(throttle, "user-%d" % (i,), "192.0.2.1")
        self.assertRaises(Throttled, throttle.begin, "someone-new", "192.0.2.1")
        throttle.begin("someone-new", "192.0.2.2")

    def test_ipv6_neighbours_share(self) -> None:
        """
        Addresses in one IPv6 ``/64`` share a count.
        """
        throttle = self.throttle()
        for i in range(5):
            self.failures(throttle, "user-%d" % (i,), "2001:db8::%x" % (i + 1,))
        self.assertRaises(Throttled, throttle.begin, "someone-new", "2001:db8::ffff")
        throttle.begin("someone-new", "2001:db8:0:1::1")

    def test_longest_wait_wins(self) -> None:
        """
        When both limits hold a login back, ``Retry-After`` is the longer.
        """
        throttle = self.throttle(per_user=1, per_address=2)
        self.failures(throttle, "alice", "192.0.2.1")
        self.clock.advance(20)
        self.failures(throttle, "bob-", "192.0.2.1")
        self.assertEqual(throttle.retry_after("alice", "192.0.2.1"), 40)
        self.assertEqual(throttle.retry_after("carol", "192.0.2.1"), 40)
        self.assertEqual(throttle.retry_after("bob-", "192.0.2.9"), 60)

    def test_throttled_attempt_not_counted(self) -> None:
        """
        A refused attempt is not counted: hammering a held-back username
        does not extend its wait.
        """
        throttle = self.throttle()
        self.failures(throttle, "alice", "192.0.2.1", 3)
        for _ in range(120):
            self.assertRaises(Throttled, throttle.begin, "alice", "192.0.2.1")
            self.clock.advance(0.5)
        self.assertIsNone(throttle.retry_after("alice", "192.0.2.2"))

    def test_counted_from_the_start(self) -> None:
        """
        An attempt counts before its outcome is known, so concurrent
        guesses cannot all pass the check while the store is asked.
        """
        throttle = self.throttle()
        started = [throttle.begin("alice", "192.0.2.1") for _ in range(3)]
        self.assertRaises(Throttled, throttle.begin, "alice", "192.0.2.1")
        self.assertEqual(len(started), 3)

    def test_success_resets_user(self) -> None:
        """
        A success resets the username's count and takes that attempt back
        from the address's count, leaving the address's earlier failures.
        """
        throttle = self.throttle(per_user=3, per_address=3)
        self.failures(throttle, "alice", "192.0.2.1", 2)
        throttle.begin("alice", "192.0.2.1").succeeded()
        throttle.begin("alice", "192.0.2.9")
        throttle.begin("alice", "192.0.2.9")
        self.assertIsNone(throttle.retry_after("alice", "192.0.2.2"))
        throttle.begin("bob-", "192.0.2.1")
        self.assertIsNotNone(throttle.retry_after("carol", "192.0.2.1"))

    def test_successes_never_hold_back(self) -> None:
        """
        Many successful logins from one address (an office behind NAT)
        never hold it back.
        """
        throttle = self.throttle(per_user=1, per_address=2)
        for i in range(50):
            throttle.begin("user-%d" % (i,), "192.0.2.1").succeeded()
        self.assertIsNone(throttle.retry_after("anyone", "192.0.2.1"))

    def test_abandoned(self) -> None:
        """
        An abandoned attempt (the store could not answer) counts against
        neither key.
        """
        throttle = self.throttle(per_user=1, per_address=1)
        for _ in range(10):
            throttle.begin("alice", "192.0.2.1").abandoned()
        self.assertIsNone(throttle.retry_after("alice", "192.0.2.1"))

    def test_success_after_window(self) -> None:
        """
        Once the window has passed a held-back username may try again.
        """
        throttle = self.throttle()
        self.failures(throttle, "alice", "192.0.2.1", 3)
        self.clock.advance(60)
        throttle.begin("alice", "192.0.2.1").succeeded()
        self.assertIsNone(throttle.retry_after("alice", "192.0.2.1"))

    def test_off(self) -> None:
        """
        ``0`` turns each limit off on its own.
        """
        no_user = self.throttle(per_user=0, per_address=5)
        for i in range(100):
            no_user.begin("alice", "192.0.2.%d" % (i,))
        self.assertEqual(len(no_user.users), 0)
        no_address = self.throttle(per_user=3, per_address=0)
        for i in range(100):
            no_address.begin("user-%d" % (i,), "192.0.2.1")
        self.assertEqual(len(no_address.addresses), 0)

    def test_long_usernames_bounded(self) -> None:
        """
        Huge usernames are remembered by digest, so a flood of them costs
        a bounded amount of memory.
        """
        throttle = self.throttle(per_user=3, per_address=0, max_keys=10)
        for i in range(100):
            throttle.begin(("%d-" % (i,)) + "x" * 60_000, "192.0.2.1")
        self.assertEqual(len(throttle.users), 10)
        self.assertLessEqual(max(len(k) for k in throttle.users._counting), 80)
        name = "y" * 60_000
        self.failures(throttle, name, "192.0.2.1", 3)
        self.assertRaises(Throttled, throttle.begin, name, "192.0.2.1")

    def test_compatibility_methods(self) -> None:
        """
        ``failed`` and ``succeeded`` count and reset without an attempt.
        """
        throttle = self.throttle()
        for _ in range(3):
            throttle.failed("alice", "192.0.2.1")
        self.assertIsNotNone(throttle.retry_after("alice", "192.0.2.2"))
        throttle.succeeded("alice")
        self.assertIsNone(throttle.retry_after("alice", "192.0.2.2"))
