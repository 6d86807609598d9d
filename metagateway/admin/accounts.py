"""
The ``metagateway-admin`` commands on accounts (``add-user``,
``set-password``, ``remove-user``, ``list-users``, ``revoke-user``): the
store they manage, the password they read, and the tokens they end.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from functools import partial
from typing import Any, Awaitable, Callable, Mapping, Optional, TextIO

from twisted.internet.defer import Deferred

from metagateway.admin.errors import EXIT_USAGE, AdminError
from metagateway.auth.passwords import make_record
from metagateway.config import ConfigurationError, R2Settings, StateSettings
from metagateway.credentials.interfaces import (
    IWritableCredentialStore,
    UnknownAccount,
    UnreadableRecord,
)
from metagateway.state.interfaces import StateUnavailable

#: Seconds each R2 call may take.
R2_TIMEOUT = 10.0


def _check_role(role: str) -> str:
    """
    :raises AdminError: for an empty role or one with control characters.
    """
    if not role or any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in role):
        raise AdminError("the role must be a non-empty printable string")
    return role


def read_password(
    from_stdin: bool,
    stdin: TextIO,
    prompt: Callable[[str], str],
) -> str:
    """
    The new password: the first line of ``stdin``, or typed twice at a
    no-echo prompt.

    :raises AdminError: if it is empty, the two entries differ, or input
        ends.
    """
    if from_stdin:
        line = stdin.readline()
        if not line:
            raise AdminError(
                "no password: standard input is empty (give one line, the password)"
            )
        password = line[:-1] if line.endswith("\n") else line
        if password.endswith("\r"):
            password = password[:-1]
    else:
        try:
            password = prompt("New password: ")
            again = prompt("Repeat password: ")
        except EOFError:
            raise AdminError("no password given (input ended)") from None
        if password != again:
            raise AdminError("the passwords do not match")
    if not password:
        raise AdminError("the password must not be empty")
    return password


def is_terminal(stream: Optional[TextIO]) -> bool:
    """
    Whether ``stream`` is an open terminal (``False`` for a pipe, a file,
    a closed stream or none at all).
    """
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):
        # ValueError: a closed stream.
        return False


def check_password_source(
    from_stdin: bool, stdin: Optional[TextIO], prompt: Optional[object]
) -> None:
    """
    Refuse to prompt when nobody can answer: without ``--password-stdin``
    and without a prompt of the caller's, the password is asked for at the
    terminal, which needs standard input to be one. A script or CI job
    piping the password in would otherwise wait at an invisible prompt.

    :raises AdminError: (usage) when standard input is not a terminal.
    """
    if from_stdin or prompt is not None or is_terminal(stdin):
        return
    raise AdminError(
        "standard input is not a terminal: to read the password from it, "
        "add --password-stdin",
        status=EXIT_USAGE,
    )


def open_store(
    reactor: Any,
    accounts_dir: Optional[str],
    environ: Mapping[str, str],
    create: bool = False,
    http_client: Optional[Any] = None,
) -> tuple[IWritableCredentialStore, Callable[[], object]]:
    """
    The store to manage, and a function that releases it.

    :param reactor: the reactor R2 calls run on.
    :param accounts_dir: ``--accounts-dir``, if given.
    :param environ: the environment.
    :param create: create a missing accounts directory (``add-user``).
    :param http_client: the treq client for R2; by default one with its
        own connection pool, closed by the release function.
    :raises AdminError: when no store is configured or R2 settings are
        incomplete.
    """
    from treq.client import HTTPClient

    from twisted.web.client import Agent, HTTPConnectionPool

    from metagateway.config import STORE_RETRIES
    from metagateway.credentials.factory import check_accounts_dir, writable_store

    directory = accounts_dir or environ.get("METAGATEWAY_ACCOUNTS_DIR") or None
    settings = None
    release: Optional[Callable[[], object]] = None
    try:
        if directory and create and not os.path.exists(directory):
            try:
                os.makedirs(directory, mode=0o700)
            except OSError as e:
                raise AdminError(
                    "cannot create accounts directory %s: %s" % (directory, e.strerror)
                ) from None
        if directory:
            check_accounts_dir(directory)
        elif not environ.get("R2_ENDPOINT_URL"):
            raise AdminError(
                "no credential store: give --accounts-dir "
                "(or METAGATEWAY_ACCOUNTS_DIR) or set R2_ENDPOINT_URL"
            )
        else:
            settings = R2Settings.from_environ(environ)
            if http_client is None:
                pool = HTTPConnectionPool(reactor, persistent=True)
                http_client = HTTPClient(Agent(reactor, pool=pool))
                release = pool.closeCachedConnections
        store = writable_store(
            reactor, directory, settings, http_client, R2_TIMEOUT, STORE_RETRIES
        )
    except ConfigurationError as e:
        raise AdminError(str(e)) from None
    return store, release or (lambda: None)


@dataclass(frozen=True)
class Console:
    """
    Where a command reads passwords and writes its results.

    :ivar stdin: where ``--password-stdin`` reads.
    :ivar stdout: where results go.
    :ivar prompt: asks for a password without echo.
    :ivar revoke: revokes a user's tokens in the state store ``--state-url``
        names (``None``: no state store was named).
    """

    stdin: TextIO
    stdout: TextIO
    prompt: Callable[[str], str]
    revoke: Optional[Callable[[str], Deferred[None]]] = None

    def password(self, from_stdin: bool) -> str:
        """
        The new password (see :func:`read_password`).
        """
        return read_password(from_stdin, self.stdin, self.prompt)

    async def end_tokens(self, name: str, done: str) -> None:
        """
        After ``set-password`` or ``remove-user``: revoke ``name``'s
        tokens when a state store is named, else say that they stay valid.

        :param done: what was done to ``name``, for the messages.
        :raises AdminError: when the store cannot take the revocation.
        """
        if self.revoke is None:
            self.stdout.write(
                "tokens already issued to %s stay valid until they expire; "
                "give --state-url to revoke them\n" % (name,)
            )
            return
        await revoke_tokens(self.revoke, name, done)
        self.stdout.write("revoked every token of %s issued up to now\n" % (name,))


async def add_user(
    store: IWritableCredentialStore, options: argparse.Namespace, console: Console
) -> None:
    """
    ``add-user NAME``: create an account.

    :raises AdminError: for a bad role, an existing account or a refused
        password.
    """
    name = options.name
    role = _check_role(options.role)
    if await _exists(store, name):
        raise AdminError("account %r already exists (use set-password)" % (name,))
    password = console.password(options.password_stdin)
    await store.store(make_record(name, password, role, options.scheme))
    console.stdout.write("added %s (role %s)\n" % (name, role))


async def set_password(
    store: IWritableCredentialStore, options: argparse.Namespace, console: Console
) -> None:
    """
    ``set-password NAME``: a new password for an account, its role kept
    (and its scheme, unless ``--scheme`` is given).

    :raises AdminError: for a missing or unreadable account or a refused
        password.
    """
    name = options.name
    try:
        old = await store.lookup(name)
    except UnknownAccount:
        raise AdminError("no account named %r" % (name,)) from None
    except UnreadableRecord:
        raise AdminError(
            "the record of %r cannot be read: remove-user, then add-user" % (name,)
        ) from None
    password = console.password(options.password_stdin)
    scheme = options.scheme or old.scheme
    await store.store(make_record(name, password, old.role, scheme))
    console.stdout.write("password changed for %s\n" % (name,))
    await console.end_tokens(name, "password changed for")


async def remove_user(
    store: IWritableCredentialStore, options: argparse.Namespace, console: Console
) -> None:
    """
    ``remove-user NAME``: delete an account.

    :raises AdminError: for a missing account.
    """
    try:
        await store.remove(options.name)
    except UnknownAccount:
        raise AdminError("no account named %r" % (options.name,)) from None
    console.stdout.write("removed %s\n" % (options.name,))
    await console.end_tokens(options.name, "removed")


async def list_users(
    store: IWritableCredentialStore, options: argparse.Namespace, console: Console
) -> None:
    """
    ``list-users``: the account names, one per line.
    """
    for username in await store.usernames():
        console.stdout.write(username + "\n")


#: What carries out each command.
COMMANDS: Mapping[
    str,
    Callable[[IWritableCredentialStore, argparse.Namespace, Console], Awaitable[None]],
] = {
    "add-user": add_user,
    "set-password": set_password,
    "remove-user": remove_user,
    "list-users": list_users,
}


async def revoke_tokens(
    revoke: Callable[[str], Deferred[None]], name: str, done: str
) -> None:
    """
    Revoke ``name``'s tokens.

    :param done: what was already done, for the error (``""``: nothing).
    :raises AdminError: when the store cannot take it.
    """
    try:
        await revoke(name)
    except StateUnavailable as e:
        raise AdminError(
            "%sthe tokens of %s could not be revoked: %s"
            % ("%s %s, but " % (done, name) if done else "", name, e)
        ) from None


async def revoke_only(
    revoke_user: Callable[[StateSettings, str], Deferred[None]],
    state: Optional[StateSettings],
    name: str,
    stdout: TextIO,
) -> None:
    """
    ``revoke-user NAME``: refuse every token of ``name`` issued up to now.
    No credential store is needed, nor an account of that name.

    :raises AdminError: without a state store, or when it cannot take it.
    """
    if state is None:
        raise AdminError(
            "revoke-user needs --state-url (or METAGATEWAY_STATE_URL): "
            "tokens are revoked in the shared state store"
        )
    await revoke_tokens(partial(revoke_user, state), name, "")
    stdout.write("revoked every token of %s issued up to now\n" % (name,))
    stdout.flush()


async def _exists(store: IWritableCredentialStore, name: str) -> bool:
    """
    Whether ``name`` has a record; an unreadable one counts as existing.
    """
    try:
        await store.lookup(name)
    except UnknownAccount:
        return False
    except UnreadableRecord:
        return True
    return True
