"""
End-to-end tests of embedding: ``examples/embedded.py`` started for real on
a loopback port, in front of a real upstream server.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

from metagateway.testing import SECRET
from tests.daemon import (
    PASSWORD,
    USER,
    ChildProcess,
    child_environ,
    http_client,
    serve_world,
    spawn,
)

#: The repository root, where ``examples/`` is.
ROOT = FilePath(__file__).parent().parent().parent()
EXAMPLE = ROOT.child("examples").child("embedded.py")

#: The line the example prints once it listens.
LISTENING = re.compile(rb"embedded: listening on http://127\.0\.0\.1:(\d+)/")


def example_environ(extra: dict[str, str]) -> dict[str, str]:
    """
    A clean environment for the example, able to import metagateway from
    this checkout whether or not it is installed.
    """
    env = child_environ(extra)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = ROOT.path + (os.pathsep + path if path else "")
    return env


async def start_example(
    case: TestCase, env: dict[str, str], *arguments: str
) -> tuple[ChildProcess, str]:
    """
    Start the example on a free loopback port and wait until it listens.

    :return: the child and its base URL.
    """
    child = spawn(
        case,
        [sys.executable, EXAMPLE.path, "--port", "0", *arguments],
        example_environ(env),
        ChildProcess(LISTENING),
        cwd=ROOT.path,
    )
    port = await child.wait_for_port()
    return child, "http://127.0.0.1:%d" % (port,)


class EmbeddedExampleTests(TestCase):
    """
    The example host program: its own page at ``/``, the gateway at ``/api``.
    """

    timeout = 60

    def setUp(self) -> Any:
        self.accounts, self.upstream, base = serve_world(self)
        self.upstream_url = base + "/svc"
        self.http = http_client(self)
        return ensureDeferred(self._start())

    async def _start(self) -> None:
        self.child, self.base = await start_example(
            self,
            {"GATEWAY_JWT_SECRET": SECRET, "BUILD_SERVICE_URL": self.upstream_url},
            "--accounts-dir",
            self.accounts.path,
        )

    def test_login_then_proxy_under_api(self) -> Deferred[None]:
        """
        A login at ``/api/auth/login`` gives a token that reaches
        ``/api/build``; the upstream sees the path without ``/api/build``,
        the query byte for byte, and the gateway's headers.
        """

        async def go() -> None:
            r = await self.http.post(
                self.base + "/api/auth/login",
                json.dumps({"username": USER, "password": PASSWORD}).encode(),
            )
            self.assertEqual(r.code, 200)
            token = json.loads(await r.content())["token"]
            r = await self.http.get(
                self.base + "/api/build/a/b?x=1&y=%20",
                headers={b"Authorization": b"Bearer " + token.encode("ascii")},
            )
            self.assertEqual(r.code, 200)
            self.assertEqual(await r.content(), b"hello from build")
            _, uri, headers, _ = self.upstream.requests[-1]
            self.assertEqual(uri, b"/svc/a/b?x=1&y=%20")
            self.assertEqual(headers.getRawHeaders(b"x-gateway-user"), [USER.encode()])
            self.assertIsNone(headers.getRawHeaders(b"authorization"))

        return ensureDeferred(go())

    def test_large_upload_under_api(self) -> Deferred[None]:
        """
        A body of several megabytes goes through ``/api/build`` to the
        upstream whole and unchanged; one over the login limit is refused.
        """

        async def go() -> None:
            token = await self._login()
            body = bytes(range(256)) * (4 * 4096)
            r = await self.http.put(
                self.base + "/api/build/upload",
                body,
                headers={b"Authorization": b"Bearer " + token.encode("ascii")},
            )
            self.assertEqual(r.code, 200)
            await r.content()
            method, uri, _, received = self.upstream.requests[-1]
            self.assertEqual((method, uri), (b"PUT", b"/svc/upload"))
            self.assertEqual(len(received), len(body))
            self.assertEqual(received, body)
            r = await self.http.post(
                self.base + "/api/auth/login", b"{" + b" " * 100_000 + b"}"
            )
            self.assertEqual(r.code, 413)
            self.assertEqual(json.loads(await r.content())["code"], "PAYLOAD_TOO_LARGE")

        return ensureDeferred(go())

    async def _login(self) -> str:
        r = await self.http.post(
            self.base + "/api/auth/login",
            json.dumps({"username": USER, "password": PASSWORD}).encode(),
        )
        self.assertEqual(r.code, 200)
        return str(json.loads(await r.content())["token"])

    def test_host_page_and_gateway_404(self) -> Deferred[None]:
        """
        ``/`` is the host's page; ``/api/nope`` is the gateway's JSON 404;
        a gateway path without ``/api`` is the host's own 404.
        """

        async def go() -> None:
            r = await self.http.get(self.base + "/")
            self.assertEqual(r.code, 200)
            self.assertIn(b"host program", await r.content())
            r = await self.http.get(self.base + "/api/nope")
            self.assertEqual(r.code, 404)
            self.assertEqual(
                r.headers.getRawHeaders(b"content-type"), [b"application/json"]
            )
            self.assertEqual(json.loads(await r.content())["code"], "NOT_FOUND")
            r = await self.http.get(self.base + "/api/health")
            self.assertEqual(json.loads(await r.content())["status"], "ok")
            r = await self.http.get(self.base + "/build/x")
            self.assertEqual(r.code, 404)
            await r.content()
            self.assertNotEqual(
                r.headers.getRawHeaders(b"content-type"), [b"application/json"]
            )
            self.assertEqual(self.upstream.requests, [])

        return ensureDeferred(go())

    def test_stops_on_term(self) -> Deferred[None]:
        """
        ``SIGTERM`` stops the program cleanly: exit status 0.
        """

        async def go() -> None:
            self.child.signal("TERM")
            code = await self.child.ended
            self.assertEqual(code, 0, self.child.output.decode("utf-8", "replace"))

        return ensureDeferred(go())


class EmbeddedExampleRefusesTests(TestCase):
    """
    The example refuses to start without what the gateway needs.
    """

    timeout = 60

    def test_missing_secret(self) -> Deferred[None]:
        """
        Without ``GATEWAY_JWT_SECRET`` it writes one line naming it and
        exits 1, without a traceback.
        """

        async def go() -> None:
            child = spawn(
                self,
                [sys.executable, EXAMPLE.path, "--port", "0", "--accounts-dir", "x"],
                example_environ({}),
                ChildProcess(LISTENING),
                cwd=ROOT.path,
            )
            code = await child.ended
            self.assertEqual(code, 1)
            self.assertEqual(child.stderr, b"embedded: GATEWAY_JWT_SECRET is not set\n")

        return ensureDeferred(go())
