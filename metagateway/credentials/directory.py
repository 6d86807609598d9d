"""
The local-directory credential store: a directory laid out like the bucket.

``{root}/auth/admins/{username}.json`` holds each record.
"""

from __future__ import annotations

import os

from zope.interface import implementer

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.filepath import FilePath

from metagateway.credentials.interfaces import (
    AccountRecord,
    IWritableCredentialStore,
    StoreUnavailable,
    UnknownAccount,
    is_valid_username,
    record_key,
)

#: Largest record file read; anything bigger is unreadable.
MAX_RECORD_BYTES = 64 * 1024


@implementer(IWritableCredentialStore)
class DirectoryCredentialStore:
    """
    Records read from (and written to) files under a root directory.

    Reads are small local file reads done synchronously; a missing root or
    an unreadable file is :class:`StoreUnavailable`.

    :param root: the accounts directory.
    """

    def __init__(self, root: FilePath[str]) -> None:
        self.root = root

    def _path(self, username: str) -> FilePath[str]:
        return self.root.preauthChild(record_key(username))

    def lookup(self, username: str) -> Deferred[AccountRecord]:
        if not is_valid_username(username):
            return fail(UnknownAccount(username))
        if not self.root.isdir():
            return fail(StoreUnavailable("accounts directory is missing"))
        path = self._path(username)
        try:
            with path.open("r") as f:
                data = f.read(MAX_RECORD_BYTES + 1)
        except FileNotFoundError:
            return fail(UnknownAccount(username))
        except OSError as e:
            return fail(StoreUnavailable("cannot read record: %s" % (e.strerror,)))
        if len(data) > MAX_RECORD_BYTES:
            return fail(StoreUnavailable("record is too large"))
        try:
            return succeed(AccountRecord.from_json(data, username))
        except StoreUnavailable as e:
            return fail(e)

    def store(self, record: AccountRecord) -> Deferred[None]:
        if not is_valid_username(record.username):
            return fail(ValueError("invalid username"))
        path = self._path(record.username)
        try:
            path.parent().makedirs(ignoreExistingDirectory=True)
            temporary = path.temporarySibling(".tmp")
            with temporary.open("w") as f:
                f.write(record.to_json())
            os.chmod(temporary.path, 0o600)
            temporary.moveTo(path)
        except OSError as e:
            return fail(StoreUnavailable("cannot write record: %s" % (e.strerror,)))
        return succeed(None)

    def remove(self, username: str) -> Deferred[None]:
        if not is_valid_username(username):
            return fail(UnknownAccount(username))
        path = self._path(username)
        try:
            path.remove()
        except FileNotFoundError:
            return fail(UnknownAccount(username))
        except OSError as e:
            return fail(StoreUnavailable("cannot remove record: %s" % (e.strerror,)))
        return succeed(None)

    def usernames(self) -> Deferred[list[str]]:
        folder = self.root.preauthChild("auth/admins")
        if not folder.isdir():
            return succeed([])
        names = sorted(
            child.basename()[: -len(".json")]
            for child in folder.children()
            if child.basename().endswith(".json")
        )
        return succeed(names)
