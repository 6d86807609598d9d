"""
Tests for :mod:`metagateway.credentials.cache`.
"""

from __future__ import annotations

from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from metagateway.auth.passwords import make_record
from metagateway.credentials.cache import CachingCredentialStore
from metagateway.credentials.interfaces import (
    AccountRecord,
    ICredentialStore,
    StoreUnavailable,
    UnknownAccount,
)
from metagateway.credentials.memory import MemoryCredentialStore


@implementer(ICredentialStore)
class ControlledStore:
    """
    A store whose lookups wait until the test answers them.

    :ivar calls: ``(username, Deferred)`` for each lookup, in order.
    :ivar cancelled: names whose lookup was cancelled.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, Deferred[AccountRecord]]] = []
        self.cancelled: list[str] = []

    def lookup(self, username: str) -> Deferred[AccountRecord]:
        d: Deferred[AccountRecord] = Deferred(lambda d: self.cancelled.append(username))
        self.calls.append((username, d))
        return d


class CachingCredentialStoreTests(SynchronousTestCase):
    """
    Tests for :class:`CachingCredentialStore`.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.upstream = ControlledStore()
        self.cache = CachingCredentialStore(self.upstream, self.clock, ttl=5.0)
        self.record = make_record("alice", "pw")

    def test_interface(self) -> None:
        """
        The cache provides :class:`ICredentialStore`.
        """
        self.assertTrue(verifyObject(ICredentialStore, self.cache))

    def test_positive_cached_within_ttl(self) -> None:
        """
        A found record is answered from the cache until the TTL passes,
        then asked for again (so a password change shows within the TTL).
        """
        d = self.cache.lookup("alice")
        self.upstream.calls[0][1].callback(self.record)
        self.assertIs(self.successResultOf(d), self.record)
        self.clock.advance(4.9)
        self.assertIs(self.successResultOf(self.cache.lookup("alice")), self.record)
        self.assertEqual(len(self.upstream.calls), 1)
        self.clock.advance(0.2)
        d = self.cache.lookup("alice")
        self.assertEqual(len(self.upstream.calls), 2)
        changed = make_record("alice", "new")
        self.upstream.calls[1][1].callback(changed)
        self.assertIs(self.successResultOf(d), changed)

    def test_negative_cached(self) -> None:
        """
        :class:`UnknownAccount` is cached too, for the same TTL.
        """
        d = self.cache.lookup("nobody")
        self.upstream.calls[0][1].errback(UnknownAccount("nobody"))
        self.failureResultOf(d, UnknownAccount)
        self.failureResultOf(self.cache.lookup("nobody"), UnknownAccount)
        self.assertEqual(len(self.upstream.calls), 1)
        self.clock.advance(5.0)
        self.cache.lookup("nobody")
        self.assertEqual(len(self.upstream.calls), 2)

    def test_unavailable_never_cached(self) -> None:
        """
        :class:`StoreUnavailable` reaches the caller and is not remembered:
        the next lookup asks the store again.
        """
        d = self.cache.lookup("alice")
        self.upstream.calls[0][1].errback(StoreUnavailable("down"))
        self.failureResultOf(d, StoreUnavailable)
        d = self.cache.lookup("alice")
        self.assertEqual(len(self.upstream.calls), 2)
        self.upstream.calls[1][1].callback(self.record)
        self.assertIs(self.successResultOf(d), self.record)

    def test_other_errors_not_cached(self) -> None:
        """
        An unexpected failure is passed on and not remembered.
        """
        d = self.cache.lookup("alice")
        self.upstream.calls[0][1].errback(ZeroDivisionError())
        self.failureResultOf(d, ZeroDivisionError)
        self.cache.lookup("alice")
        self.assertEqual(len(self.upstream.calls), 2)

    def test_concurrent_lookups_share_one_call(self) -> None:
        """
        Lookups of a name while one is in flight wait for it: one upstream
        call answers them all, failures included.
        """
        first = self.cache.lookup("alice")
        second = self.cache.lookup("alice")
        other = self.cache.lookup("bobby")
        self.assertNoResult(first)
        self.assertEqual([name for name, _ in self.upstream.calls], ["alice", "bobby"])
        self.upstream.calls[0][1].callback(self.record)
        self.assertIs(self.successResultOf(first), self.record)
        self.assertIs(self.successResultOf(second), self.record)
        self.upstream.calls[1][1].errback(StoreUnavailable("down"))
        self.failureResultOf(other, StoreUnavailable)

    def test_shared_failure_reaches_every_caller(self) -> None:
        """
        A fault during a shared call fails every waiting caller.
        """
        first = self.cache.lookup("alice")
        second = self.cache.lookup("alice")
        self.upstream.calls[0][1].errback(StoreUnavailable("down"))
        self.failureResultOf(first, StoreUnavailable)
        self.failureResultOf(second, StoreUnavailable)

    def test_cancel_one_waiter(self) -> None:
        """
        Cancelling one caller's lookup leaves the shared call running for
        the others.
        """
        first = self.cache.lookup("alice")
        second = self.cache.lookup("alice")
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.assertEqual(self.upstream.cancelled, [])
        self.upstream.calls[0][1].callback(self.record)
        self.assertIs(self.successResultOf(second), self.record)

    def test_cancel_every_waiter(self) -> None:
        """
        When every caller has cancelled, the upstream lookup is cancelled
        and nothing is cached.
        """
        first = self.cache.lookup("alice")
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.assertEqual(self.upstream.cancelled, ["alice"])
        self.cache.lookup("alice")
        self.assertEqual(len(self.upstream.calls), 2)

    def test_bounded_size_evicts_oldest(self) -> None:
        """
        Beyond ``max_entries`` the oldest cached name is dropped.
        """
        store = MemoryCredentialStore(
            [make_record(name, "pw") for name in ("aaaa", "bbbb", "cccc")]
        )
        counting = CountingStore(store)
        cache = CachingCredentialStore(counting, self.clock, ttl=60, max_entries=2)
        for name in ("aaaa", "bbbb", "cccc"):
            self.successResultOf(cache.lookup(name))
        self.assertEqual(len(cache), 2)
        self.successResultOf(cache.lookup("cccc"))
        self.successResultOf(cache.lookup("bbbb"))
        self.assertEqual(counting.count, 3)
        self.successResultOf(cache.lookup("aaaa"))
        self.assertEqual(counting.count, 4)
        self.assertEqual(len(cache), 2)

    def test_ttl_zero_caches_nothing(self) -> None:
        """
        With a TTL of zero every lookup reaches the store.
        """
        store = MemoryCredentialStore([self.record])
        counting = CountingStore(store)
        cache = CachingCredentialStore(counting, self.clock, ttl=0)
        self.successResultOf(cache.lookup("alice"))
        self.successResultOf(cache.lookup("alice"))
        self.failureResultOf(cache.lookup("nobody"), UnknownAccount)
        self.assertEqual(counting.count, 3)
        self.assertEqual(len(cache), 0)

    def test_synchronous_store(self) -> None:
        """
        A store that answers at once (memory, directory) works through the
        cache, hits and misses alike.
        """
        store = MemoryCredentialStore([self.record])
        cache = CachingCredentialStore(store, self.clock, ttl=5)
        self.assertEqual(self.successResultOf(cache.lookup("alice")), self.record)
        self.assertEqual(self.successResultOf(cache.lookup("alice")), self.record)
        self.failureResultOf(cache.lookup("nobody"), UnknownAccount)
        self.failureResultOf(cache.lookup("nobody"), UnknownAccount)

    def test_forget(self) -> None:
        """
        :meth:`CachingCredentialStore.forget` drops one name or all of them.
        """
        store = MemoryCredentialStore([self.record, make_record("bobby", "pw")])
        counting = CountingStore(store)
        cache = CachingCredentialStore(counting, self.clock, ttl=60)
        self.successResultOf(cache.lookup("alice"))
        self.successResultOf(cache.lookup("bobby"))
        cache.forget("alice")
        self.successResultOf(cache.lookup("alice"))
        self.successResultOf(cache.lookup("bobby"))
        self.assertEqual(counting.count, 3)
        cache.forget()
        self.assertEqual(len(cache), 0)


@implementer(ICredentialStore)
class CountingStore:
    """
    Counts the lookups that reach another store.

    :ivar count: how many lookups were made.
    """

    def __init__(self, store: ICredentialStore) -> None:
        self._store = store
        self.count = 0

    def lookup(self, username: str) -> Deferred[AccountRecord]:
        self.count += 1
        return self._store.lookup(username)
