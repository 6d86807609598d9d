"""
End-to-end tests: the real ``twistd metagateway`` daemon on loopback, in
front of real upstream servers.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from metagateway.auth.passwords import make_record
from metagateway.credentials.directory import DirectoryCredentialStore
from metagateway.testing import SECRET, RecordingUpstream
from tests.daemon import (
    PASSWORD,
    USER,
    http_client,
    refusing_port,
    serve_world,
    start_daemon,
)


class DaemonTests(TestCase):
    """
    Login, token and proxied request through the real daemon.
    """

    timeout = 60

    def setUp(self) -> Any:
        self.accounts, self.upstream, base = serve_world(self)
        self.upstream_url = base + "/svc"
        return ensureDeferred(self._start())

    async def _start(self) -> None:
        self.http = http_client(self)
        self.child, self.base = await start_daemon(
            self,
            {"GATEWAY_JWT_SECRET": SECRET, "BUILD_SERVICE_URL": self.upstream_url},
            "--accounts-dir",
            self.accounts.path,
        )

    async def _json(self, response: Any) -> Any:
        return json.loads(await response.content())

    def test_login_then_proxy(self) -> Deferred[None]:
        """
        A login's token reaches ``/build``; the upstream sees the stripped
        path, the query byte for byte, and the gateway's headers.
        """

        async def go() -> None:
            r = await self.http.post(
                self.base + "/auth/login",
                json.dumps({"username": USER, "password": PASSWORD}).encode(),
            )
            self.assertEqual(r.code, 200)
            token = (await self._json(r))["token"]
            r = await self.http.get(
                self.base + "/build/a/b?x=1&y=%20",
                headers={"Authorization": "Bearer " + token},
            )
            self.assertEqual(r.code, 200)
            self.assertEqual(await r.content(), b"hello from build")
            method, uri, headers, _ = self.upstream.requests[-1]
            self.assertEqual(uri, b"/svc/a/b?x=1&y=%20")
            self.assertEqual(headers.getRawHeaders(b"x-gateway-user"), [USER.encode()])
            self.assertIsNone(headers.getRawHeaders(b"authorization"))

        return ensureDeferred(go())


class DaemonContractTests(TestCase):
    """
    :ref:`contract-starting`, §4, §5 and §6 rows, black-box against the real daemon.
    """

    timeout = 60

    def setUp(self) -> Any:
        self.accounts = FilePath(self.mktemp())
        DirectoryCredentialStore(self.accounts).store(
            make_record(USER, PASSWORD, "admin")
        )
        self.upstream = RecordingUpstream(b"kv says hi", 200, {b"X-Up": [b"1"]})
        port = reactor.listenTCP(0, Site(self.upstream), interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(port.stopListening)
        env = {
            "GATEWAY_JWT_SECRET": SECRET,
            "KV_SERVICE_URL": "http://127.0.0.1:%d/" % (port.getHost().port,),  # type: ignore[attr-defined]
            "CORE_SERVICE_URL": "http://127.0.0.1:%d" % (refusing_port(self),),
        }

        async def start() -> None:
            self.child, self.base = await start_daemon(
                self, env, "--accounts-dir", self.accounts.path
            )
            self.http = http_client(self)

        return ensureDeferred(start())

    async def _error(self, response: Any, status: int, code: str, route: str) -> None:
        self.assertEqual(response.code, status)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [b"application/json"]
        )
        self.assertEqual(
            response.headers.getRawHeaders(b"access-control-allow-origin"), [b"*"]
        )
        document = json.loads(await response.content())
        self.assertEqual(
            (document["status"], document["code"], document["route"]),
            (status, code, route),
        )
        self.assertEqual(
            set(document) - {"details"},
            {"route", "status", "code", "message", "requestId", "timestamp"},
        )

    def test_rows(self) -> Deferred[None]:
        """
        Health, login failures, guest tokens, token policy, 404s, preflight,
        missing and refused upstreams, dot segments.
        """

        async def go() -> None:
            http = self.http
            r = await http.get(self.base + "/health")
            self.assertEqual(r.code, 200)
            self.assertEqual(json.loads(await r.content())["service"], "gateway")

            r = await http.post(self.base + "/auth/login", b"{}")
            await self._error(r, 400, "INVALID_REQUEST", "AUTH")
            r = await http.post(
                self.base + "/auth/login",
                json.dumps({"username": USER, "password": "nope"}).encode(),
            )
            await self._error(r, 401, "INVALID_CREDENTIALS", "AUTH")
            r = await http.post(
                self.base + "/auth/login",
                json.dumps({"username": "../../x", "password": "nope"}).encode(),
            )
            await self._error(r, 401, "INVALID_CREDENTIALS", "AUTH")
            r = await http.get(self.base + "/auth/login")
            await self._error(r, 404, "NOT_FOUND", "CORE")

            r = await http.post(self.base + "/auth/guest", b'{"route":"kv"}')
            guest = json.loads(await r.content())
            self.assertEqual((r.code, guest["route"]), (200, "KV"))
            r = await http.get(
                self.base + "/kv/a?z=%2F",
                headers={"Authorization": "Bearer " + guest["token"]},
            )
            self.assertEqual(r.code, 200)
            self.assertEqual(await r.content(), b"kv says hi")
            self.assertEqual(r.headers.getRawHeaders(b"x-up"), [b"1"])
            self.assertEqual(self.upstream.requests[-1][1], b"/a?z=%2F")
            _, _, headers, _ = self.upstream.requests[-1]
            self.assertEqual(headers.getRawHeaders(b"x-gateway-user"), [b"guest"])
            r = await http.get(
                self.base + "/build/x",
                headers={"Authorization": "Bearer " + guest["token"]},
            )
            await self._error(r, 403, "INVALID_TOKEN", "BUILD")
            r = await http.get(self.base + "/build/x")
            await self._error(r, 401, "MISSING_TOKEN", "BUILD")
            r = await http.get(
                self.base + "/kv/x", headers={"Authorization": "Bearer x"}
            )
            await self._error(r, 403, "INVALID_TOKEN", "KV")

            r = await http.get(self.base + "/hq/x")
            await self._error(r, 502, "MISSING_TARGET", "BASE")
            r = await http.get(self.base + "/core/x")
            await self._error(r, 502, "UPSTREAM_UNAVAILABLE", "CORE")
            r = await http.get(self.base + "/buildings")
            await self._error(r, 404, "NOT_FOUND", "CORE")

            r = await http.request("OPTIONS", self.base + "/build/x")
            self.assertEqual(r.code, 204)
            self.assertEqual(
                r.headers.getRawHeaders(b"access-control-allow-methods"),
                [b"GET,POST,PUT,DELETE,OPTIONS"],
            )
            await r.content()

        return ensureDeferred(go())

    def test_dot_segments_raw(self) -> Deferred[None]:
        """
        ``/build/../kv/x`` sent raw (no client-side normalisation) is a
        ``/kv`` request.
        """
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
        from twisted.internet.protocol import Protocol

        class Raw(Protocol):
            def __init__(self) -> None:
                self.data = b""
                self.done: Deferred[bytes] = Deferred()

            def dataReceived(self, data: bytes) -> None:
                self.data += data

            def connectionLost(self, reason: Any = None) -> None:
                self.done.callback(self.data)

        async def go() -> None:
            port = int(self.base.rsplit(":", 1)[1])
            raw = Raw()
            await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), raw)
            raw.transport.write(  # type: ignore[union-attr]
                b"GET /build/%2e%2E/kv/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
            )
            data = await raw.done
            self.assertTrue(data.startswith(b"HTTP/1.1 200"), data[:100])
            self.assertEqual(self.upstream.requests[-1][1], b"/x")

        return ensureDeferred(go())


class RefusalTests(TestCase):
    """
    The daemon refuses to start without a secret or a store: one line on
    stderr, non-zero exit, no traceback, no usage text.
    """

    timeout = 60

    def _start_refused(self, env: dict[str, str], *options: str) -> Deferred[None]:
        from tests.daemon import child_environ, daemon_argv, spawn

        async def go() -> None:
            child = spawn(self, daemon_argv(*options), child_environ(env))
            code = await child.ended
            self.assertEqual(code, 1)
            lines = child.stderr.decode().strip().splitlines()
            self.assertEqual(len(lines), 1, child.stderr)
            self.assertNotIn(b"Traceback", child.output)
            self.assertNotIn(b"Usage", child.output)
            self.last_line = lines[0]
            self.output = child.output

        return ensureDeferred(go())

    async def _check(self, env: dict[str, str], needle: str, *options: str) -> None:
        await self._start_refused(env, *options)
        self.assertIn(needle, self.last_line)

    def test_no_secret(self) -> Deferred[None]:
        """
        No ``GATEWAY_JWT_SECRET``.
        """
        return ensureDeferred(
            self._check({}, "GATEWAY_JWT_SECRET", "--accounts-dir", self.mktemp())
        )

    def test_no_store(self) -> Deferred[None]:
        """
        Neither ``--accounts-dir`` nor ``R2_ENDPOINT_URL``.
        """
        return ensureDeferred(
            self._check({"GATEWAY_JWT_SECRET": SECRET}, "R2_ENDPOINT_URL")
        )

    def test_bad_trusted_proxy(self) -> Deferred[None]:
        """
        A trusted proxy that is neither an address nor a network.
        """
        return ensureDeferred(
            self._check(
                {"GATEWAY_JWT_SECRET": SECRET},
                "'lb.internal' is not an IP address or network",
                "--accounts-dir",
                self.mktemp(),
                "--trusted-proxies",
                "10.0.0.0/8,lb.internal",
            )
        )

    def test_no_secret_no_store(self) -> Deferred[None]:
        """
        Neither: the one line names both.
        """

        async def go() -> None:
            await self._start_refused({})
            self.assertIn("GATEWAY_JWT_SECRET", self.last_line)
            self.assertIn("R2_ENDPOINT_URL", self.last_line)

        return ensureDeferred(go())

    def test_port_in_use(self) -> Deferred[None]:
        """
        A ``--listen`` port another process holds, one process or
        ``--workers 2``: reported once (on stderr, not again in the log).
        """
        import socket

        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        accounts = self.mktemp()
        os.makedirs(accounts)

        async def go() -> None:
            for extra in ((), ("--workers", "2")):
                await self._check(
                    {"GATEWAY_JWT_SECRET": SECRET},
                    "Couldn't listen on 127.0.0.1:%d" % (port,),
                    "--accounts-dir",
                    accounts,
                    *extra,
                    "--listen",
                    "tcp:%d:interface=127.0.0.1" % (port,),
                )
                self.assertEqual(self.output.count(b"Couldn't listen"), 1)

        return ensureDeferred(go())

    def test_accounts_dir_missing(self) -> Deferred[None]:
        """
        An ``--accounts-dir`` that does not exist, or is a file.
        """
        missing = self.mktemp()
        afile = self.mktemp()
        with open(afile, "w"):
            pass

        async def go() -> None:
            await self._check(
                {"GATEWAY_JWT_SECRET": SECRET},
                "accounts directory %s does not exist" % (missing,),
                "--accounts-dir",
                missing,
            )
            await self._check(
                {"GATEWAY_JWT_SECRET": SECRET, "METAGATEWAY_ACCOUNTS_DIR": afile},
                "accounts directory %s is not a directory" % (afile,),
            )

        return ensureDeferred(go())

    def test_bad_store_timeout(self) -> Deferred[None]:
        """
        A malformed ``--store-timeout`` or ``METAGATEWAY_STORE_RETRIES``.
        """
        accounts = self.mktemp()
        os.makedirs(accounts)

        async def go() -> None:
            await self._check(
                {"GATEWAY_JWT_SECRET": SECRET},
                "--store-timeout / METAGATEWAY_STORE_TIMEOUT",
                "--accounts-dir",
                accounts,
                "--store-timeout",
                "soon",
            )
            await self._check(
                {"GATEWAY_JWT_SECRET": SECRET, "METAGATEWAY_STORE_RETRIES": "x"},
                "--store-retries / METAGATEWAY_STORE_RETRIES",
                "--accounts-dir",
                accounts,
            )

        return ensureDeferred(go())


class CommandLineTests(TestCase):
    """
    ``twistd metagateway --version`` and ``--dev`` through the real
    ``twistd``.
    """

    timeout = 60

    def test_version(self) -> Deferred[None]:
        """
        ``--version`` prints metagateway's version and Twisted's.
        """
        import twisted

        import metagateway
        from tests.daemon import child_environ, spawn, twistd_command

        async def go() -> None:
            child = spawn(
                self, [*twistd_command(), "metagateway", "--version"], child_environ({})
            )
            self.assertEqual(await child.ended, 0)
            self.assertEqual(
                child.output.decode().strip(),
                "metagateway %s (Twisted %s)"
                % (metagateway.__version__, twisted.__version__),
            )

        return ensureDeferred(go())

    def test_dev(self) -> Deferred[None]:
        """
        ``--dev`` on ``tcp:0`` prints curl lines for the port it bound; the
        printed password logs in there; its temporary accounts directory is
        gone once it stops.
        """
        import re

        from tests.daemon import child_environ, daemon_argv, spawn

        async def go() -> None:
            child = spawn(self, daemon_argv("--dev"), child_environ({}))
            port = await child.wait_for_port()
            text = child.output.decode()
            self.assertIn(
                "curl -s -X POST http://127.0.0.1:%d/auth/login" % (port,), text
            )
            password = re.search(r"password: (\S+)", text).group(1)  # type: ignore[union-attr]
            accounts = re.search(r"Accounts directory: (\S+)", text).group(1)  # type: ignore[union-attr]
            self.assertTrue(os.path.isdir(accounts))
            response = await http_client(self).post(
                "http://127.0.0.1:%d/auth/login" % (port,),
                json={"username": "demo-admin", "password": password},
            )
            self.assertEqual(response.code, 200)
            await response.content()
            child.signal("TERM")
            await child.ended
            self.assertFalse(os.path.exists(accounts))

        return ensureDeferred(go())
