"""
``--workers N``: N processes serving one set of listening sockets.

The parent (the ``twistd`` process) binds every ``--listen`` endpoint and
never accepts on it; it starts N children with ``python -m
metagateway.daemon.worker`` and the same options, handing each its
listening sockets as inherited file descriptors (3, 4, ...). Each child
adopts them (``reactor.adoptStreamPort``) and runs a whole gateway.

On Linux each worker gets a listening socket of its own for each TCP
endpoint: the parent binds N sockets to the port with ``SO_REUSEPORT``
and the kernel spreads new connections evenly over them (by a hash of
the client's address and port). Workers sharing one socket instead (a
``unix:`` endpoint, or a system without ``SO_REUSEPORT``) take whatever
each accepts first: a burst of keep-alive connections may all land on
one. While a worker is down its socket leaves the group (``shutdown``),
so that new connections go to the others, and listens again when the
worker is started again.

The parent supervises: a worker that dies is started again after a delay
that doubles while workers keep dying young (0.5 s up to 30 s), and is
reset once one lives a while. SIGTERM (or SIGINT) to the parent is passed
on to every worker, which stops accepting, drains its requests in flight
(``--drain-timeout``) and exits; workers still alive after the drain
timeout and a margin are killed. A worker's standard input is a pipe from
the parent: if the parent dies, even by SIGKILL, the worker sees end of
file and shuts down the same way.

Each worker keeps its own metrics; with ``--metrics-listen`` worker ``k``
serves them on the endpoint's port plus ``k`` (see
:func:`~metagateway.daemon.sockets.offset_endpoint`), labelled
``worker="k"``. The listening sockets are held by :mod:`.sockets`; a
worker serves its inherited ones with :mod:`.adopted`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from metagateway.config import ConfigurationError
from metagateway.daemon.sockets import HeldSocket, offset_endpoint

log = Logger(namespace="metagateway.daemon.workers")

#: Environment variables a worker learns its place from (internal).
WORKER_INDEX_VARIABLE = "METAGATEWAY_WORKER_INDEX"
WORKER_SOCKETS_VARIABLE = "METAGATEWAY_WORKER_SOCKETS"
WORKER_STATE_VARIABLE = "METAGATEWAY_WORKER_STATE_FD"

#: PyPy workers' nursery (``PYPY_GC_NURSERY``) unless the environment sets
#: one: PyPy sizes it from the L2 cache (often 1 MiB), small enough that a
#: proxied request costs about a third more CPU (docs/performance.rst).
PYPY_WORKER_NURSERY = "16MB"

#: The first file descriptor number the listening sockets get in a worker.
FIRST_SOCKET_FD = 3

#: The most workers accepted.
MAX_WORKERS = 256

#: Restart delays: the first, and the cap it doubles up to.
RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 30.0

#: The longest restart delay during which a dead worker's own socket keeps
#: its place in the group (connections queue for the new worker); past it
#: the socket leaves the group until the restart.
KEEP_QUEUED_DELAY = 1.0

#: A worker that lived this many seconds resets the restart delay.
STABLE_SECONDS = 10.0

#: Seconds beyond the drain timeout before a worker that ignores SIGTERM
#: is killed.
KILL_MARGIN = 5.0


@dataclass(frozen=True)
class ProcessSettings:
    """
    How the daemon's process (or processes) run, as opposed to what a
    gateway does.

    :ivar workers: how many worker processes (1: no supervisor).
    :ivar access_log: ``text``, ``json`` or ``off``.
    :ivar metrics_listen: the endpoint serving ``/metrics``, if any.
    :ivar worker_index: this worker's index, in a worker.
    :ivar sockets: ``(fd, address family)`` of the inherited listening
        sockets, in a worker.
    :ivar state_fd: the inherited socket to the supervisor's shared
        security state, in a worker (:mod:`metagateway.state.supervisor`).
    """

    workers: int = 1
    access_log: str = "text"
    metrics_listen: Optional[str] = None
    worker_index: Optional[int] = None
    sockets: tuple[tuple[int, int], ...] = field(default=())
    state_fd: Optional[int] = None

    @property
    def is_worker(self) -> bool:
        """
        Whether this process is a worker started by a parent.
        """
        return self.worker_index is not None

    @classmethod
    def from_options(
        cls, options: Mapping[str, Any], environ: Mapping[str, str]
    ) -> ProcessSettings:
        """
        Read ``--workers``, ``--access-log`` and ``--metrics-listen`` (or
        their variables), and a worker's place from its environment.

        :raises ConfigurationError: for a malformed value.
        """

        def pick(option: str, variable: str) -> Optional[str]:
            value = options.get(option)
            if value is None or value == "":
                value = environ.get(variable) or None
            return None if value is None else str(value).strip()

        raw_workers = pick("workers", "METAGATEWAY_WORKERS") or "1"
        try:
            workers = int(raw_workers)
        except ValueError:
            workers = 0
        if not 1 <= workers <= MAX_WORKERS:
            raise ConfigurationError(
                "--workers / METAGATEWAY_WORKERS must be a whole number from 1 to %d,"
                " not %r" % (MAX_WORKERS, raw_workers)
            )
        access_log = (pick("access-log", "METAGATEWAY_ACCESS_LOG") or "text").lower()
        if access_log not in ("text", "json", "off"):
            raise ConfigurationError(
                "--access-log / METAGATEWAY_ACCESS_LOG must be text, json or off,"
                " not %r" % (access_log,)
            )
        metrics_listen = pick("metrics-listen", "METAGATEWAY_METRICS_LISTEN")
        index_text = environ.get(WORKER_INDEX_VARIABLE)
        sockets_text = environ.get(WORKER_SOCKETS_VARIABLE)
        if not index_text or not sockets_text:
            return cls(workers, access_log, metrics_listen)
        try:
            state_text = environ.get(WORKER_STATE_VARIABLE)
            state_fd = int(state_text) if state_text else None
            index = int(index_text)
            sockets = tuple(
                (int(fd), int(family))
                for fd, _, family in (
                    part.partition(":") for part in sockets_text.split(",")
                )
            )
        except ValueError:
            raise ConfigurationError(
                "malformed %s / %s" % (WORKER_INDEX_VARIABLE, WORKER_SOCKETS_VARIABLE)
            ) from None
        return cls(1, access_log, metrics_listen, index, sockets, state_fd)


class _WorkerProtocol(ProcessProtocol):
    """
    Tells the supervisor when its worker ends.
    """

    def __init__(self, supervisor: WorkerSupervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index

    def processEnded(self, reason: Failure) -> None:
        self.supervisor.worker_ended(self.index, self, reason)


@dataclass
class _Worker:
    protocol: Optional[_WorkerProtocol] = None
    started: float = 0.0
    failures: int = 0
    restart: Optional[IDelayedCall] = None


class WorkerSupervisor(Service):
    """
    Starts, restarts and stops the worker processes.

    :param reactor: spawns processes and times restarts.
    :param argv: the command line of worker ``k``.
    :param environ: the workers' environment (their place is added).
    :param count: how many workers.
    :param bind: binds the listening sockets, once, at start.
    :param stop_timeout: seconds after SIGTERM before SIGKILL.
    :param hub: the security state the workers share, held here
        (:class:`~metagateway.state.supervisor.StateHub`); each worker
        inherits a socket to it. ``None``: they share none through this
        process.

    :ivar sockets: the held listening sockets, once started.
    """

    def __init__(
        self,
        reactor: Any,
        argv: Callable[[int], list[str]],
        environ: Mapping[str, str],
        count: int,
        bind: Callable[[], Sequence[HeldSocket]],
        stop_timeout: float = 35.0,
        hub: Optional[Any] = None,
    ) -> None:
        self.hub = hub
        self.reactor = reactor
        self.argv = argv
        self.environ = dict(environ)
        self.count = count
        self.bind = bind
        self.stop_timeout = stop_timeout
        self.sockets: Sequence[HeldSocket] = ()
        self.workers = [_Worker() for _ in range(count)]
        self.stopping = False
        self._stopped: Optional[Deferred[None]] = None
        self._kill: Optional[IDelayedCall] = None

    def privilegedStartService(self) -> None:
        """
        Bind the listening sockets (before ``twistd`` drops privileges).
        """
        super().privilegedStartService()
        if not self.sockets:
            self.sockets = list(self.bind())

    def startService(self) -> None:
        """
        Start every worker.
        """
        super().startService()
        if not self.sockets:
            self.sockets = list(self.bind())
        self.stopping = False
        for index in range(self.count):
            self.spawn(index)

    def spawn(self, index: int) -> None:
        """
        Start worker ``index``.
        """
        worker = self.workers[index]
        worker.restart = None
        if self.stopping:
            return
        env = dict(self.environ)
        env[WORKER_INDEX_VARIABLE] = str(index)
        env[WORKER_SOCKETS_VARIABLE] = ",".join(
            "%d:%d" % (FIRST_SOCKET_FD + i, held.family)
            for i, held in enumerate(self.sockets)
        )
        child_fds: dict[int, Any] = {0: "w", 1: 1, 2: 2}
        for i, held in enumerate(self.sockets):
            held.resume(index)
            child_fds[FIRST_SOCKET_FD + i] = held.fd_for(index)
        state = None
        if self.hub is not None:
            state = self.hub.open()
            state_fd = FIRST_SOCKET_FD + len(self.sockets)
            child_fds[state_fd] = state.fileno()
            env[WORKER_STATE_VARIABLE] = str(state_fd)
        argv = self.argv(index)
        protocol = _WorkerProtocol(self, index)
        worker.protocol = protocol
        worker.started = self.reactor.seconds()
        try:
            transport = self.reactor.spawnProcess(
                protocol, argv[0], argv, env=env, childFDs=child_fds
            )
        finally:
            if state is not None:
                # The worker has its own copy.
                state.close()
        log.info(
            "Worker {index} started (pid {pid})",
            index=index,
            pid=getattr(transport, "pid", None),
        )

    def worker_ended(
        self, index: int, protocol: _WorkerProtocol, reason: Failure
    ) -> None:
        """
        Worker ``index`` ended: start it again after a delay, unless the
        supervisor is stopping.
        """
        worker = self.workers[index]
        if worker.protocol is not protocol:
            return
        worker.protocol = None
        status = getattr(reason.value, "exitCode", None)
        signal_number = getattr(reason.value, "signal", None)
        if self.stopping:
            log.info(
                "Worker {index} stopped (status {status}, signal {signal})",
                index=index,
                status=status,
                signal=signal_number,
            )
            self._maybe_stopped()
            return
        now = self.reactor.seconds()
        if now - worker.started >= STABLE_SECONDS:
            worker.failures = 0
        worker.failures += 1
        delay = min(MAX_RESTART_DELAY, RESTART_DELAY * 2 ** (worker.failures - 1))
        if delay > KEEP_QUEUED_DELAY:
            # A worker that keeps dying: its socket leaves the group, so
            # that new connections go to the others (what its queue holds
            # is reset). After a first death the socket stays: connections
            # that reach it wait the short restart, then the new worker
            # takes them, and none is reset.
            for held in self.sockets:
                held.pause(index)
        log.warn(
            "Worker {index} exited (status {status}, signal {signal}); "
            "restarting in {delay} s",
            index=index,
            status=status,
            signal=signal_number,
            delay=delay,
        )
        worker.restart = self.reactor.callLater(delay, self.spawn, index)

    def reload(self) -> None:
        """
        Pass ``SIGHUP`` on to every worker: each reloads its configuration
        (:ref:`contract-config-file`).
        """
        log.info("Reloading {count} worker(s)", count=len(self.running_workers()))
        self._signal_all("HUP")

    def running_workers(self) -> list[int]:
        """
        The indexes of the workers that run now.
        """
        return [i for i, w in enumerate(self.workers) if w.protocol is not None]

    def stopService(self) -> Deferred[None]:
        """
        Pass SIGTERM on to every worker, wait for them (SIGKILL after
        ``stop_timeout``), then close the listening sockets.
        """
        super().stopService()
        self.stopping = True
        for worker in self.workers:
            if worker.restart is not None and worker.restart.active():
                worker.restart.cancel()
            worker.restart = None
        self._stopped = Deferred()
        self._signal_all("TERM")
        if self.running_workers():
            self._kill = self.reactor.callLater(
                self.stop_timeout, self._signal_all, "KILL"
            )
        stopped = self._stopped
        self._maybe_stopped()
        return stopped

    def _signal_all(self, name: str) -> None:
        for worker in self.workers:
            transport = worker.protocol.transport if worker.protocol else None
            if transport is None:
                continue
            try:
                transport.signalProcess(name)
            except (ProcessExitedAlready, OSError):
                pass

    def _maybe_stopped(self) -> None:
        if self._stopped is None or self.running_workers():
            return
        if self._kill is not None and self._kill.active():
            self._kill.cancel()
        self._kill = None
        stopped, self._stopped = self._stopped, None
        closing = [held.close() for held in self.sockets]
        self.sockets = ()
        # Wait for the ports to close (a UNIX socket's file is removed then).
        DeferredList(
            [d for d in closing if d is not None], consumeErrors=True
        ).addCallback(lambda _: stopped.callback(None))


def worker_argv(
    options: Mapping[str, Any],
    flags: Sequence[str],
    parameters: Sequence[str],
    metrics_listen: Optional[str],
    index: int,
    python: str = sys.executable,
) -> list[str]:
    """
    The command line of worker ``index``: this interpreter running this
    module with the parent's options, less the ones only a parent uses.

    :param options: the parent's parsed options.
    :param flags: the names of the flag options.
    :param parameters: the names of the options with a value.
    :param metrics_listen: the parent's ``--metrics-listen``, offset per
        worker; ``None`` for none.
    """
    skip = {"workers", "metrics-listen", "listen", "dev"}
    argv = [python, "-m", "metagateway.daemon.worker"]
    for name in flags:
        if name not in skip and options.get(name):
            argv.append("--" + name)
    for name in parameters:
        value = options.get(name)
        if name not in skip and value is not None:
            argv.append("--%s=%s" % (name, value))
    if metrics_listen:
        argv.append("--metrics-listen=" + offset_endpoint(metrics_listen, index))
    return argv


def worker_environ(
    environ: Mapping[str, str],
    pypy: bool = hasattr(sys, "pypy_version_info"),
) -> dict[str, str]:
    """
    The workers' environment: the parent's, with the directory holding this
    package first on ``PYTHONPATH`` (so that they run this same code) and
    without a ``--metrics-listen`` variable (each gets its own option).

    :param pypy: whether the workers run under PyPy (they run this
        interpreter): then ``PYPY_GC_NURSERY`` defaults to
        :data:`PYPY_WORKER_NURSERY`.
    """
    env = {
        k: v
        for k, v in environ.items()
        if k
        not in (WORKER_INDEX_VARIABLE, WORKER_SOCKETS_VARIABLE, WORKER_STATE_VARIABLE)
    }
    env.pop("METAGATEWAY_METRICS_LISTEN", None)
    env.pop("METAGATEWAY_WORKERS", None)
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    paths = [here] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    if pypy:
        env.setdefault("PYPY_GC_NURSERY", PYPY_WORKER_NURSERY)
    return env
