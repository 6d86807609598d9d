"""
Security end to end: the real ``twistd metagateway`` daemon on loopback
holds a brute force to its limits, accepts tokens of a rotated secret after
a restart, and refuses logged-out tokens.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from metagateway.auth.passwords import make_record
from metagateway.credentials.directory import DirectoryCredentialStore
from metagateway.testing import SECRET, RecordingUpstream
from tests.daemon import ChildProcess, http_client, start_daemon

USER, PASSWORD = "operator", "s3cret-pass"
SCRYPT_USER = "scrypt-operator"
OLD_SECRET = "last-months-secret-at-least-32-bytes-long"


class DaemonSecurityTests(TestCase):
    """
    The daemon's login throttling, key rotation and revocation.
    """

    timeout = 60

    def setUp(self) -> None:
        self.accounts = FilePath(self.mktemp())
        store = DirectoryCredentialStore(self.accounts)
        store.store(make_record(USER, PASSWORD, "admin"))
        store.store(make_record(SCRYPT_USER, PASSWORD, "admin", scheme="scrypt"))
        self.upstream = RecordingUpstream(b"hello from build")
        port = reactor.listenTCP(0, Site(self.upstream), interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(port.stopListening)
        self.upstream_url = "http://127.0.0.1:%d/svc" % (port.getHost().port,)  # type: ignore[attr-defined]
        self.http = http_client(self)

    async def start(self, secret: str = SECRET, *options: str, **env: str) -> str:
        """
        Start a daemon on the test accounts and return its base URL.
        """
        environ = {"GATEWAY_JWT_SECRET": secret, "BUILD_SERVICE_URL": self.upstream_url}
        environ.update(env)
        self.child, base = await start_daemon(
            self, environ, "--accounts-dir", self.accounts.path, *options
        )
        return base

    async def stop(self, child: ChildProcess) -> None:
        child.signal("TERM")
        await child.ended

    async def login(
        self, base: str, username: str = USER, password: str = PASSWORD
    ) -> Any:
        return await self.http.post(
            base + "/auth/login",
            json.dumps({"username": username, "password": password}).encode(),
        )

    async def token(self, base: str) -> str:
        response = await self.login(base)
        self.assertEqual(response.code, 200)
        return str(json.loads(await response.content())["token"])

    async def get(self, url: str, token: str) -> Any:
        response = await self.http.get(
            url, headers={"Authorization": "Bearer " + token}
        )
        await response.content()
        return response

    def test_brute_force_held(self) -> Deferred[None]:
        """
        A password-guessing loop gets 5 answers of ``401``, then only
        ``429 TOO_MANY_ATTEMPTS`` with ``Retry-After`` (the right password
        included); after waiting that long the right password works.
        """

        async def go() -> None:
            base = await self.start(SECRET, "--login-window", "2")
            codes = []
            waits = []
            for i in range(12):
                response = await self.login(base, password="guess-%d" % (i,))
                body = json.loads(await response.content())
                codes.append(response.code)
                if response.code == 429:
                    self.assertEqual(body["code"], "TOO_MANY_ATTEMPTS")
                    [value] = response.headers.getRawHeaders(b"retry-after")
                    waits.append(int(value))
            self.assertEqual(codes, [401] * 5 + [429] * 7)
            self.assertTrue(all(1 <= w <= 2 for w in waits), waits)
            response = await self.login(base)
            await response.content()
            self.assertEqual(response.code, 429)
            [value] = response.headers.getRawHeaders(b"retry-after")
            await deferLater(reactor, int(value), lambda: None)
            response = await self.login(base)
            body = json.loads(await response.content())
            self.assertEqual(response.code, 200, body)
            self.assertEqual(body["user"], {"username": USER, "role": "admin"})
            # The success reset the count: wrong guesses are 401 again.
            response = await self.login(base, password="guess-again")
            await response.content()
            self.assertEqual(response.code, 401)

        return ensureDeferred(go())

    def test_unknown_user_throttled_alike(self) -> Deferred[None]:
        """
        Guessing at a username that does not exist gets the same answers
        as guessing at one that does.
        """

        async def go() -> None:
            base = await self.start(SECRET, "--login-failures-per-user", "2")
            for name in (USER, "nobody-at-all"):
                codes = []
                for _ in range(4):
                    response = await self.login(base, name, "wrong")
                    await response.content()
                    codes.append(response.code)
                self.assertEqual(codes, [401, 401, 429, 429])

        return ensureDeferred(go())

    def test_scrypt_record(self) -> Deferred[None]:
        """
        An scrypt record (default parameters) logs in through the daemon.
        """

        async def go() -> None:
            base = await self.start()
            response = await self.login(base, SCRYPT_USER)
            self.assertEqual(response.code, 200, await response.content())
            response = await self.login(base, SCRYPT_USER, "wrong")
            await response.content()
            self.assertEqual(response.code, 401)

        return ensureDeferred(go())

    def test_scrypt_check_blocks_nothing(self) -> Deferred[None]:
        """
        While a slow scrypt password is being checked, the daemon keeps
        answering other requests: the check runs off the reactor thread.
        """
        slow = {"n": 2**16, "r": 8, "p": 4, "dklen": 32}
        DirectoryCredentialStore(self.accounts).store(
            make_record("slow-user", PASSWORD, "admin", scheme="scrypt", params=slow)
        )

        async def go() -> None:
            base = await self.start()
            pending = ensureDeferred(self.login(base, "slow-user"))
            answered = 0
            while not pending.called:
                response = await self.http.get(base + "/health")
                await response.content()
                self.assertEqual(response.code, 200)
                answered += 1
            response = await pending
            self.assertEqual(response.code, 200, await response.content())
            # On the reactor thread, the check would hold up every /health
            # sent after the login arrived: one or two would get through.
            self.assertGreater(answered, 10)

        return ensureDeferred(go())

    def test_rotation_across_restart(self) -> Deferred[None]:
        """
        A token issued before a restart with a new secret is still accepted
        when the old secret is in ``GATEWAY_JWT_PREVIOUS_SECRETS``, and
        refused once it is dropped.
        """

        async def go() -> None:
            base = await self.start(OLD_SECRET)
            token = await self.token(base)
            await self.stop(self.child)

            base = await self.start(SECRET, GATEWAY_JWT_PREVIOUS_SECRETS=OLD_SECRET)
            response = await self.get(base + "/core/session", token)
            self.assertEqual(response.code, 200)
            response = await self.get(base + "/build/x", token)
            self.assertEqual(response.code, 200)
            await self.stop(self.child)

            base = await self.start(SECRET)
            response = await self.get(base + "/core/session", token)
            self.assertEqual(response.code, 403)
            response = await self.get(base + "/build/x", token)
            self.assertEqual(response.code, 403)

        return ensureDeferred(go())

    def test_logout_revokes(self) -> Deferred[None]:
        """
        After ``/core/logout`` the token is refused by ``/core/session``
        and ``/build``, and never reaches the upstream.
        """

        async def go() -> None:
            base = await self.start()
            token = await self.token(base)
            response = await self.get(base + "/build/before", token)
            self.assertEqual(response.code, 200)
            response = await self.http.post(
                base + "/core/logout", headers={"Authorization": "Bearer " + token}
            )
            self.assertEqual(json.loads(await response.content()), {"success": True})
            response = await self.get(base + "/core/session", token)
            self.assertEqual(response.code, 403)
            response = await self.get(base + "/build/after", token)
            self.assertEqual(response.code, 403)
            uris = [uri for _, uri, _, _ in self.upstream.requests]
            self.assertEqual(uris, [b"/svc/before"])

        return ensureDeferred(go())

    def test_session_needs_core_token(self) -> Deferred[None]:
        """
        ``/core/session`` and its refresh take only a token that may reach
        ``CORE``: a guest token for ``BUILD`` gets ``403 INVALID_SESSION``
        and ``403 REFRESH_FAILED`` (never a ``CORE`` token), an ``AUTH``
        login token a session. ``/core/logout`` revokes the ``BUILD`` token.
        """

        async def go() -> None:
            base = await self.start()
            response = await self.http.post(base + "/auth/guest", b'{"route":"build"}')
            build_token = json.loads(await response.content())["token"]
            response = await self.get(base + "/build/before", build_token)
            self.assertEqual(response.code, 200)
            response = await self.http.get(
                base + "/core/session",
                headers={"Authorization": "Bearer " + build_token},
            )
            body = json.loads(await response.content())
            self.assertEqual(
                (response.code, body["code"], body["route"]),
                (403, "INVALID_SESSION", "CORE"),
            )
            response = await self.http.post(
                base + "/core/session/refresh",
                headers={"Authorization": "Bearer " + build_token},
            )
            body = json.loads(await response.content())
            self.assertEqual(
                (response.code, body["code"], body["route"]),
                (403, "REFRESH_FAILED", "CORE"),
            )
            self.assertNotIn("token", body)
            response = await self.get(base + "/core/session", await self.token(base))
            self.assertEqual(response.code, 200)
            response = await self.http.post(
                base + "/core/logout",
                headers={"Authorization": "Bearer " + build_token},
            )
            self.assertEqual(json.loads(await response.content()), {"success": True})
            response = await self.get(base + "/build/after", build_token)
            self.assertEqual(response.code, 403)
            uris = [uri for _, uri, _, _ in self.upstream.requests]
            self.assertEqual(uris, [b"/svc/before"])

        return ensureDeferred(go())

    def admin(self, *argv: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
        """
        Run ``metagateway-admin`` on the test accounts, as a script would:
        standard input a pipe holding ``stdin``.
        """
        return subprocess.run(  # noqa: S603
            [
                sys.executable,
                "-c",
                "from metagateway.admin import main; main()",
                "--accounts-dir",
                self.accounts.path,
                *argv,
            ],
            input=stdin,
            capture_output=True,
            timeout=60,
        )

    def test_admin_password_stdin(self) -> Deferred[None]:
        """
        Accounts made from a script with ``--password-stdin`` (``add-user``,
        then ``set-password``) log in to the daemon with the password piped
        in, its newline stripped; without the option the script is told to
        add it and nothing changes.
        """

        async def go() -> None:
            done = self.admin("add-user", "scripted", "--password-stdin", stdin=b"p1\n")
            self.assertEqual(done.returncode, 0, done.stderr)
            done = self.admin("set-password", "scripted", stdin=b"p2\n")
            self.assertEqual(done.returncode, 2)
            self.assertIn(b"--password-stdin", done.stderr)
            base = await self.start()
            response = await self.login(base, "scripted", "p1")
            await response.content()
            self.assertEqual(response.code, 200)
            done = self.admin(
                "set-password", "scripted", "--password-stdin", stdin=b"p2\n"
            )
            self.assertEqual(done.returncode, 0, done.stderr)
            response = await self.login(base, "scripted", "p1")
            await response.content()
            self.assertEqual(response.code, 401)
            response = await self.login(base, "scripted", "p2")
            await response.content()
            self.assertEqual(response.code, 200)

        return ensureDeferred(go())

    def test_short_secret_warns(self) -> Deferred[None]:
        """
        A secret under 32 bytes starts the daemon with a warning on stderr
        that does not show the secret.
        """

        async def go() -> None:
            base = await self.start("tiny-secret")
            response = await self.http.get(base + "/health")
            await response.content()
            self.assertEqual(response.code, 200)
            self.assertIn(b"shorter than 32 bytes", self.child.stderr)
            self.assertNotIn(b"tiny-secret", self.child.output)

        return ensureDeferred(go())
