"""
End-to-end tests of operations: the real ``twistd metagateway`` daemon with
``--workers 2`` (requests served, a killed worker restarted, SIGTERM
stopping everything) and with ``--metrics-listen`` and a JSON access log.
"""

from __future__ import annotations

import json
import os
import re
import signal
from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from metagateway.testing import SECRET
from tests.daemon import (
    PASSWORD,
    USER,
    ChildProcess,
    http_client,
    serve_world,
    start_daemon,
)
from tests.unit.test_metrics import samples

WORKER_STARTED = re.compile(rb"Worker (\d+) started \(pid (\d+)\)")
METRICS_PORT = re.compile(rb"MetricsSite starting on (\d+)")


async def wait_for(
    child: ChildProcess, pattern: re.Pattern[bytes], count: int = 1, timeout: float = 30
) -> list[re.Match[bytes]]:
    """
    Wait until ``child`` has written ``count`` lines matching ``pattern``.

    :return: all the matches so far.
    """
    waited = 0.0
    while True:
        matches = list(pattern.finditer(child.output))
        if len(matches) >= count:
            return matches
        if child.exit_code is not None or waited > timeout:
            raise AssertionError(
                "never saw %r:\n%s"
                % (pattern.pattern, child.output.decode("utf-8", "replace"))
            )
        await deferLater(reactor, 0.05, lambda: None)
        waited += 0.05


def close_all(connections: list[Any]) -> None:
    """
    Close every connection in ``connections``.
    """
    for connection in connections:
        connection.close()


async def _nothing() -> None:
    """
    Nothing to wait for.
    """


def established(port: int) -> set[str]:
    """
    The socket inodes of the established IPv4 connections whose local port
    is ``port`` (the server's ends), from ``/proc/net/tcp``.
    """
    inodes = set()
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "01" and int(local.split(":")[1], 16) == port:
                inodes.add(inode)
    return inodes


def socket_inodes(pid: int) -> set[str]:
    """
    The inodes of the sockets process ``pid`` has open.
    """
    inodes = set()
    directory = "/proc/%d/fd" % (pid,)
    for name in os.listdir(directory):
        try:
            target = os.readlink(os.path.join(directory, name))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def alive(pid: int) -> bool:
    """
    Whether process ``pid`` exists (and is not a zombie).
    """
    try:
        with open("/proc/%d/stat" % (pid,)) as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


class DaemonCase(TestCase):
    """
    The daemon on an accounts directory and an upstream, started with
    :attr:`options` before each test.
    """

    #: Daemon options after ``--accounts-dir``.
    options: tuple[str, ...] = ()

    def setUp(self) -> Any:
        return ensureDeferred(self._start())

    async def _start(self) -> None:
        self.http = http_client(self)
        self.accounts, self.upstream, base = serve_world(self)
        env = {"GATEWAY_JWT_SECRET": SECRET, "BUILD_SERVICE_URL": base + "/svc"}
        self.child, self.base = await start_daemon(
            self, env, "--accounts-dir", self.accounts.path, *self.options
        )
        await self.started()

    async def started(self) -> None:
        """
        Called once the daemon listens.
        """


class WorkersTests(DaemonCase):
    """
    ``--workers 2`` through the real daemon.
    """

    timeout = 90
    options = ("--workers", "2")

    async def started(self) -> None:
        started = await wait_for(self.child, WORKER_STARTED, 2)
        self.pids = {int(m.group(1)): int(m.group(2)) for m in started}
        # Both workers listen (each logs the shared port).
        await wait_for(self.child, re.compile(rb"GatewaySite starting on"), 2)

    async def login_and_call(self) -> None:
        r = await self.http.post(
            self.base + "/auth/login",
            json.dumps({"username": USER, "password": PASSWORD}).encode(),
        )
        self.assertEqual(r.code, 200)
        token = json.loads(await r.content())["token"]
        r = await self.http.get(
            self.base + "/build/a?x=1", headers={"Authorization": "Bearer " + token}
        )
        self.assertEqual(r.code, 200)
        self.assertEqual(await r.content(), b"hello from build")

    def test_serves(self) -> Deferred[None]:
        """
        Two workers serve the one port: logins and proxied calls work, and
        each worker is a separate process.
        """

        async def go() -> None:
            self.assertEqual(sorted(self.pids), [0, 1])
            self.assertEqual(len(set(self.pids.values())), 2)
            for _ in range(5):
                await self.login_and_call()

        return ensureDeferred(go())

    def test_connections_spread(self) -> Deferred[None]:
        """
        A burst of keep-alive connections lands on both workers (each has
        its own ``SO_REUSEPORT`` socket on Linux): of 200 connections, each
        kept open after one request, each worker holds at least 35 %.
        The kernel hashes each connection's addresses, so the split is
        random: below 35 % happens about once in 30,000 runs.
        """
        import socket

        if not os.path.exists("/proc/net/tcp"):
            raise SkipTest("needs Linux's /proc to see which worker holds what")
        port = int(self.base.rsplit(":", 1)[1])
        connections: list[socket.socket] = []
        self.addCleanup(close_all, connections)
        for _ in range(200):
            connection = socket.create_connection(("127.0.0.1", port), timeout=10)
            connections.append(connection)
            connection.sendall(b"GET /health HTTP/1.1\r\nHost: g\r\n\r\n")
            self.assertIn(b" 200 ", connection.recv(65536))
        held = {
            index: len(socket_inodes(pid) & established(port))
            for index, pid in self.pids.items()
        }
        self.assertEqual(sum(held.values()), 200, held)
        for count in held.values():
            self.assertGreaterEqual(count, 70, held)
        return ensureDeferred(_nothing())

    def test_killed_worker_restarted(self) -> Deferred[None]:
        """
        A worker killed with SIGKILL is started again, and the port keeps
        answering meanwhile.
        """

        async def go() -> None:
            os.kill(self.pids[1], signal.SIGKILL)
            await self.login_and_call()
            started = await wait_for(self.child, WORKER_STARTED, 3)
            index, pid = int(started[2].group(1)), int(started[2].group(2))
            self.assertEqual(index, 1)
            self.assertNotEqual(pid, self.pids[1])
            await wait_for(self.child, re.compile(rb"GatewaySite starting on"), 3)
            await self.login_and_call()
            self.assertTrue(alive(pid))

        return ensureDeferred(go())

    def test_sigterm_stops_all(self) -> Deferred[None]:
        """
        SIGTERM to the parent stops every worker (each stops by itself, not
        because its parent went away), then the parent.
        """

        async def go() -> None:
            await self.login_and_call()
            self.child.signal("TERM")
            status = await self.child.ended
            output = self.child.output.decode("utf-8", "replace")
            # twistd ends by SIGTERM again once it has shut down (no status).
            self.assertIn(status, (0, None), output)
            self.assertIn("Server Shut Down.", output)
            self.assertNotIn("Traceback", output)
            self.assertNotIn("parent is gone", output)
            for pid in self.pids.values():
                self.assertFalse(alive(pid))
            self.assertIn(b"Worker 0 stopped", self.child.output)
            self.assertIn(b"Worker 1 stopped", self.child.output)

        return ensureDeferred(go())

    def test_sigterm_to_the_group(self) -> Deferred[None]:
        """
        SIGTERM to the parent and to every worker at once, as ``kill`` of
        the whole process group sends it: each worker gets it twice (once
        passed on by the parent) and stops once, with no
        ``ReactorNotRunning`` traceback.
        """

        async def go() -> None:
            await self.login_and_call()
            self.child.signal("TERM")
            for pid in self.pids.values():
                os.kill(pid, signal.SIGTERM)
            status = await self.child.ended
            output = self.child.output.decode("utf-8", "replace")
            self.assertIn(status, (0, None), output)
            self.assertIn("Server Shut Down.", output)
            self.assertNotIn("Traceback", output)
            self.assertNotIn("ReactorNotRunning", output)
            for pid in self.pids.values():
                self.assertFalse(alive(pid))

        return ensureDeferred(go())


class MetricsTests(DaemonCase):
    """
    ``--metrics-listen`` and ``--access-log json`` through the real daemon.
    """

    timeout = 60
    options = ("--metrics-listen", "tcp:0:interface=127.0.0.1", "--access-log", "json")

    async def started(self) -> None:
        [match] = await wait_for(self.child, METRICS_PORT)
        self.metrics = "http://127.0.0.1:%d" % (int(match.group(1)),)

    def access_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.child.output.splitlines():
            if line.startswith(b"{"):
                lines.append(json.loads(line))
        return lines

    def test_metrics_apart(self) -> Deferred[None]:
        """
        ``/metrics`` is served on the metrics endpoint and counts the
        public port's requests; on the public port it is a JSON ``404``.
        """

        async def go() -> None:
            r = await self.http.get(self.base + "/metrics")
            self.assertEqual(r.code, 404)
            self.assertEqual(
                r.headers.getRawHeaders(b"content-type"), [b"application/json"]
            )
            self.assertEqual(json.loads(await r.content())["code"], "NOT_FOUND")
            r = await self.http.post(
                self.base + "/auth/login",
                json.dumps({"username": USER, "password": PASSWORD}).encode(),
            )
            self.assertEqual(r.code, 200)
            await r.content()
            r = await self.http.get(self.metrics + "/metrics")
            self.assertEqual(r.code, 200)
            self.assertTrue(
                r.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
            )
            raw = await r.content()
            text = raw.decode("utf-8")
            found = samples(raw)
            self.assertEqual(
                found[
                    'metagateway_requests_total{route="CORE",method="GET",status="4xx"}'
                ],
                1,
            )
            self.assertEqual(
                found['metagateway_logins_total{kind="password",outcome="success"}'], 1
            )
            self.assertEqual(
                found['metagateway_credential_store_lookups_total{result="found"}'], 1
            )
            self.assertNotIn("worker=", text)

        return ensureDeferred(go())

    def test_json_access_log(self) -> Deferred[None]:
        """
        With ``--access-log json`` each request is one JSON line on stdout,
        without the query string, the token or the password.
        """

        async def go() -> None:
            r = await self.http.post(
                self.base + "/auth/login",
                json.dumps({"username": USER, "password": PASSWORD}).encode(),
            )
            token = json.loads(await r.content())["token"]
            r = await self.http.get(
                self.base + "/build/x?q=private",
                headers={"Authorization": "Bearer " + token},
            )
            await r.content()
            lines: Optional[list[dict[str, Any]]] = None
            for _ in range(100):
                lines = self.access_lines()
                if len(lines) >= 2:
                    break
                await deferLater(reactor, 0.05, lambda: None)
            assert lines is not None
            login, call = lines[:2]
            self.assertEqual(
                (login["path"], login["status"], login["subject"]),
                ("/auth/login", 200, USER),
            )
            self.assertEqual(
                (call["path"], call["route"], call["upstreamStatus"], call["subject"]),
                ("/build/x", "BUILD", 200, USER),
            )
            output = self.child.output.decode("utf-8", "replace")
            for secret in (token, PASSWORD, "private", SECRET):
                self.assertNotIn(secret, output)

        return ensureDeferred(go())
