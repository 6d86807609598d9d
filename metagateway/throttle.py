"""
Counting failed logins per username and per client address.

Each key keeps the times of its failures in the last window (at most
``limit`` of them, so memory per key is bounded) and the number of keys is
bounded too: past it, the least recently failed keys are forgotten first, so
a flood of random usernames cannot exhaust memory.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Callable, Optional

#: Most keys remembered by one counter.
DEFAULT_MAX_KEYS = 100_000


class FailureCounter:
    """
    A sliding-window count of failures per key.

    :param limit: failures allowed per window; ``0`` turns the limit off.
    :param window: the window, in seconds.
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
        self._max_keys = max_keys
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str) -> Optional[deque[float]]:
        times = self._failures.get(key)
        if times is None:
            return None
        horizon = self._now() - self.window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def retry_after(self, key: str) -> Optional[int]:
        """
        Whether ``key`` is held back now.

        :return: ``None`` when another attempt may go ahead, else the whole
            number of seconds until one may.
        """
        if self.limit <= 0:
            return None
        times = self._recent(key)
        if times is None or len(times) < self.limit:
            return None
        wait = times[0] + self.window - self._now()
        return max(1, int(wait + 0.999))

    def record_failure(self, key: str) -> None:
        """
        Count a failed attempt for ``key``.
        """
        if self.limit <= 0:
            return
        times = self._recent(key)
        if times is None:
            times = self._failures[key] = deque(maxlen=self.limit)
        times.append(self._now())
        self._failures.move_to_end(key)
        while len(self._failures) > self._max_keys:
            self._failures.popitem(last=False)

    def reset(self, key: str) -> None:
        """
        Forget ``key``'s failures (after a successful login).
        """
        self._failures.pop(key, None)


class LoginThrottle:
    """
    The pair of counters that every login endpoint shares.

    :param per_user: failures per username per window (0 = off).
    :param per_address: failures per client address per window (0 = off).
    :param window: the window, in seconds.
    :param now: returns the current time.
    """

    def __init__(
        self, per_user: int, per_address: int, window: float, now: Callable[[], float]
    ) -> None:
        self.users = FailureCounter(per_user, window, now)
        self.addresses = FailureCounter(per_address, window, now)

    def retry_after(self, username: str, address: str) -> Optional[int]:
        """
        Seconds to wait before this login may be tried, or ``None``.
        """
        waits = [
            w
            for w in (
                self.users.retry_after(username),
                self.addresses.retry_after(address),
            )
            if w is not None
        ]
        return max(waits) if waits else None

    def failed(self, username: str, address: str) -> None:
        """
        Count a failed login.
        """
        self.users.record_failure(username)
        self.addresses.record_failure(address)

    def succeeded(self, username: str) -> None:
        """
        Reset the username's count after a successful login.
        """
        self.users.reset(username)
