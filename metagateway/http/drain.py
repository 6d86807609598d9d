"""
Graceful drain: count the requests in flight, and on stop wait for them
for a bounded period.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from metagateway.notes import RequestNotes, notes_of


class InFlight:
    """
    The requests the gateway is answering right now.

    :ivar count: how many are in flight.
    :ivar draining: set once :meth:`drain` is called; answers given from
        then on close their connection (``Connection: close``).
    """

    def __init__(self) -> None:
        self.count = 0
        self.draining = False
        self._idle: list[Deferred[bool]] = []

    def track(
        self,
        request: Any,
        watch: bool = True,
        notes: Optional[RequestNotes] = None,
    ) -> None:
        """
        Count ``request`` until its answer is finished or its connection
        lost.

        :param watch: call :meth:`done` when that happens; pass ``False``
            when the caller does.
        :param notes: the request's notes, when the caller has them.
        """
        self.count += 1
        (notes or notes_of(request)).in_flight = self
        if watch:
            request.notifyFinish().addBoth(self.done)

    def done(self, result: Any = None) -> None:
        """
        One tracked request is over.
        """
        self.count -= 1
        if self.count == 0:
            waiters, self._idle = self._idle, []
            for d in waiters:
                if not d.called:
                    d.callback(True)

    def drain(self, clock: IReactorTime, timeout: float) -> Deferred[bool]:
        """
        Start draining, and wait until nothing is in flight.

        :param clock: times the drain period.
        :param timeout: the longest wait, in seconds.
        :return: a Deferred firing with ``True`` once nothing is in flight,
            or ``False`` when ``timeout`` passes first.
        """
        self.draining = True
        d: Deferred[bool] = Deferred()
        if self.count == 0:
            d.callback(True)
            return d
        self._idle.append(d)
        call = clock.callLater(timeout, self._expire, d)

        def cancel_timer(result: bool) -> bool:
            if call.active():
                call.cancel()
            return result

        d.addBoth(cancel_timer)
        return d

    def _expire(self, d: Deferred[bool]) -> None:
        if d in self._idle:
            self._idle.remove(d)
        if not d.called:
            d.callback(False)


def is_draining(request: IRequest) -> bool:
    """
    Whether ``request`` is answered while the gateway drains.
    """
    return notes_of(request).draining()
