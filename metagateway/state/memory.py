"""
The security state of one process: today's behaviour, and the default when
a gateway runs alone. The supervisor of ``--workers N`` holds one of these
for all its workers (:mod:`metagateway.state.supervisor`).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

from zope.interface import implementer

from twisted.internet.defer import Deferred, fail, succeed

from metagateway.state.attempts import TimedLoginAttempt
from metagateway.state.counters import DEFAULT_MAX_KEYS, FailureCounter
from metagateway.state.interfaces import (
    ILoginAttempt,
    ISecurityState,
    Throttled,
)
from metagateway.state.revocations import RevocationList


class MemoryLoginAttempt(TimedLoginAttempt):
    """
    A login counted in a :class:`MemorySecurityState`.
    """


@implementer(ISecurityState)
class MemorySecurityState:
    """
    Revocations and login failure counters held in this process.

    :param now: returns the current POSIX time.
    :param per_user: failures per username per window; 0 = off.
    :param per_address: failures per client address per window; 0 = off.
    :param window: the sliding window, in seconds; 0 turns both off.
    :param max_keys: most keys each counter remembers.
    :param users: the per-user counter to use (a :class:`FailureCounter`
        shared with a :class:`~metagateway.auth.throttle.LoginThrottle`);
        a new one if omitted.
    :param addresses: the per-address counter, likewise.
    :param revoked: the revocations; a new :class:`RevocationList` if
        omitted.
    """

    def __init__(
        self,
        now: Callable[[], float],
        per_user: int = 5,
        per_address: int = 20,
        window: float = 60.0,
        max_keys: int = DEFAULT_MAX_KEYS,
        users: Optional[FailureCounter] = None,
        addresses: Optional[FailureCounter] = None,
        revoked: Optional[RevocationList] = None,
    ) -> None:
        self._now = now
        self.users = (
            users
            if users is not None
            else FailureCounter(per_user, window, now, max_keys)
        )
        self.addresses = (
            addresses
            if addresses is not None
            else FailureCounter(per_address, window, now, max_keys)
        )
        self.revoked = revoked if revoked is not None else RevocationList(now)

    @property
    def per_user(self) -> int:
        """
        Failures allowed per username per window.
        """
        return self.users.limit

    @property
    def per_address(self) -> int:
        """
        Failures allowed per client address per window.
        """
        return self.addresses.limit

    @property
    def window(self) -> float:
        """
        The sliding window, in seconds.
        """
        return self.users.window

    def revoke(self, token_id: str, subject: str, until: float) -> None:
        """
        Refuse the token ``token_id`` of ``subject`` until ``until``.
        """
        self.revoked.revoke(token_id, subject, until)

    def is_revoked(
        self, token_id: str, subject: str, until: float, issued: float = math.inf
    ) -> bool:
        """
        Whether the token is refused now (see :class:`IRevocationList`).
        """
        return self.revoked.is_revoked(token_id, subject, until, issued)

    def revoke_user(
        self, subject: str, issued_before: float, until: float
    ) -> Deferred[None]:
        """
        Refuse ``subject``'s tokens issued at or before ``issued_before``.
        """
        self.revoked.revoke_user(subject, issued_before, until)
        return succeed(None)

    def wait(self, user: str, address: str) -> Optional[int]:
        """
        The synchronous :meth:`retry_after`.
        """
        waits = [
            w
            for w in (self.users.retry_after(user), self.addresses.retry_after(address))
            if w is not None
        ]
        return max(waits) if waits else None

    def retry_after(self, user: str, address: str) -> Deferred[Optional[int]]:
        """
        Seconds until a login for these keys may go ahead, or ``None``.
        """
        return succeed(self.wait(user, address))

    def start_login(self, user: str, address: str) -> MemoryLoginAttempt:
        """
        The synchronous :meth:`begin_login`.

        :raises Throttled: when either key is held back.
        """
        wait = self.wait(user, address)
        if wait is not None:
            raise Throttled(wait)
        return MemoryLoginAttempt(
            self,
            user,
            address,
            self.users.record_failure(user),
            self.addresses.record_failure(address),
        )

    def end_login(self, attempt: TimedLoginAttempt, succeeded: bool) -> None:
        """
        Take ``attempt`` back: the username's count starts again if it
        succeeded, else the username forgives it; the address forgives it
        either way.
        """
        if succeeded:
            self.users.reset(attempt.user)
        else:
            self.users.forgive(attempt.user, attempt.user_time)
        self.addresses.forgive(attempt.address, attempt.address_time)

    def begin_login(self, user: str, address: str) -> Deferred[ILoginAttempt]:
        """
        Count a login as a failure for both keys, unless either is held back.
        """
        try:
            attempt: ILoginAttempt = self.start_login(user, address)
        except Throttled as e:
            return fail(e)
        return succeed(attempt)
