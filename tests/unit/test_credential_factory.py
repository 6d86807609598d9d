"""
Tests for :mod:`metagateway.credentials.factory`, the one place a
credential store is chosen and built.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

import metagateway
from metagateway.config import (
    STORE_RETRIES,
    STORE_TIMEOUT,
    ConfigurationError,
    GatewayConfig,
    R2Settings,
)
from metagateway.credentials.cache import CachingCredentialStore
from metagateway.credentials.directory import DirectoryCredentialStore
from metagateway.credentials.factory import (
    check_accounts_dir,
    credential_store,
    writable_store,
)
from metagateway.credentials.interfaces import StoreUnavailable
from metagateway.credentials.r2 import R2CredentialStore
from metagateway.gateway import make_store

R2 = R2Settings("http://r2.test", "key-id", "secret-key")


class RecordingClient:
    """
    A stand-in treq client: every request is recorded and answered with
    ``answer()``.
    """

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.requests: list[tuple[str, str]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        """
        Record the request; answer it with ``answer()``.
        """
        self.requests.append((method, url))
        return self.answer()  # type: ignore[no-any-return]


class FactoryTests(SynchronousTestCase):
    """
    Which store is built, and with which settings.
    """

    def test_directory(self) -> None:
        """
        An accounts directory wins over R2 settings, and is not cached.
        """
        root = self.mktemp()
        store = credential_store(Clock(), root, R2, None, 5.0, 2, 5.0)
        assert isinstance(store, DirectoryCredentialStore)
        self.assertEqual(store.root.path, os.path.abspath(root))

    def test_r2_cached(self) -> None:
        """
        R2 is cached when a cache time is given, not when it is 0.
        """
        client: Any = RecordingClient(Deferred)
        cached = credential_store(Clock(), None, R2, client, 5.0, 2, 5.0)
        self.assertIsInstance(cached, CachingCredentialStore)
        plain = credential_store(Clock(), None, R2, client, 5.0, 2, 0)
        self.assertIsInstance(plain, R2CredentialStore)

    def test_neither(self) -> None:
        """
        Neither a directory nor R2 settings: a configuration error.
        """
        self.assertRaises(
            ConfigurationError, writable_store, Clock(), None, None, None, 5.0, 2
        )

    def test_r2_without_client(self) -> None:
        """
        R2 needs an HTTP client.
        """
        self.assertRaises(
            ConfigurationError, writable_store, Clock(), None, R2, None, 5.0, 2
        )

    def test_timeout(self) -> None:
        """
        A call to R2 that gets no answer fails after the timeout given.
        """
        clock = Clock()
        client: Any = RecordingClient(Deferred)
        store = writable_store(clock, None, R2, client, 7.0, 2)
        d = store.lookup("someone")
        clock.advance(6.9)
        self.assertNoResult(d)
        clock.advance(0.2)
        self.failureResultOf(d, StoreUnavailable)

    def test_retries(self) -> None:
        """
        A refused connection is tried once plus the number of retries given.
        """
        for retries in (0, 3):
            clock = Clock()
            client: Any = RecordingClient(lambda: fail(ConnectionRefusedError()))
            store = writable_store(clock, None, R2, client, 60.0, retries)
            d = store.lookup("someone")
            clock.pump([1.0] * 30)
            self.failureResultOf(d, StoreUnavailable)
            self.assertEqual(len(client.requests), retries + 1)
        self.flushLoggedErrors()

    def test_defaults_match_r2(self) -> None:
        """
        The configuration's defaults are the R2 store's own.
        """
        parameters = inspect.signature(R2CredentialStore).parameters
        self.assertEqual(parameters["timeout"].default, STORE_TIMEOUT)
        self.assertEqual(parameters["retries"].default, STORE_RETRIES)
        config = GatewayConfig(jwt_secret="s" * 40, r2=R2)
        self.assertEqual((config.store_timeout, config.store_retries), (5.0, 2))

    def test_make_store_uses_config(self) -> None:
        """
        The daemon's :func:`make_store` passes the configured timeout on.
        """
        clock = Clock()
        client: Any = RecordingClient(Deferred)
        config = GatewayConfig(
            jwt_secret="s" * 40, r2=R2, store_timeout=2.5, store_cache_ttl=0
        )
        d = make_store(config, clock, client).lookup("someone")
        clock.advance(2.4)
        self.assertNoResult(d)
        clock.advance(0.2)
        self.failureResultOf(d, StoreUnavailable)


class CheckAccountsDirTests(SynchronousTestCase):
    """
    :func:`check_accounts_dir` refuses what cannot be an accounts
    directory, naming it.
    """

    def test_exists(self) -> None:
        """
        A readable directory passes.
        """
        path = self.mktemp()
        os.makedirs(path)
        check_accounts_dir(path)

    def test_missing(self) -> None:
        """
        A path that does not exist.
        """
        path = self.mktemp()
        e = self.assertRaises(ConfigurationError, check_accounts_dir, path)
        self.assertEqual(str(e), "accounts directory %s does not exist" % (path,))

    def test_file(self) -> None:
        """
        A path that is a file.
        """
        path = self.mktemp()
        with open(path, "w"):
            pass
        e = self.assertRaises(ConfigurationError, check_accounts_dir, path)
        self.assertEqual(str(e), "accounts directory %s is not a directory" % (path,))

    def test_unreadable(self) -> None:
        """
        A directory this process may not list.
        """
        if os.getuid() == 0:
            raise self.skipTest("root reads every directory")
        path = self.mktemp()
        os.makedirs(path)
        os.chmod(path, 0)
        self.addCleanup(os.chmod, path, 0o700)
        e = self.assertRaises(ConfigurationError, check_accounts_dir, path)
        self.assertIn("accounts directory %s cannot be read" % (path,), str(e))


class FootprintTests(SynchronousTestCase):
    """
    What a daemon serving an accounts directory does not load.
    """

    def test_no_botocore_without_r2(self) -> None:
        """
        Importing the daemon's plugin code loads neither botocore nor
        urllib3: the R2 store, their only user, is imported when R2 is
        configured (about 4 MiB of resident memory).
        """
        probe = (
            "import sys, metagateway.daemon.tap, metagateway.gateway; "
            "print(sorted(m for m in ('botocore', 'urllib3') if m in sys.modules))"
        )
        # The code under test, wherever this process imported it from.
        root = os.path.dirname(os.path.dirname(os.path.abspath(metagateway.__file__)))
        env = dict(os.environ, PYTHONPATH=root)
        result = subprocess.run(
            [sys.executable, "-c", probe],
            capture_output=True,
            check=True,
            timeout=60,
            env=env,
        )
        self.assertEqual(result.stdout.strip(), b"[]")
