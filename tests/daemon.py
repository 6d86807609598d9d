"""
Running the real ``twistd metagateway`` daemon (and other child processes)
on loopback for the integration tests.

The daemon listens on ``tcp:0:interface=127.0.0.1``; its port is learned
from the ``GatewaySite starting on N`` line it logs.
"""

from __future__ import annotations

import filecmp
import os
import re
import subprocess
import sys
from typing import Any, Mapping, Optional, Sequence

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

_PORT_LINE = re.compile(rb"GatewaySite starting on (\d+)")

#: Seconds a child may take to start listening.
START_TIMEOUT = 30.0


class ChildProcess(ProcessProtocol):
    """
    A child process whose output is collected, and which reports the first
    port it logs.

    :ivar output: everything written to stdout and stderr, interleaved.
    :ivar port: the port, once seen.
    :ivar ended: fires with the exit status when the process ends.
    """

    def __init__(self, port_pattern: re.Pattern[bytes] = _PORT_LINE) -> None:
        self.output = b""
        self.stderr = b""
        self.port: Optional[int] = None
        self._port_pattern = port_pattern
        self._port_waiters: list[Deferred[int]] = []
        self.ended: Deferred[int] = Deferred()
        self.exit_code: Optional[int] = None

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if self.port is None:
            match = self._port_pattern.search(self.output)
            if match:
                self.port = int(match.group(1))
                waiters, self._port_waiters = self._port_waiters, []
                for d in waiters:
                    d.callback(self.port)

    def errReceived(self, data: bytes) -> None:
        self.stderr += data
        self.outReceived(data)

    def processEnded(self, reason: Failure) -> None:
        if reason.check(ProcessDone):
            self.exit_code = 0
        elif reason.check(ProcessTerminated):
            self.exit_code = reason.value.exitCode
        waiters, self._port_waiters = self._port_waiters, []
        for d in waiters:
            d.errback(
                RuntimeError(
                    "process ended before listening:\n"
                    + self.output.decode("utf-8", "replace")
                )
            )
        self.ended.callback(self.exit_code)  # type: ignore[arg-type]

    def wait_for_port(self) -> Deferred[int]:
        """
        A Deferred firing with the port once the child has logged it.
        """
        if self.port is not None:
            return Deferred.fromCoroutine(_value(self.port))
        d: Deferred[int] = Deferred()
        self._port_waiters.append(d)
        d.addTimeout(START_TIMEOUT, _reactor)
        return d

    def signal(self, name: str) -> None:
        """
        Send a signal (``TERM``, ``KILL``, ...) if the child still runs.
        """
        if self.exit_code is None and self.transport is not None:
            try:
                self.transport.signalProcess(name)
            except ProcessExitedAlready:
                pass


async def _value(port: int) -> int:
    return port


def twistd_command() -> list[str]:
    """
    How to run ``twistd`` with this interpreter: the script installed
    beside it, else the same entry point through ``-c``.
    """
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(script):
        return [sys.executable, script]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def daemon_argv(*options: str) -> list[str]:
    """
    The command line of a daemon started as :ref:`contract-starting` says, on a free
    loopback port, with ``options`` added.
    """
    return [
        *twistd_command(),
        "-n",
        "--pidfile=",
        "metagateway",
        "--listen",
        "tcp:0:interface=127.0.0.1",
        *options,
    ]


def child_environ(extra: Mapping[str, str]) -> dict[str, str]:
    """
    A clean environment for a child: this one's, less every gateway
    variable, plus ``extra``.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("METAGATEWAY_", "GATEWAY_", "R2_", "GITHUB_", "NOTION_"))
        and not k.endswith("_SERVICE_URL")
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


_install_problem: Optional[str] = None
_install_checked = False


def install_problem() -> Optional[str]:
    """
    Why a child would not run the code under test, if it would not: the
    ``metagateway`` package a child imports (the installed one: a child's
    working directory is not on its path) differs from the one these
    tests import. ``None`` when they are the same files.
    """
    global _install_problem, _install_checked
    if _install_checked:
        return _install_problem
    _install_checked = True
    import metagateway

    tested = os.path.dirname(os.path.abspath(metagateway.__file__))
    found = subprocess.run(
        [sys.executable, "-c", "import metagateway; print(metagateway.__file__)"],
        cwd="/",
        env=child_environ({}),
        capture_output=True,
        text=True,
    )
    if found.returncode:
        _install_problem = "metagateway is not installed"
        return _install_problem
    installed = os.path.dirname(os.path.abspath(found.stdout.strip()))
    if installed == tested:
        return None
    names = sorted(
        {
            os.path.relpath(os.path.join(where, name), directory)
            for directory in (tested, installed)
            for where, _, files in os.walk(directory)
            for name in files
            if name.endswith(".py")
        }
    )
    _, differ, missing = filecmp.cmpfiles(tested, installed, names, shallow=False)
    if differ or missing:
        _install_problem = "the installed metagateway (%s) is not this code: %s" % (
            installed,
            ", ".join(sorted(set(differ + missing))),
        )
    return _install_problem


def spawn(
    case: TestCase,
    argv: Sequence[str],
    env: Mapping[str, str],
    protocol: Optional[ChildProcess] = None,
    cwd: Optional[str] = None,
) -> ChildProcess:
    """
    Start a child process, stopped (TERM, then KILL) in ``case``'s cleanup.

    Fails the test at once if the child would run an installed
    ``metagateway`` other than the code under test (``pip install .``
    mends that).
    """
    problem = install_problem()
    if problem is not None:
        case.fail(problem + "; run pip install . first")
    child = protocol or ChildProcess()
    _reactor.spawnProcess(child, argv[0], list(argv), env=dict(env), path=cwd)

    async def stop() -> Any:
        if child.exit_code is None:
            child.signal("TERM")
            killer = _reactor.callLater(10, child.signal, "KILL")
            await child.ended
            if killer.active():
                killer.cancel()

    case.addCleanup(lambda: Deferred.fromCoroutine(stop()))
    return child


async def start_daemon(
    case: TestCase, env: Mapping[str, str], *options: str
) -> tuple[ChildProcess, str]:
    """
    Start the daemon and wait until it listens.

    :return: the child and the gateway's base URL.
    """
    child = spawn(case, daemon_argv(*options), child_environ(env))
    port = await child.wait_for_port()
    return child, "http://127.0.0.1:%d" % (port,)


def http_client(case: TestCase) -> Any:
    """
    A treq client with its own connection pool, closed in ``case``'s
    cleanup (the global pool would outlive the test).
    """
    from treq.client import HTTPClient

    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(_reactor, persistent=True)
    case.addCleanup(pool.closeCachedConnections)
    return HTTPClient(Agent(_reactor, pool=pool))


def refusing_port(case: TestCase) -> int:
    """
    A loopback port where connections are refused for the length of the
    test: a socket is bound to it but never listens, so that no other
    server of the test run can be given the same port (as one released at
    once could be) and answer, or hang, in its place.
    """
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    case.addCleanup(holder.close)
    return int(holder.getsockname()[1])


#: The account :func:`serve_world` stores.
USER, PASSWORD = "operator", "s3cret-pass"


def serve_world(case: TestCase) -> tuple[Any, Any, str]:
    """
    What a daemon test needs around the daemon: an accounts directory
    holding :data:`USER` (an admin), and a recording upstream on loopback
    answering ``hello from build``, stopped after the test.

    :return: the accounts directory (a ``FilePath``), the upstream, and the
        upstream's base URL (``http://127.0.0.1:PORT``).
    """
    from twisted.python.filepath import FilePath
    from twisted.web.server import Site

    from metagateway.auth.passwords import make_record
    from metagateway.credentials.directory import DirectoryCredentialStore
    from metagateway.testing import RecordingUpstream

    accounts = FilePath(case.mktemp())
    DirectoryCredentialStore(accounts).store(make_record(USER, PASSWORD, "admin"))
    upstream = RecordingUpstream(b"hello from build")
    port = _reactor.listenTCP(0, Site(upstream), interface="127.0.0.1")  # type: ignore[arg-type]
    case.addCleanup(port.stopListening)
    return accounts, upstream, "http://127.0.0.1:%d" % (port.getHost().port,)  # type: ignore[attr-defined]
