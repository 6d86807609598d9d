"""
One contract, every writable credential store: memory, directory and R2
(over ``StubTreq`` against a fake S3 bucket). The stores that hold stored
bytes (directory and R2) also share the checks of unreadable records.
"""

from __future__ import annotations

import json
from typing import Any

from zope.interface.verify import verifyObject

from twisted.internet.task import Clock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from metagateway.auth.passwords import check_password, make_record
from metagateway.credentials.directory import DirectoryCredentialStore
from metagateway.credentials.interfaces import (
    IWritableCredentialStore,
    StoreUnavailable,
    UnknownAccount,
)
from metagateway.credentials.memory import MemoryCredentialStore
from metagateway.credentials.r2 import R2CredentialStore
from metagateway.testing import SETTINGS, FakeS3, GatewayHarness, StubTreq
from tests.helpers import assert_json_error

#: Stored bytes that are no account record, each failing the lookup with
#: :class:`StoreUnavailable` (:ref:`contract-credentials`: fail closed, never open).
UNREADABLE_RECORDS = (
    # Not JSON, or not UTF-8.
    b"",
    b"not json",
    b"{",
    b"\xff\xfe",
    b'{"salt": "\xff", "hash": "h"}',
    # Not what Python's parser accepts beyond JSON: NaN, Infinity, or a
    # number too large to be finite (an unusable scrypt parameter).
    b'{"salt": "s", "hash": "h", "scheme": "scrypt", "params": {"n": NaN}}',
    b'{"salt": "s", "hash": "h", "scheme": "scrypt", "params": {"n": Infinity}}',
    b'{"salt": "s", "hash": "h", "scheme": "scrypt", "params": {"n": 1e400}}',
    # Nested deeper than the parser goes (RecursionError), or deep and over
    # the size cap.
    b"[" * 1000,
    b"[" * 60000 + b"]" * 60000,
    b'{"a":' + b"[" * 60000,
    b'{"a":' + b"[" * 100000 + b"]" * 100000 + b"}",
    b'{"salt": "s", "hash": "h", "params": ' + b'{"a":' * 12000,
    # JSON, but not an object.
    b"[1, 2]",
    b'"alice"',
    b"null",
    b"42",
    # An object with fields missing or of the wrong type.
    b"{}",
    b'{"salt": "s"}',
    b'{"hash": "h"}',
    b'{"salt": 1, "hash": "h"}',
    b'{"salt": "s", "hash": ["h"]}',
    b'{"salt": null, "hash": "h"}',
    b'{"salt": "s", "hash": "h", "role": 7}',
    b'{"salt": "s", "hash": "h", "role": ""}',
    b'{"salt": "s", "hash": "h", "username": 5}',
    b'{"salt": "s", "hash": "h", "username": ""}',
    b'{"salt": "s", "hash": "h", "scheme": "md5"}',
    b'{"salt": "s", "hash": "h", "scheme": "scrypt", "params": [1, 2]}',
    # Strings that JSON allows but UTF-8 cannot hold (lone surrogates),
    # which would fail later, mid-login, with an unexpected error.
    b'{"salt": "\\ud800", "hash": "h"}',
    b'{"salt": "s", "hash": "\\udfff"}',
    b'{"salt": "s", "hash": "h", "role": "\\ud800"}',
    b'{"salt": "s", "hash": "h", "username": "\\udc80abcd"}',
)


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


class StoredBytesContractMixin(StoreContractMixin):
    """
    Tests every store holding records as bytes passes: a record that cannot
    be read fails closed. A subclass provides :meth:`plant`.
    """

    def plant(self, username: str, data: bytes) -> None:
        """
        Put ``data`` where ``username``'s record is read from, as another
        writer could.
        """
        raise NotImplementedError()

    def test_unreadable_records(self) -> None:
        """
        Every record in :data:`UNREADABLE_RECORDS` (not UTF-8, not JSON,
        nested too deeply, not an object, fields of the wrong type) is
        :class:`StoreUnavailable`, never :class:`UnknownAccount`, a record,
        or another exception.
        """
        for data in UNREADABLE_RECORDS:
            self.plant("alice", data)
            failure = self.failureResultOf(  # type: ignore[attr-defined]
                self.store.lookup("alice"), StoreUnavailable
            )
            self.assertNotIsInstance(failure.value, UnknownAccount)  # type: ignore[attr-defined]

    def test_readable_record_planted(self) -> None:
        """
        A record written by another writer, in the original format, with
        fields the gateway does not know, reads (the checks above are not
        refusing everything).
        """
        record = make_record("alice", "pw")
        document = json.loads(record.to_json())
        del document["role"]
        document["note"] = {"nested": [[["fine"]]], "n": 1.5}
        self.plant("alice", json.dumps(document).encode("utf-8"))
        found = self.result(self.store.lookup("alice"))
        self.assertEqual(found.role, "admin")  # type: ignore[attr-defined]
        self.assertTrue(check_password(found, "pw"))  # type: ignore[attr-defined]

    def test_unreadable_record_login(self) -> None:
        """
        Through the gateway, a login reading an unreadable record (deeply
        nested JSON among them) is ``503 CREDENTIAL_STORE_UNAVAILABLE``
        under the endpoint's route: not ``500``, not ``401``.
        """
        for data in (b"[" * 1000, b"[1, 2]", b'{"salt": 1, "hash": "h"}'):
            self.plant("alice", data)
            h = GatewayHarness(store=self.store)
            for path, route in (("/auth/login", "AUTH"), ("/core/auth/login", "CORE")):
                response, body = h.request(
                    self,  # type: ignore[arg-type]
                    "POST",
                    path,
                    data=json.dumps({"username": "alice", "password": "pw"}).encode(),
                )
                assert_json_error(
                    self,  # type: ignore[arg-type]
                    response,
                    body,
                    503,
                    "CREDENTIAL_STORE_UNAVAILABLE",
                    route,
                )


class MemoryStoreContractTests(StoreContractMixin, SynchronousTestCase):
    """
    The contract for :class:`MemoryCredentialStore`.
    """

    def make_store(self) -> MemoryCredentialStore:
        return MemoryCredentialStore()


class DirectoryStoreContractTests(StoredBytesContractMixin, SynchronousTestCase):
    """
    The contract for :class:`DirectoryCredentialStore`.
    """

    def make_store(self) -> DirectoryCredentialStore:
        self.root = FilePath(self.mktemp())
        self.root.makedirs()
        return DirectoryCredentialStore(self.root)

    def plant(self, username: str, data: bytes) -> None:
        path = self.root.preauthChild("auth/admins/%s.json" % (username,))
        path.parent().makedirs(ignoreExistingDirectory=True)
        path.setContent(data)


class R2StoreContractTests(StoredBytesContractMixin, SynchronousTestCase):
    """
    The contract for :class:`R2CredentialStore` over ``StubTreq``.
    """

    def make_store(self) -> R2CredentialStore:
        clock = Clock()
        clock.advance(1_780_000_000)
        self.s3 = FakeS3(clock)
        return R2CredentialStore(SETTINGS, StubTreq(self.s3), clock)  # type: ignore[arg-type]

    def plant(self, username: str, data: bytes) -> None:
        self.s3.objects["auth/admins/%s.json" % (username,)] = data
