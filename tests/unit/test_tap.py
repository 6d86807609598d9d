"""
Tests for :mod:`metagateway.daemon.tap` and the twistd plugin.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from typing import Any, Iterator, Optional

from twisted.application.service import IService, IServiceMaker
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from metagateway.daemon.dev import curl_target
from metagateway.daemon.tap import (
    Listener,
    Options,
    makeService,
    twistd_logs_to_stdout,
)
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

    def test_websocket_idle_timeout(self) -> None:
        """
        ``--websocket-idle-timeout`` is an option, read into the
        configuration.
        """
        from metagateway.config import GatewayConfig

        options = Options()
        options.parseOptions(["--websocket-idle-timeout", "12"])
        config = GatewayConfig.from_options(
            options, {"GATEWAY_JWT_SECRET": "s", "METAGATEWAY_ACCOUNTS_DIR": "/x"}
        )
        self.assertEqual(config.websocket_idle_timeout, 12.0)

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
            {
                "GATEWAY_JWT_SECRET": "x" * 40,
                "METAGATEWAY_ACCOUNTS_DIR": self.accounts_dir(),
            }
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
            {
                "GATEWAY_JWT_SECRET": "x" * 40,
                "METAGATEWAY_ACCOUNTS_DIR": self.accounts_dir(),
            }
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
            {
                "GATEWAY_JWT_SECRET": "x" * 40,
                "METAGATEWAY_ACCOUNTS_DIR": self.accounts_dir(),
            }
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
        A ``--listen`` port that cannot be bound ends the start in
        ``makeService`` (before ``twistd`` sends stderr to its log) with
        status 1 after exactly one line on stderr, not a traceback; with
        ``--workers`` too.
        """

        class Busy(MemoryReactorClock):
            def listenTCP(self, port: int, *args: Any, **kw: Any) -> Any:
                raise CannotListenError("127.0.0.1", port, OSError(98, "in use"))

        self.use_environ(
            {
                "GATEWAY_JWT_SECRET": "x" * 40,
                "METAGATEWAY_ACCOUNTS_DIR": self.accounts_dir(),
            }
        )
        for extra in ([], ["--workers", "2"]):
            stderr = self.capture_stderr()
            options = Options()
            options.parseOptions(["--listen", "tcp:8125:interface=127.0.0.1", *extra])
            e = self.assertRaises(SystemExit, makeService, options, Busy())
            self.assertEqual(e.code, 1)
            self.assertEqual(
                stderr.getvalue(),
                "metagateway: Couldn't listen on 127.0.0.1:8125: [Errno 98] in use\n",
            )

    def test_bound_once(self) -> None:
        """
        ``makeService`` binds the ports; ``twistd`` starting the service
        afterwards binds nothing twice, and stopping it closes them.
        """
        self.use_environ(
            {
                "GATEWAY_JWT_SECRET": "x" * 40,
                "METAGATEWAY_ACCOUNTS_DIR": self.accounts_dir(),
            }
        )
        options = Options()
        options.parseOptions(["--listen", "tcp:8126", "--metrics-listen", "tcp:9101"])
        reactor = MemoryReactorClock()
        service = makeService(options, reactor)
        self.assertEqual(sorted(port for port, *_ in reactor.tcpServers), [8126, 9101])
        service.privilegedStartService()
        service.startService()
        self.assertEqual(len(reactor.tcpServers), 2)
        listeners = [
            child
            for child in service  # type: ignore[attr-defined]
            if isinstance(child, Listener)
        ]
        self.assertEqual(len(listeners), 2)
        self.assertNotIn(None, [listener.port for listener in listeners])
        service.stopService()
        self.assertEqual([listener.port for listener in listeners], [None, None])

    def test_accounts_dir_refused(self) -> None:
        """
        An ``--accounts-dir`` that does not exist, or is not a directory,
        is refused at start: exit status 1, one line on stderr naming it.
        """
        missing = self.mktemp()
        afile = self.mktemp()
        with open(afile, "w"):
            pass
        for path, problem in (
            (missing, "does not exist"),
            (afile, "is not a directory"),
        ):
            self.use_environ({"GATEWAY_JWT_SECRET": "x" * 40})
            stderr = self.capture_stderr()
            options = Options()
            options.parseOptions(["--accounts-dir", path])
            reactor = MemoryReactorClock()
            e = self.assertRaises(SystemExit, makeService, options, reactor)
            self.assertEqual(e.code, 1)
            self.assertEqual(
                stderr.getvalue(),
                "metagateway: accounts directory %s %s\n" % (path, problem),
            )
            self.assertEqual(reactor.tcpServers, [])

    def test_accounts_dir_unreadable(self) -> None:
        """
        An ``--accounts-dir`` this process cannot read is refused at start.
        """
        if os.getuid() == 0:
            raise self.skipTest("root reads every directory")
        path = self.accounts_dir()
        os.chmod(path, 0)
        self.addCleanup(os.chmod, path, 0o700)
        self.use_environ({"GATEWAY_JWT_SECRET": "x" * 40})
        stderr = self.capture_stderr()
        options = Options()
        options.parseOptions(["--accounts-dir", path])
        self.assertRaises(SystemExit, makeService, options, MemoryReactorClock())
        self.assertIn("cannot be read", stderr.getvalue())

    def test_store_settings(self) -> None:
        """
        ``--store-timeout`` and ``--store-retries`` (or their variables)
        reach the gateway's R2 store; a bad value is one line, exit 1.
        """
        r2 = {
            "GATEWAY_JWT_SECRET": "x" * 40,
            "R2_ENDPOINT_URL": "http://r2.test",
            "R2_ACCESS_KEY_ID": "id",
            "R2_SECRET_ACCESS_KEY": "secret",
        }
        for argv, environ, problem in (
            (["--store-timeout", "soon"], {}, "--store-timeout"),
            (["--store-timeout", "0"], {}, "more than 0"),
            ([], {"METAGATEWAY_STORE_RETRIES": "1.5"}, "whole number"),
            (["--store-retries", "-1"], {}, "non-negative"),
        ):
            self.use_environ({**r2, **environ})
            stderr = self.capture_stderr()
            options = Options()
            options.parseOptions(argv)
            e = self.assertRaises(
                SystemExit, makeService, options, MemoryReactorClock()
            )
            self.assertEqual(e.code, 1)
            lines = stderr.getvalue().splitlines()
            self.assertEqual(len(lines), 1, lines)
            self.assertIn(problem, lines[0])

    def test_short_secret_warns(self) -> None:
        """
        A secret shorter than 32 bytes starts, with a warning on stderr.
        """
        self.use_environ(
            {
                "GATEWAY_JWT_SECRET": "short",
                "METAGATEWAY_ACCOUNTS_DIR": self.accounts_dir(),
            }
        )
        stderr = self.capture_stderr()
        options = Options()
        options.parseOptions([])
        makeService(options, MemoryReactorClock())
        self.assertIn("shorter than 32 bytes", stderr.getvalue())
        self.assertNotIn("short\n", stderr.getvalue())

    def run_dev(
        self, argv: list[str], reactor: Optional[MemoryReactorClock] = None
    ) -> tuple[Any, MemoryReactorClock, str]:
        """
        ``makeService`` for ``--dev`` and ``argv``, on ``reactor``. What
        ``--dev`` makes in the temporary directory (its accounts, its
        assertion key) goes to a directory of this test's own, so that a
        service the test never stops leaves nothing in the shared one.

        :return: the service, the reactor and what was printed on stdout.
        """
        own = self.mktemp()
        os.makedirs(own)
        self.patch(tempfile, "tempdir", own)
        stdout = io.StringIO()
        saved = sys.stdout
        sys.stdout = stdout
        self.addCleanup(setattr, sys, "stdout", saved)
        options = Options()
        options.parseOptions(["--dev", *argv])
        reactor = reactor if reactor is not None else MemoryReactorClock()
        try:
            service = makeService(options, reactor)
        finally:
            sys.stdout = saved
        return service, reactor, stdout.getvalue()

    def test_dev(self) -> None:
        """
        ``--dev`` starts with no secret or store: a demo account, echo
        upstreams for unset services, loopback listening, bound before the
        credentials are printed.
        """
        self.use_environ({"KV_SERVICE_URL": "http://kv.test"})
        service, reactor, text = self.run_dev(["--accounts-dir", self.accounts_dir()])
        self.addCleanup(service.stopService)
        self.assertIn("demo-admin", text)
        self.assertIn("curl -s -X POST http://127.0.0.1:8080/auth/login", text)
        self.assertIn("BUILD_SERVICE_URL", text)
        self.assertNotIn("KV_SERVICE_URL", text)
        # Three echo upstreams were started, then the gateway itself.
        self.assertEqual(len(reactor.tcpServers), 4)
        self.assertEqual(reactor.tcpServers[-1][0], 8080)
        self.assertEqual(reactor.tcpServers[-1][3], "127.0.0.1")

    def test_dev_busy_port(self) -> None:
        """
        ``--dev`` on a port that cannot be bound prints no password, ends
        the start in one line, and removes its temporary accounts directory.
        """

        class Busy(MemoryReactorClock):
            def listenTCP(self, port: int, *args: Any, **kw: Any) -> Any:
                if port == 0:
                    return super().listenTCP(port, *args, **kw)
                raise CannotListenError("127.0.0.1", port, OSError(98, "in use"))

        self.use_environ({})
        stderr = self.capture_stderr()
        # A directory of this test's own, so that what tests running in
        # parallel (trial -j) leave in the shared one does not count.
        own = self.mktemp()
        os.makedirs(own)
        self.patch(tempfile, "tempdir", own)
        before = set(os.listdir(tempfile.gettempdir()))
        stdout = io.StringIO()
        saved = sys.stdout
        sys.stdout = stdout
        self.addCleanup(setattr, sys, "stdout", saved)
        options = Options()
        options.parseOptions(["--dev", "--listen", "tcp:8127"])
        e = self.assertRaises(SystemExit, makeService, options, Busy())
        sys.stdout = saved
        self.assertEqual(e.code, 1)
        self.assertEqual(stdout.getvalue(), "")
        self.assertEqual(len(stderr.getvalue().splitlines()), 1)
        self.assertIn("Couldn't listen", stderr.getvalue())
        left = set(os.listdir(tempfile.gettempdir())) - before
        self.assertEqual([n for n in left if n.startswith("metagateway-dev-")], [])

    def test_dev_bad_listen(self) -> None:
        """
        ``--dev`` with a malformed ``--listen`` prints no password.
        """
        self.use_environ({})
        stderr = self.capture_stderr()
        stdout = io.StringIO()
        saved = sys.stdout
        sys.stdout = stdout
        self.addCleanup(setattr, sys, "stdout", saved)
        options = Options()
        options.parseOptions(["--dev", "--listen", "nonsense:1"])
        self.assertRaises(SystemExit, makeService, options, MemoryReactorClock())
        sys.stdout = saved
        self.assertEqual(stdout.getvalue(), "")
        self.assertIn("bad --listen 'nonsense:1'", stderr.getvalue())

    def test_dev_bound_port(self) -> None:
        """
        With ``tcp:0`` the curl lines name the port actually bound.
        """

        class Assigning(MemoryReactorClock):
            def listenTCP(self, port: int, factory: Any, *a: Any, **kw: Any) -> Any:
                listening = super().listenTCP(
                    port or 40000 + len(self.tcpServers), factory, *a, **kw
                )
                return listening

        self.use_environ({})
        service, _, text = self.run_dev(
            ["--listen", "tcp:0:interface=127.0.0.1"], Assigning()
        )
        self.addCleanup(service.stopService)
        # The echo upstreams took 40000-40003; the gateway was given 40004.
        self.assertIn("curl -s http://127.0.0.1:40004/kv/hello", text)

    def test_dev_unix_and_ssl(self) -> None:
        """
        The curl lines use ``--unix-socket`` for a ``unix:`` endpoint and
        ``https`` with ``-k`` for ``ssl:``.
        """
        self.use_environ({})
        socket_path = os.path.abspath(self.mktemp())
        service, _, text = self.run_dev(["--listen", "unix:" + socket_path])
        self.addCleanup(service.stopService)
        self.assertIn(
            "curl --unix-socket %s -s http://localhost/kv/hello" % (socket_path,), text
        )
        address = IPv4Address("TCP", "0.0.0.0", 8443)
        self.assertEqual(
            curl_target("ssl:8443:privateKey=k.pem", address),
            ("curl -k", "https://127.0.0.1:8443"),
        )
        address6 = IPv6Address("TCP", "::", 8080)
        self.assertEqual(
            curl_target("tcp6:8080", address6), ("curl", "http://[::1]:8080")
        )

    def test_dev_removes_accounts(self) -> None:
        """
        The temporary accounts directory ``--dev`` made is removed when the
        daemon stops; one the user named is kept.
        """
        self.use_environ({})
        service, _, text = self.run_dev([])
        made = [
            line.split(": ", 1)[1]
            for line in text.splitlines()
            if line.startswith("Accounts directory: ")
        ][0]
        self.assertTrue(os.path.isdir(made))
        service.startService()
        service.stopService()
        self.assertFalse(os.path.exists(made))
        named = self.accounts_dir()
        service, _, _ = self.run_dev(["--accounts-dir", named])
        service.startService()
        service.stopService()
        self.assertTrue(os.path.isdir(named))

    def test_dev_assertion_key(self) -> None:
        """
        ``--dev`` generates an assertion key for the run (removed when it
        stops) and prints where the JWKS is.
        """
        self.use_environ({})
        service, _, text = self.run_dev([])
        self.assertIn("curl -s http://127.0.0.1:8080/.well-known/jwks.json", text)
        key_file = [
            line.split(": ", 1)[1]
            for line in text.splitlines()
            if line.startswith("Generated an assertion key for this run: ")
        ][0]
        self.assertTrue(os.path.isfile(key_file))
        service.startService()
        service.stopService()
        self.assertFalse(os.path.exists(key_file))

    def test_echo_shows_assertion(self) -> None:
        """
        The echo upstream reports the assertion verified, with its claims;
        one signed by another key is reported unverified.
        """
        import json

        from metagateway.auth.assertion import new_key_pem
        from metagateway.daemon.dev import EchoResource, _key_set
        from metagateway.testing import GatewayHarness, make_config

        paths = []
        for _ in range(2):
            path = self.mktemp()
            with open(path, "wb") as f:
                f.write(new_key_pem())
            paths.append(path)
        for key, verified in ((paths[0], True), (paths[1], False)):
            harness = GatewayHarness(
                make_config(assertion_key_file=paths[0]),
                upstream=EchoResource("KV", _key_set(key)),
            )
            _, body = harness.request(self, "GET", "/kv/hello")
            shown = json.loads(body)["assertion"]
            self.assertEqual(shown["verified"], verified, shown)
            if verified:
                self.assertEqual(shown["claims"]["sub"], "anonymous")
                self.assertEqual(shown["claims"]["path"], "/hello")


class VersionTests(SynchronousTestCase):
    """
    ``twistd metagateway --version``.
    """

    def test_version(self) -> None:
        """
        ``--version`` prints metagateway's version and Twisted's, then exits
        with status 0.
        """
        import twisted

        import metagateway

        stdout = io.StringIO()
        saved = sys.stdout
        sys.stdout = stdout
        self.addCleanup(setattr, sys, "stdout", saved)
        e = self.assertRaises(SystemExit, Options().parseOptions, ["--version"])
        self.assertEqual(e.code, 0)
        self.assertEqual(
            stdout.getvalue(),
            "metagateway %s (Twisted %s)\n"
            % (metagateway.__version__, twisted.__version__),
        )


class TwistdLogTests(SynchronousTestCase):
    """
    :func:`twistd_logs_to_stdout`: where ``twistd`` writes its text log,
    read from its own options.
    """

    def test_stdout(self) -> None:
        """
        ``-n`` (or ``--nodaemon``, or in a cluster of flags) without a log
        file, or with ``--logfile -``: standard output.
        """
        for args in (
            ["-n", "metagateway", "--listen", "tcp:0"],
            ["--nodaemon", "--pidfile=", "metagateway"],
            ["-no", "metagateway", "--logfile=x.log"],
            ["-n", "--logfile", "-", "metagateway"],
        ):
            self.assertTrue(twistd_logs_to_stdout(args), args)

    def test_elsewhere(self) -> None:
        """
        A daemon (no ``-n``), a log file, syslog, a custom logger, or
        options ``twistd`` would not accept: not standard output (the text
        access log then goes through ``twistd``'s log).
        """
        for args in (
            ["metagateway"],
            ["-n", "--logfile=/var/log/x.log", "metagateway"],
            ["-nl", "x.log", "metagateway"],
            ["-n", "--syslog", "metagateway"],
            ["-n", "--logger=a.b", "metagateway"],
            ["--no-such-option", "-n", "metagateway"],
        ):
            self.assertFalse(twistd_logs_to_stdout(args), args)
