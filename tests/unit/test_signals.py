"""
Tests for :mod:`metagateway.daemon.signals`: a process stops on its first
``SIGTERM`` or ``SIGINT`` and ignores the ones after.
"""

from __future__ import annotations

import signal
from typing import Any, Callable

from twisted.trial.unittest import SynchronousTestCase

from metagateway.daemon.signals import STOP_SIGNALS, stop_once


class RunningReactor:
    """
    Runs what is to be called once it runs, at once (it runs already).
    """

    def callWhenRunning(self, f: Callable[[], object]) -> None:
        f()


class StopOnceTests(SynchronousTestCase):
    """
    :func:`stop_once` over the process's signal table, patched.
    """

    def setUp(self) -> None:
        self.stops: list[int] = []
        self.table: dict[int, Any] = {
            int(signal.SIGTERM): lambda number, frame: self.stops.append(number),
            int(signal.SIGINT): lambda number, frame: self.stops.append(number),
        }
        self.patch(signal, "getsignal", lambda number: self.table[int(number)])
        self.patch(signal, "signal", self.table.__setitem__)

    def test_first_stops_later_ignored(self) -> None:
        """
        The first stop signal reaches the reactor's own handler; from then
        on both signals are ignored.
        """
        stop_once(RunningReactor())
        self.table[int(signal.SIGTERM)](signal.SIGTERM, None)
        self.assertEqual(self.stops, [signal.SIGTERM])
        for number in STOP_SIGNALS:
            self.assertIs(self.table[int(number)], signal.SIG_IGN)

    def test_sigint_first(self) -> None:
        """
        ``SIGINT`` first is handled as the reactor handles it, and a
        ``SIGTERM`` after it is ignored too.
        """
        stop_once(RunningReactor())
        self.table[int(signal.SIGINT)](signal.SIGINT, None)
        self.assertEqual(self.stops, [signal.SIGINT])
        self.assertIs(self.table[int(signal.SIGTERM)], signal.SIG_IGN)

    def test_not_handled_left_alone(self) -> None:
        """
        A signal without a handler of the reactor's (ignored, or the
        default) keeps its disposition.
        """
        self.table[int(signal.SIGINT)] = signal.SIG_IGN
        stop_once(RunningReactor())
        self.assertIs(self.table[int(signal.SIGINT)], signal.SIG_IGN)
        self.table[int(signal.SIGTERM)](signal.SIGTERM, None)
        self.assertEqual(self.stops, [signal.SIGTERM])
