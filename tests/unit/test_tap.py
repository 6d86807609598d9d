"""
Tests for :mod:`metagateway.daemon.tap` and the twistd plugin.
"""

from __future__ import annotations

import io
import sys
from typing import Any, Iterator

from twisted.application.service import IService, IServiceMaker
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from metagateway.daemon.tap import Options, makeService
from metagateway.testing import EnvironmentMixin


class OptionsTests(SynchronousTestCase):
    """
    Parsing the command line.
    """

    def test_listen_repeats(self) -> None:
        """
        ``--listen`` may be given several times.
        """
        options = Options()
        options.parseOptions(["--listen", "tcp:1", "--listen", "unix:/tmp/x"])
        self.assertEqual(options["listen"], ["tcp:1", "unix:/tmp/x"])

    def test_unknown_option(self) -> None:
        """
        A malformed flag is a usage error.
        """
        self.assertRaises(UsageError, Options().parseOptions, ["--nope"])

    def test_plugin(self) -> None:
        """
        twistd finds the ``metagateway`` plugin.
        """
        import twisted.plugins

        makers = [
            p
            for p in getPlugins(IServiceMaker, twisted.plugins)
            if p.tapname == "metagateway"
        ]
        self.assertEqual(len(makers), 1)
        from zope.interface.verify import verifyObject

        self.assertTrue(verifyObject(IServiceMaker, makers[0]))


class MakeServiceTests(EnvironmentMixin, SynchronousTestCase):
    """
    Building the daemon's service.
    """

    def listening(
        self, service: IService, reactor: MemoryReactorClock
    ) -> Iterator[int]:
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        return (port for port, *_ in reactor.tcpServers)

    def test_listens(self) -> None:
        """
        One listening port per ``--listen``.
        """
        self.use_environ(
            {"GATEWAY_JWT_SECRET": "x" * 40, "METAGATEWAY_ACCOUNTS_DIR": self.mktemp()}
        )
        options = Options()
        options.parseOptions(
            ["--listen", "tcp:8123:interface=127.0.0.1", "--listen", "tcp:8124"]
        )
        reactor = MemoryReactorClock()
        service = makeService(options, reactor)
        self.assertEqual(sorted(self.listening(service, reactor)), [8123, 8124])
        self.assertEqual(reactor.tcpServers[0][3], "127.0.0.1")

    def test_default_listen(self) -> None:
        """
        Without ``--listen`` or its variable the gateway listens on 8080.
        """
        self.use_environ(
            {"GATEWAY_JWT_SECRET": "x" * 40, "METAGATEWAY_ACCOUNTS_DIR": self.mktemp()}
        )
        options = Options()
        options.parseOptions([])
        reactor = MemoryReactorClock()
        self.assertEqual(
            list(self.listening(makeService(options, reactor), reactor)),
            [8080],
        )

    def test_json_access_log_flushed_at_shutdown(self) -> None:
        """
        With ``--access-log json`` the buffered lines are written after the
        reactor's shutdown (once the drain is over).
        """
        self.use_environ(
            {"GATEWAY_JWT_SECRET": "x" * 40, "METAGATEWAY_ACCOUNTS_DIR": self.mktemp()}
        )
        options = Options()
        options.parseOptions(["--access-log", "json"])
        reactor = MemoryReactorClock()
        makeService(options, reactor)
        after = reactor.triggers.get("after", {}).get("shutdown", [])
        self.assertEqual([getattr(f, "__name__", None) for f, *_ in after], ["flush"])

    def test_refuses_without_secret_or_store(self) -> None:
        """
        A missing secret or store exits with status 1 after one line on
        stderr naming what is missing.
        """
        for environ, missing in (
            ({"METAGATEWAY_ACCOUNTS_DIR": "/a"}, "GATEWAY_JWT_SECRET"),
            ({"GATEWAY_JWT_SECRET": "x" * 40}, "--accounts-dir"),
            (
                {"GATEWAY_JWT_SECRET": "x" * 40, "R2_ENDPOINT_URL": "http://r2.test"},
                "R2_ACCESS_KEY_ID",
            ),
        ):
            self.use_environ(environ)
            stderr = self.capture_stderr()
            options = Options()
            options.parseOptions([])
            e = self.assertRaises(
                SystemExit, makeService, options, MemoryReactorClock()
            )
            self.assertEqual(e.code, 1)
            lines = stderr.getvalue().splitlines()
            self.assertEqual(len(lines), 1, lines)
            self.assertIn(missing, lines[0])

    def test_port_in_use(self) -> None:
        """
        A ``--listen`` port that cannot be bound ends the start (``twistd``
        starts services before running the reactor) with status 1 after
        one line on stderr, not a traceback; with ``--workers`` too.
        """

        class Busy(MemoryReactorClock):
            def listenTCP(self, port: int, *args: Any, **kw: Any) -> Any:
                raise CannotListenError("127.0.0.1", port, OSError(98, "in use"))

        self.use_environ(
            {"GATEWAY_JWT_SECRET": "x" * 40, "METAGATEWAY_ACCOUNTS_DIR": self.mktemp()}
        )
        for extra in ([], ["--workers", "2"]):
            stderr = self.capture_stderr()
            options = Options()
            options.parseOptions(["--listen", "tcp:8125:interface=127.0.0.1", *extra])
            service = makeService(options, Busy())
            e = self.assertRaises(SystemExit, service.privilegedStartService)
            self.assertEqual(e.code, 1)
            self.assertEqual(
                stderr.getvalue(),
                "metagateway: Couldn't listen on 127.0.0.1:8125: [Errno 98] in use\n",
            )

    def test_short_secret_warns(self) -> None:
        """
        A secret shorter than 32 bytes starts, with a warning on stderr.
        """
        self.use_environ(
            {"GATEWAY_JWT_SECRET": "short", "METAGATEWAY_ACCOUNTS_DIR": "/a"}
        )
        stderr = self.capture_stderr()
        options = Options()
        options.parseOptions([])
        makeService(options, MemoryReactorClock())
        self.assertIn("shorter than 32 bytes", stderr.getvalue())
        self.assertNotIn("short\n", stderr.getvalue())

    def test_dev(self) -> None:
        """
        ``--dev`` starts with no secret or store: a demo account, echo
        upstreams for unset services, loopback listening.
        """
        self.use_environ({"KV_SERVICE_URL": "http://kv.test"})
        stdout = io.StringIO()
        saved = sys.stdout
        sys.stdout = stdout
        self.addCleanup(setattr, sys, "stdout", saved)
        options = Options()
        options.parseOptions(["--dev", "--accounts-dir", self.mktemp()])
        reactor = MemoryReactorClock()
        service = makeService(options, reactor)
        text = stdout.getvalue()
        self.assertIn("demo-admin", text)
        self.assertIn("curl", text)
        self.assertIn("BUILD_SERVICE_URL", text)
        self.assertNotIn("KV_SERVICE_URL", text)
        # Three echo upstreams were started, then the gateway itself.
        self.assertEqual(len(reactor.tcpServers), 3)
        list(self.listening(service, reactor))
        self.assertEqual(reactor.tcpServers[-1][0], 8080)
        self.assertEqual(reactor.tcpServers[-1][3], "127.0.0.1")
