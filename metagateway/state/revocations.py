"""
Revoked tokens held in this process until they expire, bounded in memory:
the local mirror every implementation of the shared state answers token
checks from.
"""

from __future__ import annotations

import heapq
import math
from typing import Callable, Iterator, Optional

from zope.interface import implementer

from metagateway.state.interfaces import IRevocationList

#: How many revoked tokens are remembered at most, in all.
_REVOKED_LIMIT = 100_000

#: How many revoked tokens of one subject (``projectId``) are remembered.
_REVOKED_PER_SUBJECT_LIMIT = 1_000


@implementer(IRevocationList)
class RevocationList:
    """
    Revoked tokens held in memory until they expire, bounded in memory.

    A revocation is forgotten only once its token has expired. When more
    live revocations arrive than the bounds allow, the one closest to its
    expiry is dropped and replaced by a *floor*: every token (of that
    subject, or past the overall bound of anyone) expiring no later than
    the dropped one is refused. So the bound fails closed: a flood of
    logouts can make some other unexpired tokens be refused early (their
    holders log in again), never make a logged-out token valid again.

    The per-subject bound keeps a flood of one subject's logouts (``guest``
    tokens cost nothing to obtain) from touching anyone else's tokens.

    :param now: returns the current POSIX time.
    :param limit: most revocations remembered in all.
    :param per_subject_limit: most revocations remembered per subject.
    """

    def __init__(
        self,
        now: Callable[[], float],
        limit: int = _REVOKED_LIMIT,
        per_subject_limit: int = _REVOKED_PER_SUBJECT_LIMIT,
    ) -> None:
        self._now = now
        self._limit = max(1, limit)
        self._per_subject_limit = max(1, per_subject_limit)
        #: token id -> (until, subject)
        self._entries: dict[str, tuple[float, str]] = {}
        #: (until, token id) of every entry, and possibly stale pairs.
        self._heap: list[tuple[float, str]] = []
        #: subject -> {token id: until}
        self._by_subject: dict[str, dict[str, float]] = {}
        #: subject -> (until, token id) heap, possibly with stale pairs.
        self._subject_heaps: dict[str, list[tuple[float, str]]] = {}
        #: subject -> tokens of it expiring no later than this are refused.
        self._floors: dict[str, float] = {}
        #: tokens of anyone expiring no later than this are refused.
        self._floor = -math.inf
        #: subject -> (tokens issued at or before this are refused, until).
        self._users: dict[str, tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def revoke(self, token_id: str, subject: str, until: float) -> None:
        """
        Refuse the token ``token_id`` of ``subject`` until ``until``.
        """
        self._purge()
        if until <= self._now() or self.is_revoked(token_id, subject, until):
            return
        self._entries[token_id] = (until, subject)
        heapq.heappush(self._heap, (until, token_id))
        mine = self._by_subject.setdefault(subject, {})
        mine[token_id] = until
        subject_heap = self._subject_heaps.setdefault(subject, [])
        heapq.heappush(subject_heap, (until, token_id))
        while len(mine) > self._per_subject_limit:
            dropped = self._pop_valid(subject_heap, subject)
            self._floors[subject] = max(self._floors.get(subject, -math.inf), dropped)
        while len(self._entries) > self._limit:
            self._floor = max(self._floor, self._pop_valid(self._heap, None))
        self._compact(subject)

    def revoke_user(self, subject: str, issued_before: float, until: float) -> None:
        """
        Refuse every token of ``subject`` issued at or before
        ``issued_before``, until ``until``. A later revocation of the same
        subject extends an earlier one, never shortens it.
        """
        self._purge()
        now = self._now()
        if until <= now:
            return
        old = self._users.get(subject)
        if old is not None and old[1] > now:
            issued_before = max(issued_before, old[0])
            until = max(until, old[1])
        self._users[subject] = (issued_before, until)

    def is_revoked(
        self, token_id: str, subject: str, until: float, issued: float = math.inf
    ) -> bool:
        """
        Whether the token ``token_id`` of ``subject``, valid until
        ``until`` and issued at ``issued``, is refused now.
        """
        if until <= self._floor or until <= self._floors.get(subject, -math.inf):
            return True
        if self._users:
            user = self._users.get(subject)
            if user is not None and issued <= user[0] and user[1] > self._now():
                return True
        entry = self._entries.get(token_id)
        return entry is not None and entry[0] > self._now()

    def entries(self) -> Iterator[tuple[str, str, float]]:
        """
        Every revocation of one token held now: ``(token_id, subject,
        until)``.
        """
        now = self._now()
        for token_id, (until, subject) in list(self._entries.items()):
            if until > now:
                yield token_id, subject, until

    def user_entries(self) -> Iterator[tuple[str, float, float]]:
        """
        Every user revocation held now: ``(subject, issued_before, until)``.
        """
        now = self._now()
        for subject, (before, until) in list(self._users.items()):
            if until > now:
                yield subject, before, until

    def _pop_valid(
        self, heap: list[tuple[float, str]], subject: Optional[str]
    ) -> float:
        """
        Drop the live entry closest to expiry from ``heap`` (the overall heap
        when ``subject`` is ``None``, else that subject's) and return its
        ``until``.
        """
        while True:
            until, token_id = heapq.heappop(heap)
            entry = self._entries.get(token_id)
            if entry is None or entry[0] != until:
                continue
            if subject is not None and entry[1] != subject:
                continue
            self._forget(token_id)
            return until

    def _forget(self, token_id: str) -> None:
        until, subject = self._entries.pop(token_id)
        mine = self._by_subject[subject]
        del mine[token_id]
        if not mine:
            del self._by_subject[subject]
            del self._subject_heaps[subject]

    def _purge(self) -> None:
        now = self._now()
        while self._heap and self._heap[0][0] <= now:
            until, token_id = heapq.heappop(self._heap)
            entry = self._entries.get(token_id)
            if entry is not None and entry[0] == until:
                self._forget(token_id)
        if self._floors:
            for subject in [s for s, f in self._floors.items() if f <= now]:
                del self._floors[subject]
        if self._users:
            for subject in [s for s, (_, u) in self._users.items() if u <= now]:
                del self._users[subject]

    def _compact(self, subject: str) -> None:
        # Dropped entries leave stale pairs in the heaps; rebuild a heap
        # once it is mostly stale, so memory follows the live entries. (A
        # subject's heap only grows when it revokes, so only the subject
        # just seen needs a look.)
        if len(self._heap) > 2 * len(self._entries) + 64:
            self._heap = [(u, t) for t, (u, _) in self._entries.items()]
            heapq.heapify(self._heap)
        heap = self._subject_heaps.get(subject)
        if heap is not None:
            live = self._by_subject[subject]
            if len(heap) > 2 * len(live) + 64:
                heap[:] = [(u, t) for t, u in live.items()]
                heapq.heapify(heap)
