"""
A sliding-window count of failures per key, held in this process.

Each key keeps the times of its failures in the last window (at most
``limit`` of them, so memory per key is bounded) and the number of keys is
bounded too. Past that bound, keys that are not being held back are
forgotten first (least recently failed first): a flood of random usernames
evicts its own one-failure entries, not the entry of an account under
attack. Only when every remembered key is being held back is the least
recently failed of those forgotten.
"""

from __future__ import annotations

import math
from array import array
from collections import OrderedDict
from typing import Callable, Optional

#: Most keys remembered by one counter.
DEFAULT_MAX_KEYS = 100_000


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
