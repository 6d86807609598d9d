"""
Tests for :mod:`metagateway.observability.collector` and its place in the daemon.
"""

from __future__ import annotations

import gc

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from metagateway.daemon.tap import Options, makeService
from metagateway.observability.collector import (
    FIRST_GENERATION,
    CollectorTuning,
    tunable,
)
from metagateway.testing import EnvironmentMixin


class CollectorTuningTests(SynchronousTestCase):
    """
    The service sets the collector up while it runs, and undoes it.
    """

    def setUp(self) -> None:
        if not tunable():
            raise self.skipTest("this interpreter's collector has no such knobs")
        self.before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *self.before)
        self.addCleanup(gc.unfreeze)

    def test_start_raises_threshold_and_freezes(self) -> None:
        """
        Starting raises the first generation's threshold and freezes what
        exists.
        """
        service = CollectorTuning()
        service.startService()
        self.assertEqual(gc.get_threshold()[0], FIRST_GENERATION)
        self.assertGreater(gc.get_freeze_count(), 0)

    def test_stop_restores(self) -> None:
        """
        Stopping puts the previous thresholds back and unfreezes.
        """
        service = CollectorTuning()
        service.startService()
        service.stopService()
        self.assertEqual(gc.get_threshold(), self.before)
        self.assertEqual(gc.get_freeze_count(), 0)
        self.assertFalse(service.running)

    def test_stop_without_start(self) -> None:
        """
        Stopping a service that never tuned anything changes nothing.
        """
        gc.set_threshold(123, 4, 5)
        CollectorTuning().stopService()
        self.assertEqual(gc.get_threshold(), (123, 4, 5))


class DaemonTests(EnvironmentMixin, SynchronousTestCase):
    """
    ``twistd metagateway`` tunes its serving process.
    """

    def test_serving_process_tunes(self) -> None:
        """
        The daemon's service tree holds a :class:`CollectorTuning`.
        """
        self.use_environ(
            {
                "GATEWAY_JWT_SECRET": "x" * 40,
                "METAGATEWAY_ACCOUNTS_DIR": self.accounts_dir(),
            }
        )
        options = Options()
        options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1"])
        top = makeService(options, MemoryReactorClock())
        self.assertIsInstance(top.getServiceNamed("collector"), CollectorTuning)  # type: ignore[attr-defined]
