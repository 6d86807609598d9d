"""
An in-memory credential store, for tests and for the demo account.
"""

from __future__ import annotations

from typing import Iterable

from zope.interface import implementer

from twisted.internet.defer import Deferred, fail, succeed

from metagateway.credentials.interfaces import (
    AccountRecord,
    IWritableCredentialStore,
    UnknownAccount,
)


@implementer(IWritableCredentialStore)
class MemoryCredentialStore:
    """
    Records held in a dictionary, answered synchronously.
    """

    def __init__(self, records: Iterable[AccountRecord] = ()) -> None:
        self._records = {record.username: record for record in records}

    def lookup(self, username: str) -> Deferred[AccountRecord]:
        record = self._records.get(username)
        if record is None:
            return fail(UnknownAccount(username))
        return succeed(record)

    def store(self, record: AccountRecord) -> Deferred[None]:
        self._records[record.username] = record
        return succeed(None)

    def remove(self, username: str) -> Deferred[None]:
        if self._records.pop(username, None) is None:
            return fail(UnknownAccount(username))
        return succeed(None)

    def usernames(self) -> Deferred[list[str]]:
        return succeed(sorted(self._records))
