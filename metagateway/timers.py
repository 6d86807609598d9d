"""
Many timeouts of one length, on one reactor timer.

A ``callLater`` costs a ``DelayedCall``, a push onto the reactor's heap of
timers (ordered by Python-level comparisons) and, when cancelled, a mark
and an eventual rebuild of that heap. The gateway sets such a timeout on
almost every request only to cancel it moments later: the connection
pool's expiry of an idle connection (``cachedConnectionTimeout``), the
proxy's wait for an upstream's answer.

When every timeout has the same length, the later one is set, the later it
is due. :class:`SharedTimer` keeps them in a dictionary in the order they
were set, with one reactor timer due at the earliest; cancelling one just
takes it out of the dictionary. When the timer fires, the calls that are
due run in order and the timer is set again for the next. Each call runs
when a timer of its own would have.

The order holds while the clock does not go backwards: after the wall
clock is stepped back, a call set later may come due before one set
earlier, and then runs late, by at most the step. For timeouts of
seconds or minutes that is harmless.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from zope.interface import implementer

from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

log = Logger()


def _done() -> None:
    """
    What a call that ran or was cancelled holds instead of its callable
    (so that it keeps nothing alive).
    """


#: The keyword arguments of a call that ran or was cancelled (never
#: changed: ``func(**kw)`` only reads it).
_NO_KEYWORDS: dict[str, Any] = {}


@implementer(IDelayedCall)
class SharedCall:
    """
    One call of a :class:`SharedTimer`, as ``callLater`` returns it.

    ``delay`` and ``reset`` move it to a reactor timer of its own, since its
    new time may break the shared order.
    """

    __slots__ = ("timer", "time", "func", "args", "kw", "called", "cancelled", "own")

    def __init__(
        self,
        timer: SharedTimer,
        time: float,
        func: Callable[..., object],
        args: tuple[Any, ...],
        kw: dict[str, Any],
    ) -> None:
        self.timer = timer
        self.time = time
        self.func = func
        self.args = args
        self.kw = kw
        self.called = False
        self.cancelled = False
        #: the reactor timer of its own, once moved by delay() or reset().
        self.own: Optional[IDelayedCall] = None

    def getTime(self) -> float:
        return self.time

    def active(self) -> bool:
        return not (self.called or self.cancelled)

    def _check(self) -> None:
        if self.cancelled:
            raise AlreadyCancelled
        if self.called:
            raise AlreadyCalled

    def cancel(self) -> None:
        if self.called or self.cancelled:
            self._check()
        self.cancelled = True
        if self.own is not None:
            self.own.cancel()
        else:
            self.timer._waiting.pop(self, None)
        self.func, self.args, self.kw = _done, (), _NO_KEYWORDS

    def delay(self, secondsLater: float) -> None:
        self._check()
        self._move(self.time + secondsLater)

    def reset(self, secondsFromNow: float) -> None:
        self._check()
        self._move(self.timer.clock.seconds() + secondsFromNow)

    def _move(self, time: float) -> None:
        self.time = time
        clock = self.timer.clock
        if self.own is not None:
            self.own.reset(max(0.0, time - clock.seconds()))
            return
        self.timer._waiting.pop(self, None)
        self.own = clock.callLater(max(0.0, time - clock.seconds()), self.run)

    def run(self) -> None:
        """
        Make the call (by its timer, when due).
        """
        self.called = True
        func, args, kw = self.func, self.args, self.kw
        self.func, self.args, self.kw = _done, (), _NO_KEYWORDS
        try:
            func(*args, **kw)
        except Exception:
            log.failure("Unhandled error in a timed call")


@implementer(IReactorTime)
class SharedTimer:
    """
    An ``IReactorTime`` on which the calls made ``delay`` seconds later
    share one reactor timer (see the module's docstring). A call with any
    other delay gets a timer of its own from ``clock``.

    :param clock: the reactor's clock.
    :param delay: the length of the shared timeouts, in seconds.
    """

    def __init__(self, clock: IReactorTime, delay: float) -> None:
        self.clock = clock
        self.delay = delay
        self._waiting: dict[SharedCall, None] = {}
        self._call: Optional[IDelayedCall] = None

    def seconds(self) -> float:
        return self.clock.seconds()

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: Any, **kw: Any
    ) -> IDelayedCall:
        if delay != self.delay:
            return self.clock.callLater(delay, callable, *args, **kw)
        call = SharedCall(self, self.clock.seconds() + delay, callable, args, kw)
        self._waiting[call] = None
        if self._call is None:
            self._schedule(call.time)
        return call

    def getDelayedCalls(self) -> list[IDelayedCall]:
        """
        The shared calls still waiting (those moved to timers of their own
        are among the clock's).
        """
        return list(self._waiting)

    def __len__(self) -> int:
        return len(self._waiting)

    def stop(self) -> None:
        """
        Cancel the reactor timer if no call waits for it (say, once the
        calls have all been cancelled, when shutting down); the next call
        sets it again.
        """
        if self._call is not None and not self._waiting:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def _schedule(self, time: float) -> None:
        self._call = self.clock.callLater(
            max(0.0, time - self.clock.seconds()), self._fire
        )

    def _fire(self) -> None:
        self._call = None
        waiting = self._waiting
        while waiting:
            call = next(iter(waiting))
            if call.time > self.clock.seconds():
                self._schedule(call.time)
                return
            del waiting[call]
            call.run()
