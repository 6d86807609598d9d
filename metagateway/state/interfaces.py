"""
The shared security state (:ref:`contract-shared-state`), as one interface.

What is shared: revoked token ids (until the token's ``exp``), per-user
revocations ("tokens of this user issued at or before T are refused") and
the login failure counters, per user and per client address, with one
sliding window.

Checking a token is on every request's path, so it is synchronous and
answered from memory: an implementation shared by several processes keeps
a local mirror of the revocations. Logins (rare) may wait for the store.
"""

from __future__ import annotations

import math
from typing import Optional

from zope.interface import Attribute, Interface

from twisted.internet.defer import Deferred


class StateUnavailable(Exception):
    """
    The shared state store cannot be reached now: a login cannot be
    counted, so it is refused (``503 STATE_UNAVAILABLE``), never let
    through.
    """


class Throttled(Exception):
    """
    Too many recent failures: the login is refused without being tried.

    :ivar retry_after: whole seconds until another attempt may go ahead.
    """

    def __init__(self, retry_after: int) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


def retry_seconds(wait: float, window: float) -> int:
    """
    The ``Retry-After`` of a key held back ``wait`` more seconds: a whole
    number of seconds, at least 1 and at most the window rounded up.
    """
    return max(1, min(math.ceil(window), math.ceil(wait)))


class IRevocationList(Interface):
    """
    The revoked tokens a token authority refuses.

    Both methods are synchronous: they are on every request's path. A store
    shared by several processes keeps a local mirror and answers from it.
    """

    def revoke(token_id: str, subject: str, until: float) -> None:
        """
        Refuse the token ``token_id`` of ``subject`` (its ``projectId``)
        until the POSIX time ``until`` (its ``exp`` plus the leeway).

        A shared implementation refuses it here at once and delivers the
        revocation to the other processes as soon as it can.
        """

    def is_revoked(
        token_id: str, subject: str, until: float, issued: float = math.inf
    ) -> bool:
        """
        Whether the token ``token_id`` of ``subject``, valid until
        ``until`` and issued at ``issued`` (its ``iat``; ``-inf`` when it
        has none, so that a user revocation refuses it), is refused now.
        """


class ILoginAttempt(Interface):
    """
    One login in progress, counted as a failure for its username and its
    client address until told otherwise. Calling nothing leaves it counted.

    Neither method waits for, or fails because of, the store: a shared
    implementation sends the change and logs a failure to do so.
    """

    def succeeded() -> None:
        """
        The password was right: the username's count starts again, and this
        attempt no longer counts against the address.
        """

    def abandoned() -> None:
        """
        The login could not be decided (the credential store was
        unavailable): this attempt no longer counts against either key.
        """


class ISecurityState(IRevocationList):
    """
    Revocations and login failure counters, shared by every process that
    uses the same store.

    The revocation methods of :class:`IRevocationList` stay synchronous.
    """

    per_user = Attribute("Failures allowed per username per window; 0 = off.")
    per_address = Attribute("Failures allowed per client address per window; 0 = off.")
    window = Attribute("The sliding window, in seconds.")

    def revoke_user(subject: str, issued_before: float, until: float) -> Deferred[None]:
        """
        Refuse every token of ``subject`` issued at or before the POSIX
        time ``issued_before``, until ``until`` (when the last of them has
        expired). Refused here at once.

        :return: fires once the revocation is in the shared store (at once
            for a store held in this process).
        :raises StateUnavailable: (as the Deferred's failure) when the
            store cannot take it now; it is still refused here, and a
            shared implementation keeps delivering it.
        """

    def begin_login(user: str, address: str) -> Deferred[ILoginAttempt]:
        """
        Start a login for the counter keys ``user`` and ``address``: refuse
        it if either is held back (at its limit within the window), else
        count it as a failure for both, atomically, until the attempt says
        otherwise.

        :return: fires with the :class:`ILoginAttempt`.
        :raises Throttled: (as the Deferred's failure) when either key is
            held back.
        :raises StateUnavailable: (as the Deferred's failure) when the
            store cannot be reached.
        """

    def retry_after(user: str, address: str) -> Deferred[Optional[int]]:
        """
        Whole seconds until a login for ``user`` from ``address`` may go
        ahead, or ``None`` when it may now. Counts nothing.

        :raises StateUnavailable: (as the Deferred's failure) when the
            store cannot be reached.
        """
