"""
Tests for :mod:`metagateway.timers`.
"""

from __future__ import annotations

from zope.interface.verify import verifyObject

from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from metagateway.timers import SharedTimer


class SharedTimerTests(SynchronousTestCase):
    """
    :class:`SharedTimer`: calls of one delay on one reactor timer, each
    made when a timer of its own would make it.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.timer = SharedTimer(self.clock, 10.0)
        self.calls: list[object] = []

    def later(self, name: object, delay: float = 10.0) -> IDelayedCall:
        return self.timer.callLater(delay, self.calls.append, name)

    def test_interfaces(self) -> None:
        """
        The timer is an ``IReactorTime`` and its calls ``IDelayedCall``\\ s,
        with the time they are due.
        """
        self.clock.advance(3)
        call = self.later("a")
        verifyObject(IReactorTime, self.timer)
        verifyObject(IDelayedCall, call)
        self.assertEqual(call.getTime(), 13.0)
        self.assertEqual(self.timer.seconds(), 3.0)
        self.assertEqual(self.timer.getDelayedCalls(), [call])

    def test_on_time_in_order_one_timer(self) -> None:
        """
        Calls set at different times run at their own times, in order,
        with keyword arguments, while the clock holds one timer at most.
        """
        self.later("first")
        self.clock.advance(4)
        self.timer.callLater(10.0, lambda **kw: self.calls.append(kw), key="second")
        self.clock.advance(1)
        self.later("third")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(4.9)
        self.assertEqual(self.calls, [])
        self.clock.advance(0.1)
        self.assertEqual(self.calls, ["first"])
        self.clock.advance(3.9)
        self.assertEqual(self.calls, ["first"])
        self.clock.advance(0.1)
        self.assertEqual(self.calls, ["first", {"key": "second"}])
        self.clock.advance(1)
        self.assertEqual(self.calls, ["first", {"key": "second"}, "third"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.timer), 0)

    def test_late_fire_runs_all_due(self) -> None:
        """
        A timer that fires late runs every call due by then, in order.
        """
        self.later(1)
        self.clock.advance(1)
        self.later(2)
        self.clock.advance(1)
        self.later(3)
        self.clock.advance(30)
        self.assertEqual(self.calls, [1, 2, 3])

    def test_cancel(self) -> None:
        """
        A cancelled call never runs and lets go of its arguments; the calls
        around it still run on time. Cancelling twice, or after the call,
        fails as a ``DelayedCall`` does.
        """
        self.later("first")
        second = self.later("second")
        self.later("third")
        second.cancel()
        self.assertFalse(second.active())
        self.assertEqual(len(self.timer), 2)
        self.assertRaises(AlreadyCancelled, second.cancel)
        self.clock.advance(10)
        self.assertEqual(self.calls, ["first", "third"])
        self.assertEqual(second.args, ())  # type: ignore[attr-defined]
        done = self.later("done")
        self.clock.advance(10)
        self.assertFalse(done.active())
        self.assertRaises(AlreadyCalled, done.cancel)
        self.assertRaises(AlreadyCalled, done.reset, 1)

    def test_other_delay_own_timer(self) -> None:
        """
        A call with another delay is the clock's own.
        """
        call = self.later("other", 3.0)
        self.assertEqual(self.clock.getDelayedCalls(), [call])
        self.assertEqual(len(self.timer), 0)
        self.clock.advance(3)
        self.assertEqual(self.calls, ["other"])

    def test_reset_and_delay(self) -> None:
        """
        ``reset`` and ``delay`` move a call to a timer of its own, due at
        its new time; it can be moved again, or cancelled, there.
        """
        early = self.later("early")
        late = self.later("late")
        late.reset(2)
        self.assertEqual(late.getTime(), 2.0)
        self.assertEqual(self.timer.getDelayedCalls(), [early])
        self.clock.advance(2)
        self.assertEqual(self.calls, ["late"])
        self.assertFalse(late.active())
        early.delay(5)
        self.assertEqual(early.getTime(), 15.0)
        early.delay(1)
        self.clock.advance(13.9)
        self.assertEqual(self.calls, ["late"])
        self.clock.advance(0.1)
        self.assertEqual(self.calls, ["late", "early"])
        moved = self.later("moved")
        moved.reset(1)
        moved.cancel()
        self.clock.advance(20)
        self.assertEqual(self.calls, ["late", "early"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_call_may_set_and_cancel(self) -> None:
        """
        A call may set another, or cancel one that was due at the same
        time, without upsetting the sweep.
        """
        holder: list[IDelayedCall] = []

        def first() -> None:
            self.calls.append("first")
            holder[0].cancel()
            self.later("later")

        self.timer.callLater(10.0, first)
        holder.append(self.later("cancelled"))
        self.clock.advance(10)
        self.assertEqual(self.calls, ["first"])
        self.clock.advance(10)
        self.assertEqual(self.calls, ["first", "later"])

    def test_error_logged_rest_run(self) -> None:
        """
        A call that raises is logged; the calls after it still run.
        """
        self.timer.callLater(10.0, lambda: 1 / 0)
        self.later("after")
        self.clock.advance(10)
        self.assertEqual(self.calls, ["after"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_stop(self) -> None:
        """
        ``stop`` cancels the reactor timer once no call waits for it, and
        leaves it while one does; a later call sets it again.
        """
        first = self.later("first")
        self.later("second")
        first.cancel()
        self.timer.stop()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(10)
        self.assertEqual(self.calls, ["second"])
        third = self.later("third")
        third.cancel()
        self.timer.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.later("fourth")
        self.clock.advance(10)
        self.assertEqual(self.calls, ["second", "fourth"])

    def test_stale_timer_reschedules(self) -> None:
        """
        When the earliest call was cancelled, the timer's firing sets it
        again for the next one instead of running that early.
        """
        first = self.later("first")
        self.clock.advance(5)
        self.later("second")
        first.cancel()
        self.clock.advance(5)
        self.assertEqual(self.calls, [])
        self.assertEqual(self.clock.getDelayedCalls()[0].getTime(), 15.0)
        self.clock.advance(5)
        self.assertEqual(self.calls, ["second"])
