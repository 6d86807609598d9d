"""
Integration tests against a real S3-compatible server: ``moto_server`` on
loopback with signature checking on (see :mod:`tests.s3server`).

The R2 store is exercised directly, through the ``metagateway-admin``
script, and through the real ``twistd metagateway`` daemon. Real sockets
are used here only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any, Mapping

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.trial.unittest import SkipTest, TestCase

from metagateway.auth.passwords import (
    check_password,
    make_record,
    new_salt,
    sha256_hash,
)
from metagateway.config import R2Settings
from metagateway.credentials.interfaces import StoreUnavailable, UnknownAccount
from metagateway.credentials.r2 import R2CredentialStore
from tests.s3server import MotoServer, moto_available

#: The store's per-call timeout in these tests.
TIMEOUT = 5.0

SECRET = "integration-jwt-secret-0123456789abcdef"


def _http_client(case: TestCase) -> Any:
    """
    A treq client with its own pool, closed in cleanup.
    """
    from treq.client import HTTPClient

    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=True)
    case.addCleanup(pool.closeCachedConnections)
    return HTTPClient(Agent(reactor, pool=pool))


def _start_moto(case: TestCase) -> MotoServer:
    """
    A moto server for one test, stopped in its cleanup.
    """
    reason = moto_available()
    if reason is not None:
        raise SkipTest(reason)
    server = MotoServer()
    case.addCleanup(server.stop)
    server.start()
    return server


def run_admin(
    environ: Mapping[str, str], *argv: str, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    """
    Run ``metagateway-admin`` as a child with ``environ`` (R2 settings).
    """
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("R2_", "METAGATEWAY_"))
    }
    env.update(environ)
    env["PYTHONPATH"] = root
    return subprocess.run(  # noqa: S603
        [sys.executable, "-c", "from metagateway.admin import main; main()", *argv],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=60,
    )


class R2StoreIntegrationTests(TestCase):
    """
    :class:`R2CredentialStore` against moto.
    """

    timeout = 120

    def setUp(self) -> None:
        self.server = _start_moto(self)
        self.client = _http_client(self)
        self.store = self.make_store()

    def make_store(self, **overrides: str) -> R2CredentialStore:
        environ = self.server.environ()
        environ.update(overrides)
        return R2CredentialStore(
            R2Settings.from_environ(environ), self.client, reactor, timeout=TIMEOUT
        )

    def test_store_and_lookup(self) -> Deferred[None]:
        """
        A stored record is read back and its password checks.
        """

        async def go() -> None:
            record = make_record("alice", "wonderland", role="ops")
            await self.store.store(record)
            found = await self.store.lookup("alice")
            self.assertEqual(found, record)
            self.assertTrue(check_password(found, "wonderland"))
            self.assertEqual(await self.store.usernames(), ["alice"])

        return ensureDeferred(go())

    def test_unknown_user(self) -> Deferred[None]:
        """
        A missing record is :class:`UnknownAccount`; removing it too.
        """

        async def go() -> None:
            with self.assertRaises(UnknownAccount):
                await self.store.lookup("nobody")
            with self.assertRaises(UnknownAccount):
                await self.store.remove("nobody")

        return ensureDeferred(go())

    def test_remove(self) -> Deferred[None]:
        """
        A removed record is gone.
        """

        async def go() -> None:
            await self.store.store(make_record("alice", "pw"))
            await self.store.remove("alice")
            with self.assertRaises(UnknownAccount):
                await self.store.lookup("alice")

        return ensureDeferred(go())

    def test_wrong_secret_key(self) -> Deferred[None]:
        """
        moto refuses a wrong secret key: :class:`StoreUnavailable`, never
        :class:`UnknownAccount`, and the secret is in no message.
        """

        async def go() -> None:
            await self.store.store(make_record("alice", "pw"))
            wrong = self.make_store(R2_SECRET_ACCESS_KEY="not-the-secret-key")
            with self.assertRaises(StoreUnavailable) as caught:
                await wrong.lookup("alice")
            self.assertIn("403", str(caught.exception))
            self.assertNotIn("not-the-secret-key", str(caught.exception))
            self.assertNotIn(self.server.secret_access_key, str(caught.exception))

        return ensureDeferred(go())

    def test_server_stopped_then_restarted(self) -> Deferred[None]:
        """
        With the server stopped, calls fail with :class:`StoreUnavailable`
        within the timeout; once it is back, the same store works again.
        """

        async def go() -> None:
            await self.store.store(make_record("alice", "pw"))
            self.server.stop()
            started = reactor.seconds()
            with self.assertRaises(StoreUnavailable):
                await self.store.lookup("alice")
            self.assertLess(reactor.seconds() - started, TIMEOUT + 1)
            self.server.restart()
            await self.store.store(make_record("alice", "again"))
            found = await self.store.lookup("alice")
            self.assertTrue(check_password(found, "again"))

        return ensureDeferred(go())

    def test_unusual_keys(self) -> Deferred[None]:
        """
        Names with spaces, non-ASCII and punctuation round-trip, stored
        under exactly the key another S3 client sees.
        """

        async def go() -> None:
            names = ["alice smith", "zoë ünïcode", "日本語ユーザー", "a+b=c&d!"]
            for name in names:
                await self.store.store(make_record(name, "pw " + name))
            for name in names:
                found = await self.store.lookup(name)
                self.assertEqual(found.username, name)
                self.assertTrue(check_password(found, "pw " + name))
            self.assertEqual(await self.store.usernames(), sorted(names))
            listing = self.server.s3_client().list_objects_v2(  # type: ignore[attr-defined]
                Bucket=self.server.bucket
            )
            self.assertEqual(
                sorted(item["Key"] for item in listing["Contents"]),
                sorted("auth/admins/%s.json" % (name,) for name in names),
            )

        return ensureDeferred(go())

    def test_record_written_by_another_client(self) -> Deferred[None]:
        """
        A record in the original format, written by another S3 client,
        is read and its password checks.
        """

        async def go() -> None:
            salt = new_salt()
            document = {
                "username": "legacy",
                "salt": salt,
                "hash": sha256_hash(salt, "old pw"),
            }
            self.server.s3_client().put_object(  # type: ignore[attr-defined]
                Bucket=self.server.bucket,
                Key="auth/admins/legacy.json",
                Body=json.dumps(document).encode(),
            )
            found = await self.store.lookup("legacy")
            self.assertEqual(found.role, "admin")
            self.assertTrue(check_password(found, "old pw"))

        return ensureDeferred(go())

    def test_unreadable_record(self) -> Deferred[None]:
        """
        A record that is not JSON is :class:`StoreUnavailable`.
        """

        async def go() -> None:
            self.server.s3_client().put_object(  # type: ignore[attr-defined]
                Bucket=self.server.bucket, Key="auth/admins/broken.json", Body=b"{"
            )
            with self.assertRaises(StoreUnavailable):
                await self.store.lookup("broken")

        return ensureDeferred(go())

    def test_admin_cli(self) -> Deferred[None]:
        """
        ``metagateway-admin`` writes a record to the bucket that the store
        reads and whose password checks; it lists and removes it too.
        """

        async def go() -> None:
            done = run_admin(
                self.server.environ(),
                "add-user",
                "cli user",
                "--role",
                "ops",
                "--password-stdin",
                stdin=b"cli password\n",
            )
            self.assertEqual(done.returncode, 0, done.stderr)
            found = await self.store.lookup("cli user")
            self.assertEqual(found.role, "ops")
            self.assertTrue(check_password(found, "cli password"))
            self.assertNotIn(found.hash.encode(), done.stdout + done.stderr)
            self.assertNotIn(found.salt.encode(), done.stdout + done.stderr)
            done = run_admin(self.server.environ(), "list-users")
            self.assertEqual(done.stdout, b"cli user\n")
            done = run_admin(
                self.server.environ(secret_access_key="wrong"), "list-users"
            )
            self.assertEqual(done.returncode, 1)
            self.assertIn(b"could not answer", done.stderr)
            self.assertNotIn(b"Traceback", done.stderr)
            done = run_admin(self.server.environ(), "remove-user", "cli user")
            self.assertEqual(done.returncode, 0, done.stderr)
            with self.assertRaises(UnknownAccount):
                await self.store.lookup("cli user")

        return ensureDeferred(go())


def _daemon_available() -> None:
    """
    :raises SkipTest: if the daemon cannot be imported yet.
    """
    try:
        import metagateway.daemon.tap  # noqa: F401
        import tests.daemon  # noqa: F401
    except ImportError as e:
        raise SkipTest("the metagateway daemon cannot be imported: %s" % (e,)) from e


class R2DaemonTests(TestCase):
    """
    Logins through the real ``twistd metagateway`` daemon, its credential
    store in moto.
    """

    timeout = 180

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        _daemon_available()
        self.server = _start_moto(self)
        self.client = _http_client(self)
        self.store = R2CredentialStore(
            R2Settings.from_environ(self.server.environ()),
            self.client,
            reactor,
            timeout=TIMEOUT,
        )
        return ensureDeferred(self.store.store(make_record("operator", "op pass")))

    async def start(self, **overrides: str) -> str:
        """
        Start a daemon reading from moto; return its base URL.
        """
        _, base = await self.start_child(**overrides)
        return base

    async def start_child(self, **overrides: str) -> tuple[Any, str]:
        """
        Start a daemon reading from moto; return the child (its output
        collected) and its base URL.
        """
        from tests.daemon import start_daemon

        environ = self.server.environ()
        environ.update(overrides)
        environ["GATEWAY_JWT_SECRET"] = SECRET
        return await start_daemon(self, environ)

    async def login(self, base: str, username: str, password: str) -> tuple[int, Any]:
        response = await self.client.post(
            base + "/auth/login",
            json.dumps({"username": username, "password": password}).encode(),
            headers={b"Content-Type": [b"application/json"]},
        )
        return response.code, json.loads(await response.content())

    def test_login(self) -> Deferred[None]:
        """
        A record in the bucket logs in (200, a token); a wrong password is
        401 INVALID_CREDENTIALS, as is an unknown user.
        """

        async def go() -> None:
            base = await self.start()
            status, body = await self.login(base, "operator", "op pass")
            self.assertEqual(status, 200, body)
            self.assertTrue(body["token"])
            self.assertEqual(body["user"], {"username": "operator", "role": "admin"})
            status, body = await self.login(base, "operator", "wrong")
            self.assertEqual((status, body["code"]), (401, "INVALID_CREDENTIALS"))
            status, body = await self.login(base, "nobody", "wrong")
            self.assertEqual((status, body["code"]), (401, "INVALID_CREDENTIALS"))

        return ensureDeferred(go())

    def test_wrong_secret_key(self) -> Deferred[None]:
        """
        A daemon with a wrong secret key answers 503
        CREDENTIAL_STORE_UNAVAILABLE, with no token and no secret.
        """

        async def go() -> None:
            base = await self.start(R2_SECRET_ACCESS_KEY="wrong-secret-key")
            status, body = await self.login(base, "operator", "op pass")
            self.assertEqual(status, 503, body)
            self.assertEqual(body["code"], "CREDENTIAL_STORE_UNAVAILABLE")
            self.assertNotIn("token", body)
            self.assertNotIn("wrong-secret-key", json.dumps(body))

        return ensureDeferred(go())

    def test_missing_bucket(self) -> Deferred[None]:
        """
        A daemon whose ``R2_BUCKET`` names a bucket moto does not have
        (``404 NoSuchBucket``) answers a login ``503
        CREDENTIAL_STORE_UNAVAILABLE`` (route ``AUTH``), not ``401``: a
        misconfigured store must not look like wrong passwords. Its output
        names the bucket and never the secret key.
        """

        async def go() -> None:
            child, base = await self.start_child(R2_BUCKET="no-such-bucket-here")
            for username in ("operator", "nobody"):
                status, body = await self.login(base, username, "op pass")
                self.assertEqual(status, 503, body)
                self.assertEqual(body["code"], "CREDENTIAL_STORE_UNAVAILABLE")
                self.assertEqual(body["route"], "AUTH")
                self.assertNotIn("token", body)
            secret = self.server.secret_access_key.encode("utf-8")
            self.assertTrue(secret)
            self.assertIn(b"no-such-bucket-here", child.output)
            self.assertIn(b"NoSuchBucket", child.output)
            self.assertNotIn(secret, child.output)
            self.assertNotIn(b"Traceback", child.output)

        return ensureDeferred(go())

    def test_store_stopped_then_restarted(self) -> Deferred[None]:
        """
        With moto stopped a login is 503 within the timeout while
        ``/health`` stays 200; once moto is back, logins work again.
        """

        async def go() -> None:
            base = await self.start()
            self.server.stop()
            started = time.monotonic()
            status, body = await self.login(base, "operator", "op pass")
            self.assertEqual(status, 503, body)
            self.assertEqual(body["code"], "CREDENTIAL_STORE_UNAVAILABLE")
            self.assertLess(time.monotonic() - started, TIMEOUT + 2)
            health = await self.client.get(base + "/health")
            self.assertEqual(health.code, 200)
            self.assertEqual(json.loads(await health.content())["status"], "ok")
            self.server.restart()
            await self.store.store(make_record("operator", "op pass"))
            status, body = await self.login(base, "operator", "op pass")
            self.assertEqual(status, 200, body)

        return ensureDeferred(go())

    def test_admin_cli_record_logs_in(self) -> Deferred[None]:
        """
        A record written by ``metagateway-admin`` logs in through the
        daemon.
        """

        async def go() -> None:
            done = run_admin(
                self.server.environ(),
                "add-user",
                "zoë admin",
                "--password-stdin",
                stdin="p\u00e4ss word\n".encode(),
            )
            self.assertEqual(done.returncode, 0, done.stderr)
            base = await self.start()
            status, body = await self.login(base, "zoë admin", "p\u00e4ss word")
            self.assertEqual(status, 200, body)
            self.assertEqual(body["user"]["username"], "zoë admin")

        return ensureDeferred(go())
