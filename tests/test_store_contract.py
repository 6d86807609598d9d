"""
One contract, every writable credential store: memory, directory and R2
(over ``StubTreq`` against a fake S3 bucket).
"""

from __future__ import annotations

from typing import Any

from treq.testing import StubTreq
from zope.interface.verify import verifyObject

from twisted.internet.task import Clock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from metagateway.credentials.directory import DirectoryCredentialStore
from metagateway.credentials.interfaces import (
    IWritableCredentialStore,
    UnknownAccount,
)
from metagateway.credentials.memory import MemoryCredentialStore
from metagateway.credentials.r2 import R2CredentialStore
from metagateway.passwords import check_password, make_record
from tests.fakes3 import SETTINGS, FakeS3


class StoreContractMixin:
    """
    Tests every :class:`IWritableCredentialStore` passes. A subclass of
    :class:`SynchronousTestCase` provides :meth:`make_store`.
    """

    def make_store(self) -> Any:
        """
        A new, empty store.
        """
        raise NotImplementedError()

    def setUp(self) -> None:
        self.store = self.make_store()

    def result(self, d: Any) -> Any:
        return self.successResultOf(d)  # type: ignore[attr-defined]

    def test_interface(self) -> None:
        """
        The store provides :class:`IWritableCredentialStore`.
        """
        self.assertTrue(verifyObject(IWritableCredentialStore, self.store))  # type: ignore[attr-defined]

    def test_store_then_lookup(self) -> None:
        """
        A stored record is looked up equal to itself, password and all.
        """
        record = make_record("alice", "wonderland", role="ops")
        self.result(self.store.store(record))
        found = self.result(self.store.lookup("alice"))
        self.assertEqual(found, record)  # type: ignore[attr-defined]
        self.assertTrue(check_password(found, "wonderland"))  # type: ignore[attr-defined]
        self.assertFalse(check_password(found, "Wonderland"))  # type: ignore[attr-defined]

    def test_scrypt_record(self) -> None:
        """
        A scrypt record keeps its scheme and parameters.
        """
        record = make_record(
            "alice", "pw", scheme="scrypt", params={"n": 2, "r": 1, "p": 1, "dklen": 32}
        )
        self.result(self.store.store(record))
        found = self.result(self.store.lookup("alice"))
        self.assertEqual(found.scheme, "scrypt")  # type: ignore[attr-defined]
        self.assertTrue(check_password(found, "pw"))  # type: ignore[attr-defined]

    def test_unknown(self) -> None:
        """
        Looking up a name never stored is :class:`UnknownAccount`.
        """
        self.failureResultOf(self.store.lookup("nobody"), UnknownAccount)  # type: ignore[attr-defined]

    def test_replace(self) -> None:
        """
        Storing under an existing name replaces the record.
        """
        self.result(self.store.store(make_record("alice", "old")))
        new = make_record("alice", "new", role="viewer")
        self.result(self.store.store(new))
        found = self.result(self.store.lookup("alice"))
        self.assertEqual(found, new)  # type: ignore[attr-defined]
        self.assertTrue(check_password(found, "new"))  # type: ignore[attr-defined]

    def test_remove(self) -> None:
        """
        A removed record is unknown afterwards; removing it again is
        :class:`UnknownAccount`.
        """
        self.result(self.store.store(make_record("alice", "pw")))
        self.result(self.store.remove("alice"))
        self.failureResultOf(self.store.lookup("alice"), UnknownAccount)  # type: ignore[attr-defined]
        self.failureResultOf(self.store.remove("alice"), UnknownAccount)  # type: ignore[attr-defined]

    def test_usernames(self) -> None:
        """
        Stored names are listed sorted; removed ones are gone.
        """
        self.assertEqual(self.result(self.store.usernames()), [])  # type: ignore[attr-defined]
        for name in ("carol", "alice", "bob smith", "zoë ünïcode", "dave"):
            self.result(self.store.store(make_record(name, "pw")))
        self.result(self.store.remove("dave"))
        self.assertEqual(  # type: ignore[attr-defined]
            self.result(self.store.usernames()),
            ["alice", "bob smith", "carol", "zoë ünïcode"],
        )

    def test_unusual_names(self) -> None:
        """
        Names with spaces, non-ASCII and punctuation round-trip.
        """
        for name in ("alice smith", "zoë z", "日本語ユーザー", "a+b=c&d"):
            record = make_record(name, "pw")
            self.result(self.store.store(record))
            self.assertEqual(self.result(self.store.lookup(name)), record)  # type: ignore[attr-defined]

    def test_invalid_names_unknown(self) -> None:
        """
        A name that could escape its key is never found.
        """
        self.result(self.store.store(make_record("alice", "pw")))
        for name in ("../alice", "x/../alice", "ab"):
            self.failureResultOf(self.store.lookup(name), UnknownAccount)  # type: ignore[attr-defined]


class MemoryStoreContractTests(StoreContractMixin, SynchronousTestCase):
    """
    The contract for :class:`MemoryCredentialStore`.
    """

    def make_store(self) -> MemoryCredentialStore:
        return MemoryCredentialStore()


class DirectoryStoreContractTests(StoreContractMixin, SynchronousTestCase):
    """
    The contract for :class:`DirectoryCredentialStore`.
    """

    def make_store(self) -> DirectoryCredentialStore:
        root = FilePath(self.mktemp())
        root.makedirs()
        return DirectoryCredentialStore(root)


class R2StoreContractTests(StoreContractMixin, SynchronousTestCase):
    """
    The contract for :class:`R2CredentialStore` over ``StubTreq``.
    """

    def make_store(self) -> R2CredentialStore:
        clock = Clock()
        clock.advance(1_780_000_000)
        self.s3 = FakeS3(clock)
        return R2CredentialStore(SETTINGS, StubTreq(self.s3), clock)  # type: ignore[arg-type]
