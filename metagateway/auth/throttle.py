"""
Counting failed logins per username and per client address.

Each key keeps the times of its failures in the last window (at most
``limit`` of them, so memory per key is bounded) and the number of keys is
bounded too. Past that bound, keys that are not being held back are
forgotten first (least recently failed first): a flood of random usernames
evicts its own one-failure entries, not the entry of an account under
attack. Only when every remembered key is being held back is the least
recently failed of those forgotten.

A login counts as a failure from the moment it starts (see
:meth:`LoginThrottle.begin`), so a burst of concurrent guesses cannot all
slip past the check while the credential store is being asked.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Callable, Optional

from twisted.internet.defer import Deferred

from metagateway.addresses import parse_address

# Re-exported: they lived here before the state layer held them.
from metagateway.state.counters import DEFAULT_MAX_KEYS as DEFAULT_MAX_KEYS
from metagateway.state.counters import FailureCounter as FailureCounter
from metagateway.state.interfaces import ILoginAttempt, ISecurityState
from metagateway.state.interfaces import Throttled as Throttled

#: Keys longer than this many UTF-8 bytes are remembered by their digest.
_MAX_KEY_BYTES = 128


def user_key(username: str) -> str:
    """
    The key a username is counted under: itself, or a digest of it when it
    is long (the body may hold up to 64 KiB of it).
    """
    encoded = username.encode("utf-8", "surrogatepass")
    if len(encoded) <= _MAX_KEY_BYTES:
        return username
    return "sha256:" + hashlib.sha256(encoded).hexdigest()


def address_key(address: str) -> str:
    """
    The key a client address is counted under.

    An IPv6 address counts under its ``/64`` network (one subscriber is
    usually given a whole ``/64``, so single addresses would cost an
    attacker nothing); an IPv4-mapped IPv6 address counts as the IPv4
    address; anything else (a UNIX socket, an unparsable forwarded value)
    as itself, or a digest of it when it is long.
    """
    parsed = parse_address(address.strip())
    if parsed is None:
        return user_key(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)


class LoginAttempt:
    """
    One login in progress, counted as a failure until told otherwise.

    Calling nothing leaves it counted as a failure.
    """

    def __init__(
        self,
        throttle: LoginThrottle,
        user: str,
        address: str,
        user_time: Optional[float],
        address_time: Optional[float],
    ) -> None:
        self._throttle = throttle
        self._user = user
        self._address = address
        self._user_time = user_time
        self._address_time = address_time

    def succeeded(self) -> None:
        """
        The password was right: the username's count starts again, and this
        attempt no longer counts against the address.
        """
        self._throttle.users.reset(self._user)
        self._throttle.addresses.forgive(self._address, self._address_time)

    def abandoned(self) -> None:
        """
        The login could not be decided (the store was unavailable): this
        attempt no longer counts against either key.
        """
        self._throttle.users.forgive(self._user, self._user_time)
        self._throttle.addresses.forgive(self._address, self._address_time)


class LoginThrottle:
    """
    The pair of counters that every login endpoint shares.

    :param per_user: failures per username per window (0 = off).
    :param per_address: failures per client address per window (0 = off).
    :param window: the window, in seconds (0 = both off).
    :param now: returns the current time.
    :param max_keys: most keys each counter remembers.
    :param state: the shared state the logins are counted in (see
        :meth:`start`); by default one held in this process, on
        :attr:`users` and :attr:`addresses`.
    """

    def __init__(
        self,
        per_user: int,
        per_address: int,
        window: float,
        now: Callable[[], float],
        max_keys: int = DEFAULT_MAX_KEYS,
        state: Optional[ISecurityState] = None,
    ) -> None:
        self.users = FailureCounter(per_user, window, now, max_keys)
        self.addresses = FailureCounter(per_address, window, now, max_keys)
        if state is None:
            from metagateway.state.memory import MemorySecurityState

            state = MemorySecurityState(now, users=self.users, addresses=self.addresses)
        self.state = state

    def start(self, username: str, address: str) -> Deferred[ILoginAttempt]:
        """
        Start a login in the shared state: as :meth:`begin`, counted
        wherever the state is shared.

        :return: fires with the attempt, or fails with
            :class:`~metagateway.state.interfaces.Throttled` or
            :class:`~metagateway.state.interfaces.StateUnavailable`.
        """
        return self.state.begin_login(user_key(username), address_key(address))

    def retry_after(self, username: str, address: str) -> Optional[int]:
        """
        Seconds to wait before this login may be tried, or ``None``.
        """
        waits = [
            w
            for w in (
                self.users.retry_after(user_key(username)),
                self.addresses.retry_after(address_key(address)),
            )
            if w is not None
        ]
        return max(waits) if waits else None

    def begin(self, username: str, address: str) -> LoginAttempt:
        """
        Start a login: refuse it if either key is held back, else count it
        as a failure until the returned attempt says otherwise.

        :raises Throttled: when the login must not be tried now.
        """
        wait = self.retry_after(username, address)
        if wait is not None:
            raise Throttled(wait)
        user, where = user_key(username), address_key(address)
        return LoginAttempt(
            self,
            user,
            where,
            self.users.record_failure(user),
            self.addresses.record_failure(where),
        )

    def failed(self, username: str, address: str) -> None:
        """
        Count a failed login (for callers that do not use :meth:`begin`).
        """
        self.users.record_failure(user_key(username))
        self.addresses.record_failure(address_key(address))

    def succeeded(self, username: str) -> None:
        """
        Reset the username's count (for callers that do not use
        :meth:`begin`).
        """
        self.users.reset(user_key(username))
