"""
The one place a credential store is chosen and built: the accounts
directory if one is named, else R2.

The daemon (:func:`metagateway.gateway.make_store`) and
``metagateway-admin`` (:func:`metagateway.admin.accounts.open_store`) both build
their store here, so that the two always read the same records.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from treq.client import HTTPClient

from twisted.python.filepath import FilePath

from metagateway.config import ConfigurationError, R2Settings
from metagateway.credentials.cache import CachingCredentialStore
from metagateway.credentials.directory import DirectoryCredentialStore
from metagateway.credentials.interfaces import (
    ICredentialStore,
    IWritableCredentialStore,
)

#: The refusal when neither store is named.
NO_STORE = "no credential store: set accounts_dir or r2, or pass a store"


def check_accounts_dir(path: str) -> None:
    """
    Check that ``path`` is an accounts directory this process can read.

    :param path: the accounts directory.
    :raises ConfigurationError: naming ``path`` when it does not exist, is
        not a directory, or cannot be listed and searched.
    """
    if not os.path.exists(path):
        raise ConfigurationError("accounts directory %s does not exist" % (path,))
    if not os.path.isdir(path):
        raise ConfigurationError("accounts directory %s is not a directory" % (path,))
    try:
        os.listdir(path)
    except OSError as e:
        raise ConfigurationError(
            "accounts directory %s cannot be read: %s" % (path, e.strerror)
        ) from None
    if not os.access(path, os.R_OK | os.X_OK):
        raise ConfigurationError(
            "accounts directory %s cannot be read: Permission denied" % (path,)
        )


def writable_store(
    reactor: Any,
    accounts_dir: Optional[str],
    r2: Optional[R2Settings],
    client: Optional[HTTPClient],
    timeout: float,
    retries: int,
) -> IWritableCredentialStore:
    """
    The store named: the accounts directory if given, else R2.

    :param reactor: the clock R2's timeouts and signatures use.
    :param accounts_dir: the accounts directory, or ``None``.
    :param r2: the R2 settings, or ``None``.
    :param client: the treq client R2 is called with (unused for a
        directory).
    :param timeout: seconds each R2 call may take, retries included.
    :param retries: how many times a failed R2 attempt is repeated.
    :raises ConfigurationError: when neither store is named, or R2 is
        named without a client.
    """
    if accounts_dir:
        return DirectoryCredentialStore(FilePath(accounts_dir))
    if r2 is None:
        raise ConfigurationError(NO_STORE)
    if client is None:
        raise ConfigurationError("the R2 credential store needs an HTTP client")
    # Imported here: botocore's signer (and urllib3 behind it) is about
    # 10 MiB of a process that serves an accounts directory.
    from metagateway.credentials.r2 import R2CredentialStore

    return R2CredentialStore(r2, client, reactor, timeout=timeout, retries=retries)


def credential_store(
    reactor: Any,
    accounts_dir: Optional[str],
    r2: Optional[R2Settings],
    client: Optional[HTTPClient],
    timeout: float,
    retries: int,
    cache_ttl: float,
) -> ICredentialStore:
    """
    The store a gateway looks accounts up in: :func:`writable_store`,
    with R2's answers kept ``cache_ttl`` seconds (a directory is read each
    time: its files are the truth, and cheap to read).

    :param cache_ttl: seconds an R2 answer is reused; ``0`` caches nothing.
    :raises ConfigurationError: as :func:`writable_store`.
    """
    store: ICredentialStore = writable_store(
        reactor, accounts_dir, r2, client, timeout, retries
    )
    if cache_ttl > 0 and not accounts_dir:
        store = CachingCredentialStore(store, reactor, cache_ttl)
    return store
