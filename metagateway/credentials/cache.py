"""
A short-lived record cache in front of a credential store.

A burst of logins for one name becomes one upstream lookup: answers (a
record, or :class:`UnknownAccount`) are reused for ``ttl`` seconds, and
lookups of a name already being fetched wait for that fetch. A store that
cannot answer (:class:`StoreUnavailable`) is asked again next time: faults
are never cached. A password change is visible once the entry expires.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Union

from zope.interface import implementer

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from metagateway.credentials.interfaces import (
    AccountRecord,
    ICredentialStore,
    UnknownAccount,
)


@dataclass(frozen=True)
class _Entry:
    """
    A cached answer.

    :ivar record: the record, or ``None`` for an unknown account.
    :ivar expires: when (on the clock) the entry stops being used.
    """

    record: Optional[AccountRecord]
    expires: float


class _Fetch:
    """
    One upstream lookup and the callers waiting for it.

    :ivar upstream: the store's Deferred.
    :ivar waiters: one Deferred per caller still waiting.
    """

    def __init__(self) -> None:
        self.upstream: Optional[Deferred[AccountRecord]] = None
        self.waiters: list[Deferred[AccountRecord]] = []


@implementer(ICredentialStore)
class CachingCredentialStore:
    """
    Positive and negative caching of another store's lookups.

    :param store: the store asked on a miss.
    :param clock: the clock entries expire by.
    :param ttl: seconds an answer is reused; ``0`` or less caches nothing
        (concurrent lookups still share one upstream call).
    :param max_entries: the most names remembered; the oldest entry is
        dropped to make room.
    """

    def __init__(
        self,
        store: ICredentialStore,
        clock: IReactorTime,
        ttl: float,
        max_entries: int = 1024,
    ) -> None:
        self._store = store
        self._clock = clock
        self._ttl = ttl
        self._max_entries = max(0, max_entries)
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._fetches: dict[str, _Fetch] = {}

    def __len__(self) -> int:
        """
        How many names are cached (expired entries included until touched).
        """
        return len(self._entries)

    def forget(self, username: Optional[str] = None) -> None:
        """
        Drop the cached answer for ``username``, or every answer.

        :param username: the name to forget; ``None`` for all.
        """
        if username is None:
            self._entries.clear()
        else:
            self._entries.pop(username, None)

    def lookup(self, username: str) -> Deferred[AccountRecord]:
        """
        ``username``'s record, from the cache when fresh, else from the store.

        :return: a Deferred firing with the :class:`AccountRecord`, or
            failing with :class:`UnknownAccount` (possibly cached) or
            :class:`StoreUnavailable` (never cached). Cancelling it stops
            only this caller's wait; the upstream lookup is cancelled when
            no caller is left waiting.
        """
        entry = self._entries.get(username)
        if entry is not None:
            if entry.expires > self._clock.seconds():
                if entry.record is None:
                    return fail(UnknownAccount(username))
                return succeed(entry.record)
            del self._entries[username]

        fetch = self._fetches.get(username)
        starting = fetch is None
        if fetch is None:
            fetch = self._fetches[username] = _Fetch()

        def cancel(waiter: Deferred[AccountRecord]) -> None:
            assert fetch is not None
            if waiter in fetch.waiters:
                fetch.waiters.remove(waiter)
            if (
                not fetch.waiters
                and fetch.upstream is not None
                and self._fetches.get(username) is fetch
            ):
                fetch.upstream.cancel()

        waiter: Deferred[AccountRecord] = Deferred(cancel)
        fetch.waiters.append(waiter)
        if starting:
            upstream = self._store.lookup(username)
            fetch.upstream = upstream
            upstream.addBoth(self._settle, username, fetch)
        return waiter

    def _settle(
        self,
        result: Union[AccountRecord, Failure],
        username: str,
        fetch: _Fetch,
    ) -> None:
        """
        Remember the upstream answer (unless it is a fault) and give it to
        every waiting caller.
        """
        if self._fetches.get(username) is fetch:
            del self._fetches[username]
        if isinstance(result, Failure):
            if result.check(UnknownAccount) is not None:
                self._remember(username, None)
        else:
            self._remember(username, result)
        waiters, fetch.waiters = fetch.waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def _remember(self, username: str, record: Optional[AccountRecord]) -> None:
        """
        Cache an answer, dropping the oldest entries beyond the size bound.
        """
        if self._ttl <= 0 or self._max_entries == 0:
            return
        self._entries.pop(username, None)
        self._entries[username] = _Entry(record, self._clock.seconds() + self._ttl)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
