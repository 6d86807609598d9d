"""
``--workers N`` without ``--state-url``: the state the supervisor holds
and its workers share over AMP, connected in memory here (the contract of
:mod:`tests.statecontract`, and what a worker's connection adds).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.test.iosim import IOPump, connect, makeFakeClient, makeFakeServer
from twisted.trial.unittest import SynchronousTestCase

from metagateway.state.interfaces import StateUnavailable, Throttled
from metagateway.state.memory import MemorySecurityState
from metagateway.state.supervisor import BATCH, StateHub, SupervisedSecurityState
from tests.unit.test_state import SynchronousContractMixin


class SupervisedCase(SynchronousTestCase):
    """
    A hub and workers connected to it in memory.
    """

    clock: Clock

    def setUp(self) -> None:
        super().setUp()
        self.pumps: list[IOPump] = []

    def hub(
        self, per_user: int = 5, per_address: int = 20, window: float = 60.0
    ) -> StateHub:
        """
        A supervisor's hub on :attr:`clock`.
        """
        state = MemorySecurityState(self.clock.seconds, per_user, per_address, window)
        return StateHub(state, self.clock)

    def worker(self, hub: StateHub) -> SupervisedSecurityState:
        """
        A worker's state, connected to ``hub`` in memory.
        """
        limits = hub.state
        worker = SupervisedSecurityState(
            self.clock,
            None,
            limits.per_user,
            limits.per_address,
            limits.window,
            now=self.clock.seconds,
        )
        served = hub.protocol()
        client = worker.protocol()
        self.pumps.append(
            connect(served, makeFakeServer(served), client, makeFakeClient(client))
        )
        return worker

    def pump_all(self) -> None:
        """
        Deliver everything in flight, both ways, on every connection.
        """
        for _ in range(3):
            for pump in self.pumps:
                pump.flush(advanceClock=False)


class SupervisedStateContractTests(SynchronousContractMixin, SupervisedCase):
    """
    The contract for two workers sharing one supervisor's state.
    """

    async def make_states(
        self, per_user: int, per_address: int, window: float
    ) -> tuple[Any, Any]:
        hub = self.hub(per_user, per_address, window)
        return self.worker(hub), self.worker(hub)

    async def settle(self, d: Deferred[Any]) -> Any:
        self.pump_all()
        return await d

    async def propagated(self, check: Any) -> None:
        self.pump_all()
        self.assertTrue(check())


class SupervisedStateTests(SupervisedCase):
    """
    What the supervisor's connection adds: the revocations held are sent to
    a worker that connects, and a worker cut off fails logins closed.
    """

    def setUp(self) -> None:
        super().setUp()
        self.clock = Clock()
        self.clock.advance(1_000_000)

    def test_snapshot_on_connect(self) -> None:
        """
        A worker that connects later (a restarted one) is sent every
        revocation the supervisor holds, in batches.
        """
        hub = self.hub()
        first = self.worker(hub)
        until = self.clock.seconds() + 3600
        count = BATCH * 2 + 7
        for i in range(count):
            first.revoke("jti:%d" % (i,), "user%d" % (i % 50,), until)
        revoked = first.revoke_user("alice", self.clock.seconds(), until)
        self.pump_all()
        self.successResultOf(revoked)
        late = self.worker(hub)
        self.pump_all()
        self.assertEqual(len(list(late.revoked.entries())), count)
        self.assertTrue(late.is_revoked("jti:%d" % (count - 1,), "user6", until))
        self.assertTrue(late.is_revoked("x", "alice", until, self.clock.seconds()))
        self.assertEqual(late.stats.revocations_seen, count + 1)

    def test_lost_supervisor(self) -> None:
        """
        Without the supervisor, logins fail with :class:`StateUnavailable`
        and revocations still hold in the worker.
        """
        hub = self.hub()
        worker = self.worker(hub)
        self.assertTrue(worker.stats.connected)
        assert worker.remote is not None and worker.remote.transport is not None
        worker.remote.transport.loseConnection()
        self.pump_all()
        self.assertFalse(worker.stats.connected)
        self.failureResultOf(worker.begin_login("alice", "a"), StateUnavailable)
        self.failureResultOf(worker.retry_after("alice", "a"), StateUnavailable)
        until = self.clock.seconds() + 10
        worker.revoke("jti:1", "alice", until)
        self.assertTrue(worker.is_revoked("jti:1", "alice", until))
        self.failureResultOf(
            worker.revoke_user("alice", self.clock.seconds(), until), StateUnavailable
        )
        self.assertEqual(hub.connections, set())
        self.flushLoggedErrors()


class SupervisedNamesTests(SupervisedCase):
    """
    Any text a login or a token can carry crosses the connection.
    """

    def setUp(self) -> None:
        super().setUp()
        self.clock = Clock()

    def test_lone_surrogate(self) -> None:
        """
        A name holding a lone surrogate (a JSON body can) is counted and
        revoked like any other.
        """
        hub = self.hub(per_user=1)
        a, b = self.worker(hub), self.worker(hub)
        name = "\ud800lone"
        d = a.begin_login(name, "192.0.2.1")
        self.pump_all()
        self.successResultOf(d)
        d = b.begin_login(name, "192.0.2.2")
        self.pump_all()
        self.failureResultOf(d, Throttled)
        a.revoke("jti:" + name, name, 100)
        self.pump_all()
        self.assertTrue(b.is_revoked("jti:" + name, name, 100))


class WorkerSettingsTests(SynchronousTestCase):
    """
    A worker learns its socket to the supervisor's state from its
    environment, and does not pass that on.
    """

    def test_state_fd(self) -> None:
        """
        ``METAGATEWAY_WORKER_STATE_FD`` is read in a worker, and dropped
        from the environment given to workers.
        """
        from metagateway.daemon.workers import (
            WORKER_INDEX_VARIABLE,
            WORKER_SOCKETS_VARIABLE,
            WORKER_STATE_VARIABLE,
            ProcessSettings,
            worker_environ,
        )

        environ = {
            WORKER_INDEX_VARIABLE: "1",
            WORKER_SOCKETS_VARIABLE: "3:2",
            WORKER_STATE_VARIABLE: "4",
        }
        settings = ProcessSettings.from_options({}, environ)
        self.assertEqual((settings.worker_index, settings.state_fd), (1, 4))
        self.assertNotIn(WORKER_STATE_VARIABLE, worker_environ(environ))
        environ.pop(WORKER_STATE_VARIABLE)
        self.assertIsNone(ProcessSettings.from_options({}, environ).state_fd)
