"""
Tests for :mod:`metagateway.daemon.workers` and the ``tap`` options that reach
it: settings, endpoint offsets, the workers' command line and environment,
and the supervisor (start, restart with backoff, stop) driven by a fake
process reactor.
"""

from __future__ import annotations

import io
import os
import socket
import sys
import tempfile
from typing import Any, Optional

from twisted.application.service import MultiService
from twisted.internet.address import IPv4Address
from twisted.internet.error import (
    CannotListenError,
    ProcessDone,
    ProcessExitedAlready,
    ProcessTerminated,
)
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from metagateway.config import ConfigurationError
from metagateway.daemon.adopted import AdoptedPortService, ParentWatch
from metagateway.daemon.sockets import (
    HeldSocket,
    bind_sockets,
    offset_endpoint,
    tcp_address,
)
from metagateway.daemon.tap import Options, makeService
from metagateway.daemon.workers import (
    FIRST_SOCKET_FD,
    KEEP_QUEUED_DELAY,
    MAX_RESTART_DELAY,
    PYPY_WORKER_NURSERY,
    RESTART_DELAY,
    STABLE_SECONDS,
    WORKER_INDEX_VARIABLE,
    WORKER_SOCKETS_VARIABLE,
    ProcessSettings,
    WorkerSupervisor,
    worker_argv,
    worker_environ,
)
from metagateway.http.site import GatewaySite
from metagateway.observability.loglines import TextLines
from metagateway.observability.metricsite import MetricsSite
from metagateway.testing import SECRET, EnvironmentMixin


class FakeProcess:
    """
    A spawned process, as the supervisor sees it.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []
        self.ended = False

    def signalProcess(self, name: str) -> None:
        if self.ended:
            raise ProcessExitedAlready()
        self.signals.append(name)


class ProcessReactor(MemoryReactorClock):
    """
    A ``MemoryReactorClock`` that records spawned processes.

    :ivar spawned: ``(protocol, argv, env, childFDs, process)`` of each.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[Any, list[str], dict[str, str], Any, FakeProcess]] = []

    def spawnProcess(
        self,
        protocol: Any,
        executable: str,
        args: list[str],
        env: Optional[dict[str, str]] = None,
        path: Optional[str] = None,
        uid: Any = None,
        gid: Any = None,
        usePTY: bool = False,
        childFDs: Any = None,
    ) -> FakeProcess:
        process = FakeProcess(1000 + len(self.spawned))
        protocol.makeConnection(process)
        self.spawned.append((protocol, list(args), dict(env or {}), childFDs, process))
        return process

    def end(self, number: int, reason: Optional[Failure] = None) -> None:
        """
        Let spawned process ``number`` end.
        """
        protocol, _, _, _, process = self.spawned[number]
        process.ended = True
        protocol.processEnded(reason or Failure(ProcessTerminated(signal=9)))


class HeldFake(HeldSocket):
    """
    A held socket that records being closed.
    """

    closed = False

    def close(self) -> None:  # type: ignore[override]
        self.closed = True


class SettingsTests(SynchronousTestCase):
    """
    :meth:`ProcessSettings.from_options`.
    """

    def test_defaults(self) -> None:
        """
        One process, a text access log, no metrics endpoint.
        """
        settings = ProcessSettings.from_options({}, {})
        self.assertEqual(settings, ProcessSettings(1, "text", None))
        self.assertFalse(settings.is_worker)

    def test_option_wins(self) -> None:
        """
        An option wins over its variable; the variable counts without it.
        """
        environ = {
            "METAGATEWAY_WORKERS": "3",
            "METAGATEWAY_ACCESS_LOG": "JSON",
            "METAGATEWAY_METRICS_LISTEN": "tcp:9100",
        }
        self.assertEqual(
            ProcessSettings.from_options({}, environ),
            ProcessSettings(3, "json", "tcp:9100"),
        )
        options = {"workers": "2", "access-log": "off", "metrics-listen": "tcp:9200"}
        self.assertEqual(
            ProcessSettings.from_options(options, environ),
            ProcessSettings(2, "off", "tcp:9200"),
        )

    def test_malformed(self) -> None:
        """
        A bad worker count or access-log form is a configuration error.
        """
        for options in (
            {"workers": "0"},
            {"workers": "two"},
            {"workers": "1000"},
            {"access-log": "xml"},
        ):
            self.assertRaises(
                ConfigurationError, ProcessSettings.from_options, options, {}
            )

    def test_worker(self) -> None:
        """
        A worker reads its index and inherited sockets from its environment,
        and never supervises workers of its own.
        """
        environ = {
            WORKER_INDEX_VARIABLE: "1",
            WORKER_SOCKETS_VARIABLE: "3:2,4:10",
            "METAGATEWAY_WORKERS": "4",
        }
        settings = ProcessSettings.from_options({}, environ)
        self.assertEqual(settings.worker_index, 1)
        self.assertEqual(settings.sockets, ((3, 2), (4, 10)))
        self.assertEqual(settings.workers, 1)
        self.assertTrue(settings.is_worker)
        environ[WORKER_SOCKETS_VARIABLE] = "three"
        self.assertRaises(ConfigurationError, ProcessSettings.from_options, {}, environ)


class OffsetTests(SynchronousTestCase):
    """
    :func:`offset_endpoint`: worker ``k``'s metrics endpoint.
    """

    def test_tcp(self) -> None:
        """
        A TCP port moves up by the worker's index, however it is written.
        """
        self.assertEqual(
            offset_endpoint("tcp:9100:interface=127.0.0.1", 2),
            "tcp:9102:interface=127.0.0.1",
        )
        self.assertEqual(
            offset_endpoint("tcp:interface=127.0.0.1:port=9100", 1),
            "tcp:interface=127.0.0.1:port=9101",
        )
        self.assertEqual(
            offset_endpoint("tcp6:9100:interface=\\:\\:1", 3),
            "tcp6:9103:interface=\\:\\:1",
        )
        self.assertEqual(
            offset_endpoint("ssl:9443:privateKey=k.pem", 1), "ssl:9444:privateKey=k.pem"
        )

    def test_port_zero(self) -> None:
        """
        Port 0 stays 0: each worker gets a free port.
        """
        self.assertEqual(offset_endpoint("tcp:0", 5), "tcp:0")

    def test_unix(self) -> None:
        """
        A UNIX socket path gets the index added.
        """
        self.assertEqual(offset_endpoint("unix:/run/m.sock", 1), "unix:/run/m.sock-1")
        self.assertEqual(
            offset_endpoint("unix:address=/run/m.sock:mode=600", 2),
            "unix:address=/run/m.sock-2:mode=600",
        )

    def test_unsupported(self) -> None:
        """
        Other endpoint types cannot be offset.
        """
        for description in ("systemd:domain=INET:index=0", "tcp:http", "tcp"):
            self.assertRaises(ConfigurationError, offset_endpoint, description, 1)


class CommandTests(SynchronousTestCase):
    """
    A worker's command line and environment.
    """

    def test_argv(self) -> None:
        """
        A worker runs this module with the parent's options, less the
        parent's own; its metrics endpoint is offset.
        """
        options = {
            "dev": False,
            "accounts-dir": "/srv/accounts",
            "workers": "2",
            "listen": ["tcp:8080"],
            "metrics-listen": "tcp:9100",
            "clock-skew": None,
            "access-log": "json",
        }
        argv = worker_argv(
            options,
            ["dev"],
            ["accounts-dir", "workers", "metrics-listen", "clock-skew", "access-log"],
            "tcp:9100",
            1,
            python="/usr/bin/python3",
        )
        self.assertEqual(
            argv,
            [
                "/usr/bin/python3",
                "-m",
                "metagateway.daemon.worker",
                "--accounts-dir=/srv/accounts",
                "--access-log=json",
                "--metrics-listen=tcp:9101",
            ],
        )
        parsed = Options()
        parsed.parseOptions(argv[3:])
        self.assertEqual(parsed["accounts-dir"], "/srv/accounts")

    def test_flags(self) -> None:
        """
        Flags set in the parent are passed on, except ``--dev``.
        """
        argv = worker_argv(
            {"dev": True, "verbose": True}, ["dev", "verbose"], [], None, 0
        )
        self.assertEqual(argv[3:], ["--verbose"])

    def test_environ_pypy_nursery(self) -> None:
        """
        PyPy workers get a 16 MB nursery unless the parent's environment
        names one; CPython workers get no such variable.
        """
        self.assertEqual(
            worker_environ({}, pypy=True)["PYPY_GC_NURSERY"], PYPY_WORKER_NURSERY
        )
        self.assertEqual(PYPY_WORKER_NURSERY, "16MB")
        self.assertEqual(
            worker_environ({"PYPY_GC_NURSERY": "4MB"}, pypy=True)["PYPY_GC_NURSERY"],
            "4MB",
        )
        self.assertNotIn("PYPY_GC_NURSERY", worker_environ({}, pypy=False))

    def test_environ(self) -> None:
        """
        A worker's environment is the parent's, with this package first on
        ``PYTHONPATH`` and without the parent-only variables.
        """
        env = worker_environ(
            {
                "GATEWAY_JWT_SECRET": "s",
                "PYTHONPATH": "/elsewhere",
                "METAGATEWAY_METRICS_LISTEN": "tcp:9100",
                "METAGATEWAY_WORKERS": "2",
                WORKER_INDEX_VARIABLE: "0",
                WORKER_SOCKETS_VARIABLE: "3:2",
            },
            pypy=False,
        )
        import metagateway

        here = os.path.dirname(os.path.dirname(os.path.abspath(metagateway.__file__)))
        self.assertEqual(
            env,
            {
                "GATEWAY_JWT_SECRET": "s",
                "PYTHONPATH": here + os.pathsep + "/elsewhere",
            },
        )


class SupervisorTests(SynchronousTestCase):
    """
    :class:`WorkerSupervisor` with a fake process reactor.
    """

    def setUp(self) -> None:
        self.reactor = ProcessReactor()
        self.sockets = [
            HeldFake(11, socket.AF_INET),
            HeldFake(12, socket.AF_INET6),
        ]
        self.binds = 0

        def bind() -> list[HeldSocket]:
            self.binds += 1
            return list(self.sockets)

        self.supervisor = WorkerSupervisor(
            self.reactor,
            lambda index: [
                "python",
                "-m",
                "metagateway.daemon.worker",
                "--n=%d" % (index,),
            ],
            {"GATEWAY_JWT_SECRET": "s"},
            2,
            bind,
            stop_timeout=35.0,
        )
        self.supervisor.privilegedStartService()
        self.supervisor.startService()

    def test_start(self) -> None:
        """
        The sockets are bound once and each worker is started with them as
        file descriptors 3, 4 …, its place in its environment, and a pipe
        on standard input.
        """
        self.assertEqual(self.binds, 1)
        self.assertEqual(len(self.reactor.spawned), 2)
        for index, (_, argv, env, fds, _) in enumerate(self.reactor.spawned):
            self.assertEqual(argv[-1], "--n=%d" % (index,))
            self.assertEqual(env[WORKER_INDEX_VARIABLE], str(index))
            self.assertEqual(
                env[WORKER_SOCKETS_VARIABLE],
                "%d:%d,%d:%d"
                % (
                    FIRST_SOCKET_FD,
                    socket.AF_INET,
                    FIRST_SOCKET_FD + 1,
                    socket.AF_INET6,
                ),
            )
            self.assertEqual(env["GATEWAY_JWT_SECRET"], "s")
            self.assertEqual(
                fds, {0: "w", 1: 1, 2: 2, FIRST_SOCKET_FD: 11, FIRST_SOCKET_FD + 1: 12}
            )
        self.assertEqual(self.supervisor.running_workers(), [0, 1])

    def test_restart(self) -> None:
        """
        A worker that dies is started again after the restart delay, with
        the same index.
        """
        self.reactor.advance(60)
        self.reactor.end(1)
        self.assertEqual(self.supervisor.running_workers(), [0])
        self.reactor.advance(RESTART_DELAY - 0.01)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.reactor.advance(0.01)
        self.assertEqual(len(self.reactor.spawned), 3)
        self.assertEqual(self.reactor.spawned[2][2][WORKER_INDEX_VARIABLE], "1")
        self.assertEqual(self.supervisor.running_workers(), [0, 1])

    def test_backoff(self) -> None:
        """
        A worker that keeps dying young waits twice as long each time, up
        to the cap; one that lived a while starts again at the first delay.
        """
        delays: list[float] = []
        for _ in range(9):
            before = self.reactor.seconds()
            self.reactor.end(len(self.reactor.spawned) - 1)
            while len(self.reactor.spawned) == len(delays) + 2:
                self.reactor.advance(0.25)
            delays.append(self.reactor.seconds() - before)
        self.assertEqual(delays, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0])
        self.assertEqual(MAX_RESTART_DELAY, 30.0)
        self.reactor.advance(STABLE_SECONDS)
        self.reactor.end(len(self.reactor.spawned) - 1)
        self.assertEqual(
            self.reactor.getDelayedCalls()[0].getTime() - self.reactor.seconds(),
            RESTART_DELAY,
        )

    def test_clean_exit_restarted(self) -> None:
        """
        A worker that exits by itself, even with status 0, is restarted:
        only the parent decides when workers stop.
        """
        self.reactor.end(0, Failure(ProcessDone(0)))
        self.reactor.advance(RESTART_DELAY)
        self.assertEqual(len(self.reactor.spawned), 3)

    def test_stop(self) -> None:
        """
        Stopping sends SIGTERM to every worker and waits for all of them;
        then the sockets are closed and nothing is restarted.
        """
        d = self.supervisor.stopService()
        self.assertEqual(
            [process.signals for *_, process in self.reactor.spawned],
            [["TERM"], ["TERM"]],
        )
        self.reactor.end(0, Failure(ProcessDone(0)))
        self.assertNoResult(d)
        self.assertFalse(self.sockets[0].closed)
        self.reactor.end(1, Failure(ProcessDone(0)))
        self.successResultOf(d)
        self.assertTrue(all(held.closed for held in self.sockets))
        self.reactor.advance(100)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_stop_cancels_restart(self) -> None:
        """
        A restart waiting when the supervisor stops never happens.
        """
        self.reactor.end(0)
        d = self.supervisor.stopService()
        self.reactor.end(1, Failure(ProcessDone(0)))
        self.successResultOf(d)
        self.reactor.advance(100)
        self.assertEqual(len(self.reactor.spawned), 2)

    def test_kill_after_timeout(self) -> None:
        """
        A worker still running ``stop_timeout`` seconds after SIGTERM gets
        SIGKILL.
        """
        d = self.supervisor.stopService()
        self.reactor.end(0, Failure(ProcessDone(0)))
        self.reactor.advance(34.9)
        self.assertEqual(self.reactor.spawned[1][4].signals, ["TERM"])
        self.reactor.advance(0.1)
        self.assertEqual(self.reactor.spawned[1][4].signals, ["TERM", "KILL"])
        self.reactor.end(1)
        self.successResultOf(d)

    def test_stop_with_none_running(self) -> None:
        """
        With every worker already gone, stopping is immediate.
        """
        self.reactor.end(0)
        self.reactor.end(1)
        self.successResultOf(self.supervisor.stopService())


class FakePort:
    """
    What ``adoptStreamPort`` returns.
    """

    stopped = False
    reading = True

    def stopListening(self) -> None:
        self.stopped = True

    def stopReading(self) -> None:
        self.reading = False


class AdoptTests(SynchronousTestCase):
    """
    :class:`AdoptedPortService` in a worker.
    """

    def test_adopt(self) -> None:
        """
        The inherited socket is adopted with its family and factory, the
        inherited descriptor closed, and the port stopped with the service.
        """
        adopted: list[tuple[int, int, Any]] = []
        port = FakePort()

        class Reactor:
            def adoptStreamPort(self, fd: int, family: int, factory: Any) -> FakePort:
                adopted.append((fd, family, factory))
                return port

        read_end, write_end = os.pipe()
        self.addCleanup(os.close, write_end)
        factory = object()
        service = AdoptedPortService(Reactor(), read_end, socket.AF_INET, factory)
        service.startService()
        self.assertEqual(adopted, [(read_end, socket.AF_INET, factory)])
        self.assertRaises(OSError, os.fstat, read_end)
        service.stopService()
        self.assertTrue(port.stopped)

    def test_unix_file_kept(self) -> None:
        """
        An adopted UNIX socket is only no longer read when the worker stops:
        its file stays for the parent and the other workers.
        """
        port = FakePort()

        class Reactor:
            def adoptStreamPort(self, fd: int, family: int, factory: Any) -> FakePort:
                return port

        read_end, write_end = os.pipe()
        self.addCleanup(os.close, write_end)
        service = AdoptedPortService(Reactor(), read_end, socket.AF_UNIX, object())
        service.startService()
        service.stopService()
        self.assertEqual((port.stopped, port.reading), (False, False))


class WatchReactor:
    """
    What :class:`ParentWatch` uses of a reactor.
    """

    running = True

    def __init__(self) -> None:
        self.removed: list[Any] = []
        self.stops = 0

    def removeReader(self, reader: Any) -> None:
        self.removed.append(reader)

    def stop(self) -> None:
        self.stops += 1


class ParentWatchTests(SynchronousTestCase):
    """
    A worker stops when its parent's pipe closes.
    """

    def setUp(self) -> None:
        self.read_end, self.write_end = os.pipe()
        os.set_blocking(self.read_end, False)
        self.addCleanup(os.close, self.read_end)
        self.reactor = WatchReactor()
        self.watch = ParentWatch(self.reactor, self.read_end)

    def test_data_ignored(self) -> None:
        """
        Bytes from the parent are read and ignored; nothing to read is
        not the end.
        """
        os.write(self.write_end, b"x")
        self.watch.doRead()
        self.watch.doRead()
        self.assertEqual(self.reactor.stops, 0)
        os.close(self.write_end)

    def test_end_of_file(self) -> None:
        """
        End of file stops the reactor, once.
        """
        os.close(self.write_end)
        self.watch.doRead()
        self.watch.connectionLost(Failure(Exception("hang-up")))
        self.assertEqual(self.reactor.stops, 1)
        self.assertEqual(self.reactor.removed, [self.watch])
        self.assertEqual(self.watch.fileno(), self.read_end)
        self.flushLoggedErrors()

    def test_stop_watching(self) -> None:
        """
        Once the worker shuts down by itself, the pipe closing is not news.
        """
        self.watch.stop_watching()
        self.watch.connectionLost(Failure(Exception("hang-up")))
        self.assertEqual(self.reactor.stops, 0)
        self.assertEqual(self.reactor.removed, [self.watch])
        os.close(self.write_end)

    def test_hang_up(self) -> None:
        """
        A hang-up reported by the reactor stops it too.
        """
        self.watch.connectionLost(Failure(Exception("hang-up")))
        self.assertEqual(self.reactor.stops, 1)
        os.close(self.write_end)


class HeldPort:
    """
    A listening port as :func:`bind_sockets` holds it, without a socket.

    :param port: the port number.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.reading = True

    def stopReading(self) -> None:
        """
        Stop accepting (the workers accept).
        """
        self.reading = False

    def fileno(self) -> int:
        """
        No descriptor.
        """
        return -1

    def getHost(self) -> IPv4Address:
        """
        The bound address.
        """
        return IPv4Address("TCP", "127.0.0.1", self.port)

    def stopListening(self) -> None:
        """
        Nothing to close.
        """


class HoldingReactor(MemoryReactorClock):
    """
    A memory reactor whose TCP ports can be held for workers.
    """

    def listenTCP(self, port: int, *args: Any, **kw: Any) -> Any:
        """
        Record the port, and answer a :class:`HeldPort`.
        """
        super().listenTCP(port, *args, **kw)
        return HeldPort(port)


class MakeServiceTests(EnvironmentMixin, SynchronousTestCase):
    """
    What ``makeService`` builds for the process options.
    """

    def setUp(self) -> None:
        self.use_environ({"GATEWAY_JWT_SECRET": SECRET})
        self.accounts = self.mktemp()
        os.makedirs(self.accounts)

    def make(self, *argv: str) -> Any:
        options = Options()
        options.parseOptions(["--accounts-dir", self.accounts, *argv])
        reactor = HoldingReactor()
        return makeService(options, reactor), reactor

    def test_supervisor(self) -> None:
        """
        ``--workers 2`` makes the parent: a supervisor of two workers whose
        command line runs this module.
        """
        service, reactor = self.make("--workers", "2", "--listen", "tcp:8080")
        self.assertIsInstance(service, WorkerSupervisor)
        # The parent bound the port before twistd starts logging.
        self.assertEqual([port for port, *_ in reactor.tcpServers], [8080])
        self.assertEqual([s.port.port for s in service.sockets], [8080])
        self.assertEqual(service.count, 2)
        argv = service.argv(1)
        self.assertEqual(argv[:3], [sys.executable, "-m", "metagateway.daemon.worker"])
        self.assertIn("--accounts-dir=" + self.accounts, argv)
        self.assertNotIn("--workers=2", argv)

    def test_unshareable_listen(self) -> None:
        """
        ``--workers`` refuses an endpoint the workers cannot share, in one
        line on stderr.
        """
        stderr = self.capture_stderr()
        with self.assertRaises(SystemExit) as raised:
            self.make("--workers", "2", "--listen", "ssl:8443:privateKey=x.pem")
        self.assertEqual(raised.exception.code, 1)
        self.assertIn("tcp:, tcp6: or unix:", stderr.getvalue())
        self.assertEqual(stderr.getvalue().count("\n"), 1)

    def test_bad_workers(self) -> None:
        """
        A malformed ``--workers`` is one line on stderr and exit status 1.
        """
        stderr = self.capture_stderr()
        with self.assertRaises(SystemExit):
            self.make("--workers", "many")
        self.assertIn("--workers", stderr.getvalue())

    def test_metrics_listen(self) -> None:
        """
        ``--metrics-listen`` serves the gateway's metrics on its own
        endpoint, beside the public one.
        """
        service, reactor = self.make(
            "--listen", "tcp:8080", "--metrics-listen", "tcp:9100:interface=127.0.0.1"
        )
        service.startService()
        self.addCleanup(service.stopService)
        ports = {
            port: (factory, interface)
            for port, factory, _, interface in reactor.tcpServers
        }
        self.assertIsInstance(ports[8080][0], GatewaySite)
        self.assertIsInstance(ports[9100][0], MetricsSite)
        self.assertEqual(ports[9100][1], "127.0.0.1")

    def test_no_metrics_by_default(self) -> None:
        """
        Without ``--metrics-listen`` only the public endpoint listens.
        """
        service, reactor = self.make("--listen", "tcp:8080")
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual([port for port, *_ in reactor.tcpServers], [8080])

    def test_access_log_forms(self) -> None:
        """
        ``--access-log`` picks the gateway's access log.
        """
        gateways = []
        for form in ("text", "json", "off"):
            service, _ = self.make("--access-log", form)
            site = [s for s in service if getattr(s, "factory", None) is not None][
                0
            ].factory
            gateways.append(site.resource.recorder.access_log)
        text, json_log, off = gateways
        self.assertEqual((text.form, json_log.form, off), ("text", "json", None))
        # Not under twistd -n: text lines go through the log publisher.
        self.assertIsNone(text.lines)

    def test_worker_text_log_buffered(self) -> None:
        """
        A worker logs to its standard output: its text access log writes
        there directly, buffered, in ``twistd``'s line form, and is flushed
        at shutdown.
        """
        self.use_environ(
            {
                "GATEWAY_JWT_SECRET": SECRET,
                WORKER_INDEX_VARIABLE: "0",
                WORKER_SOCKETS_VARIABLE: "3:%d" % (socket.AF_INET,),
            }
        )
        service, reactor = self.make("--listen", "tcp:8080")
        site = [s for s in service if isinstance(s, AdoptedPortService)][0].factory
        access_log = site.resource.recorder.access_log
        self.assertEqual(access_log.form, "text")
        self.assertIsInstance(access_log.lines, TextLines)
        after = reactor.triggers.get("after", {}).get("shutdown", [])
        self.assertIn(access_log.flush, [f for f, *_ in after])

    def test_worker(self) -> None:
        """
        In a worker, the inherited sockets are adopted instead of listening,
        and the metrics carry the worker's index.
        """
        self.use_environ(
            {
                "GATEWAY_JWT_SECRET": SECRET,
                WORKER_INDEX_VARIABLE: "1",
                WORKER_SOCKETS_VARIABLE: "3:%d" % (socket.AF_INET,),
            }
        )
        service, reactor = self.make("--listen", "tcp:8080")
        adopted = [s for s in service if isinstance(s, AdoptedPortService)]
        self.assertEqual([(s.fd, s.family) for s in adopted], [(3, socket.AF_INET)])
        self.assertIsInstance(adopted[0].factory, GatewaySite)
        self.assertEqual(adopted[0].factory.resource.recorder.metrics.worker, 1)
        self.assertEqual(reactor.tcpServers, [])

    def test_dev_one_process(self) -> None:
        """
        ``--dev`` runs one process whatever ``--workers`` says, and says so.
        """
        # The assertion key --dev generates goes to this test's own
        # temporary directory, and is removed when the service stops.
        own = self.mktemp()
        os.makedirs(own)
        self.patch(tempfile, "tempdir", own)
        stderr = self.capture_stderr()
        stdout = io.StringIO()
        saved = sys.stdout
        sys.stdout = stdout
        self.addCleanup(setattr, sys, "stdout", saved)
        options = Options()
        options.parseOptions(
            ["--dev", "--workers", "2", "--accounts-dir", self.accounts]
        )
        service = makeService(options, MemoryReactorClock())
        self.addCleanup(service.stopService)
        self.assertIsInstance(service, MultiService)
        self.assertIn("--dev runs one process", stderr.getvalue())


class ImportTests(SynchronousTestCase):
    """
    The supervisor and the worker entry point import one way.
    """

    def test_supervisor_does_not_import_tap(self) -> None:
        """
        ``daemon/workers.py`` (the supervisor) imports nothing from
        ``daemon/tap.py`` or ``daemon/worker.py``; the worker entry may.
        """
        import ast

        import metagateway.daemon.workers as supervisor

        with open(supervisor.__file__, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        imported = {
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
        } | {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        self.assertFalse(
            imported & {"metagateway.daemon.tap", "metagateway.daemon.worker"}
        )


class FakeSocket:
    """
    A socket that records what is done to it; ``busy`` ports refuse to be
    bound (without ``SO_REUSEPORT``, or always when ``busy_all``).
    """

    next_fd = 100

    def __init__(self, world: FakeSockets, family: int, kind: int) -> None:
        self.world = world
        self.family = family
        self.options: dict[int, int] = {}
        self.address: Any = None
        self.listening: Optional[int] = None
        self.closed = False
        self.shut = False
        self.blocking = True
        FakeSocket.next_fd += 1
        self.fd = FakeSocket.next_fd

    def setsockopt(self, level: int, name: int, value: int) -> None:
        self.options[name] = value

    def bind(self, address: Any) -> None:
        host, port = address[:2]
        if port in self.world.busy and (
            self.world.busy_all or socket.SO_REUSEPORT not in self.options
        ):
            raise OSError(98, "Address already in use")
        self.address = (host, port or 40000)

    def getsockname(self) -> Any:
        return self.address

    def listen(self, backlog: int) -> None:
        self.listening = backlog
        self.shut = False

    def shutdown(self, how: int) -> None:
        self.shut = True

    def setblocking(self, flag: bool) -> None:
        self.blocking = flag

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        self.closed = True


class FakeSockets:
    """
    Makes :class:`FakeSocket` objects and keeps them.
    """

    def __init__(self, busy: tuple[int, ...] = (), busy_all: bool = False) -> None:
        self.busy = busy
        self.busy_all = busy_all
        self.made: list[FakeSocket] = []

    def __call__(self, family: int, kind: int) -> FakeSocket:
        made = FakeSocket(self, family, kind)
        self.made.append(made)
        return made


class ReusePortTests(SynchronousTestCase):
    """
    ``SO_REUSEPORT``: one listening socket per worker for each TCP
    endpoint, a busy port refused, ``unix:`` still shared.
    """

    def test_tcp_address(self) -> None:
        """
        The family, interface, port and backlog of ``tcp:`` and ``tcp6:``
        descriptions, escaped colons included.
        """
        self.assertEqual(
            tcp_address("tcp:8080:interface=127.0.0.1"),
            (socket.AF_INET, "127.0.0.1", 8080, 50),
        )
        self.assertEqual(
            tcp_address("tcp6:port=0:interface=\\:\\:1:backlog=7"),
            (socket.AF_INET6, "::1", 0, 7),
        )
        self.assertEqual(tcp_address("tcp6:80"), (socket.AF_INET6, "::", 80, 50))
        self.assertRaises(ConfigurationError, tcp_address, "tcp:interface=x")

    def test_one_socket_per_worker(self) -> None:
        """
        Each worker gets its own socket, all bound with ``SO_REUSEPORT`` to
        the port a probe without it picked, listening; the probe is closed.
        """
        sockets = FakeSockets()
        [held] = bind_sockets(
            None, ["tcp:0:interface=127.0.0.1"], 3, True, make_socket=sockets
        )
        probe, *own = sockets.made
        self.assertTrue(probe.closed)
        self.assertNotIn(socket.SO_REUSEPORT, probe.options)
        self.assertEqual(len(own), 3)
        for sock in own:
            self.assertEqual(sock.options[socket.SO_REUSEPORT], 1)
            self.assertEqual(sock.address, ("127.0.0.1", 40000))
            self.assertEqual(sock.listening, 50)
            # Adopted as it is by the worker's reactor, which must not block.
            self.assertFalse(sock.blocking)
        self.assertEqual([held.fd_for(i) for i in range(3)], [sock.fd for sock in own])
        held.close()
        self.assertTrue(all(sock.closed for sock in own))

    def test_busy_port(self) -> None:
        """
        A port another socket holds is refused by the probe, as a plain
        listen would be, before any ``SO_REUSEPORT`` socket joins it; a
        failure part-way closes the sockets already bound.
        """
        sockets = FakeSockets(busy=(8125,))
        with self.assertRaises(CannotListenError) as raised:
            bind_sockets(
                None, ["tcp:8125:interface=127.0.0.1"], 2, True, make_socket=sockets
            )
        self.assertEqual(
            str(raised.exception),
            "Couldn't listen on 127.0.0.1:8125: [Errno 98] Address already in use.",
        )
        self.assertEqual(len(sockets.made), 1)
        self.assertTrue(sockets.made[0].closed)

    def test_unix_shared(self) -> None:
        """
        ``unix:`` endpoints stay one socket the workers share.
        """

        class UnixHolding(HoldingReactor):
            def listenUNIX(self, address: str, *args: Any, **kw: Any) -> Any:
                super().listenUNIX(address, *args, **kw)
                return HeldPort(0)

        sockets = FakeSockets()
        held = bind_sockets(
            UnixHolding(), ["unix:/tmp/x.sock"], 2, True, make_socket=sockets
        )
        self.assertEqual(sockets.made, [])
        self.assertEqual(held[0].own, ())
        self.assertEqual(held[0].fd_for(1), held[0].fd)

    def test_first_death_keeps_socket(self) -> None:
        """
        After a worker's first death its socket stays in the group (no
        ``shutdown``, which would reset the connections queued on it): the
        new worker, started after the short first delay, takes them.
        """
        sockets = FakeSockets()
        held = bind_sockets(None, ["tcp:0"], 2, True, make_socket=sockets)
        reactor = ProcessReactor()
        supervisor = WorkerSupervisor(
            reactor, lambda index: ["python"], {}, 2, lambda: held
        )
        supervisor.startService()
        own = sockets.made[1:]
        reactor.end(1)
        self.assertEqual([sock.shut for sock in own], [False, False])
        reactor.advance(RESTART_DELAY)
        self.assertEqual(reactor.spawned[-1][3][FIRST_SOCKET_FD], own[1].fd)

    def test_down_worker_paused(self) -> None:
        """
        A worker that keeps dying (its restart delay past
        ``KEEP_QUEUED_DELAY``) has its socket taken out of the group
        (``shutdown``) until it is started again, when it listens again
        and is handed to the new worker; the others are left alone.
        """
        sockets = FakeSockets()
        held = bind_sockets(None, ["tcp:0"], 2, True, make_socket=sockets)
        reactor = ProcessReactor()
        supervisor = WorkerSupervisor(
            reactor, lambda index: ["python"], {}, 2, lambda: held
        )
        supervisor.startService()
        own = sockets.made[1:]
        delay, number = RESTART_DELAY, 1
        while delay <= KEEP_QUEUED_DELAY:
            # Worker 1 dies young, again and again (its latest process).
            reactor.end(number)
            self.assertEqual([sock.shut for sock in own], [False, False])
            reactor.advance(delay)
            delay, number = delay * 2, len(reactor.spawned) - 1
        reactor.end(number)
        self.assertEqual([sock.shut for sock in own], [False, True])
        reactor.advance(delay)
        self.assertEqual([sock.shut for sock in own], [False, False])
        self.assertEqual(reactor.spawned[-1][3][FIRST_SOCKET_FD], own[1].fd)
