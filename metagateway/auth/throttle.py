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
import math
from array import array
from collections import OrderedDict
from typing import Callable, Optional

from metagateway.addresses import parse_address

#: Most keys remembered by one counter.
DEFAULT_MAX_KEYS = 100_000

#: Keys longer than this many UTF-8 bytes are remembered by their digest.
_MAX_KEY_BYTES = 128


class FailureCounter:
    """
    A sliding-window count of failures per key.

    :param limit: failures allowed per window; ``0`` turns the limit off.
    :param window: the window, in seconds; ``0`` also turns it off.
    :param now: returns the current time in seconds.
    :param max_keys: most keys remembered.
    """

    def __init__(
        self,
        limit: int,
        window: float,
        now: Callable[[], float],
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        self.limit = limit
        self.window = window
        self._now = now
        self._max_keys = max(1, max_keys)
        # Keys below their limit, and keys at it (held back), each ordered
        # from least to most recently failed; each holds its failure times,
        # oldest first, packed as C doubles (a tenth of a deque's size).
        self._counting: OrderedDict[str, array[float]] = OrderedDict()
        self._held: OrderedDict[str, array[float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        """
        Whether this counter limits anything.
        """
        return self.limit > 0 and self.window > 0

    def __len__(self) -> int:
        return len(self._counting) + len(self._held)

    def _recent(self, key: str) -> Optional[array[float]]:
        """
        ``key``'s failures still in the window, dropping older ones.
        """
        times = self._counting.get(key)
        held = times is None
        if held:
            times = self._held.get(key)
            if times is None:
                return None
        assert times is not None
        horizon = self._now() - self.window
        stale = 0
        while stale < len(times) and times[stale] <= horizon:
            stale += 1
        del times[:stale]
        if not times:
            (self._held if held else self._counting).pop(key)
            return None
        if held and len(times) < self.limit:
            del self._held[key]
            self._counting[key] = times
        return times

    def retry_after(self, key: str) -> Optional[int]:
        """
        Whether ``key`` is held back now.

        :return: ``None`` when another attempt may go ahead, else the whole
            number of seconds (at least 1, at most the window rounded up)
            until one may.
        """
        if not self.enabled:
            return None
        times = self._recent(key)
        if times is None or len(times) < self.limit:
            return None
        wait = times[0] + self.window - self._now()
        return max(1, min(math.ceil(self.window), math.ceil(wait)))

    def record_failure(self, key: str) -> Optional[float]:
        """
        Count a failed attempt for ``key``.

        :return: the time recorded (to :meth:`forgive` it later), or
            ``None`` when the counter is off.
        """
        if not self.enabled:
            return None
        times = self._recent(key)
        if times is None:
            times = array("d")
        else:
            self._counting.pop(key, None)
            self._held.pop(key, None)
        when = self._now()
        times.append(when)
        del times[: -self.limit]
        (self._held if len(times) >= self.limit else self._counting)[key] = times
        self._bound()
        return when

    def forgive(self, key: str, when: Optional[float]) -> None:
        """
        Take back one failure of ``key`` recorded at ``when``.
        """
        if when is None:
            return
        times = self._counting.get(key)
        if times is None:
            times = self._held.get(key)
        if times is None:
            return
        try:
            times.remove(when)
        except ValueError:
            return
        self._recent(key)

    def reset(self, key: str) -> None:
        """
        Forget ``key``'s failures (after a successful login).
        """
        self._counting.pop(key, None)
        self._held.pop(key, None)

    def _bound(self) -> None:
        if len(self) <= self._max_keys:
            return
        horizon = self._now() - self.window
        # Keys whose newest failure has left the window cost nothing to drop.
        for table in (self._counting, self._held):
            while table and len(self) > self._max_keys:
                oldest = next(iter(table.values()))
                if oldest[-1] > horizon:
                    break
                table.popitem(last=False)
        while len(self) > self._max_keys:
            (self._counting or self._held).popitem(last=False)


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


class Throttled(Exception):
    """
    Too many recent failures: the login is refused without being tried.

    :ivar retry_after: whole seconds until another attempt may go ahead.
    """

    def __init__(self, retry_after: int) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


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
    """

    def __init__(
        self,
        per_user: int,
        per_address: int,
        window: float,
        now: Callable[[], float],
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        self.users = FailureCounter(per_user, window, now, max_keys)
        self.addresses = FailureCounter(per_address, window, now, max_keys)

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
