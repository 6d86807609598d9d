"""
End-to-end tests: the real ``twistd metagateway`` daemon on loopback, in
front of real upstream servers.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from metagateway.credentials.directory import DirectoryCredentialStore
from metagateway.passwords import make_record
from tests.daemon import http_client, start_daemon
from tests.helpers import SECRET, RecordingUpstream

USER, PASSWORD = "operator", "s3cret-pass"


class DaemonTests(TestCase):
    """
    Login, token and proxied request through the real daemon.
    """

    timeout = 60

    def setUp(self) -> Any:
        self.accounts = FilePath(self.mktemp())
        DirectoryCredentialStore(self.accounts).store(
            make_record(USER, PASSWORD, "admin")
        )
        self.upstream = RecordingUpstream(b"hello from build")
        port = reactor.listenTCP(0, Site(self.upstream), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.upstream_url = "http://127.0.0.1:%d/svc" % (port.getHost().port,)
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
