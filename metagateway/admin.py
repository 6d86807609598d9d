"""
``metagateway-admin``: manage accounts in the gateway's credential store.

::

    metagateway-admin [--accounts-dir DIR] add-user NAME [--role ROLE]
                      [--scheme sha256|scrypt] [--password-stdin]
    metagateway-admin [--accounts-dir DIR] set-password NAME [--password-stdin]
    metagateway-admin [--accounts-dir DIR] remove-user NAME
    metagateway-admin [--accounts-dir DIR] list-users
    metagateway-admin --state-url URL revoke-user NAME
    metagateway-admin assertion-key new FILE

With ``--state-url`` (or ``METAGATEWAY_STATE_URL``), ``revoke-user``,
``set-password`` and ``remove-user`` refuse every token of NAME issued up
to now, in every gateway sharing that state store (:ref:`contract-shared-state`).

The store is chosen as the daemon chooses it: ``--accounts-dir`` (or
``METAGATEWAY_ACCOUNTS_DIR``), else R2 from the ``R2_*`` variables. Every
failure is one line on stderr and a non-zero exit status; no hash or salt
is ever printed.
"""

from __future__ import annotations

import argparse
import getpass as _getpass
import os
import sys
from dataclasses import dataclass
from functools import partial
from typing import (
    Any,
    Awaitable,
    Callable,
    Mapping,
    NoReturn,
    Optional,
    Sequence,
    TextIO,
)

from twisted.internet.defer import Deferred
from twisted.internet.task import react

from metagateway.auth.assertion import key_id, new_key_pem, parse_key
from metagateway.auth.passwords import make_record
from metagateway.config import ConfigurationError, R2Settings, StateSettings
from metagateway.configfile import ConfigFileError, load_config_file
from metagateway.credentials.interfaces import (
    IWritableCredentialStore,
    StoreUnavailable,
    UnknownAccount,
    UnreadableRecord,
    is_valid_username,
)
from metagateway.state.admin import revoke_user as revoke_in_store
from metagateway.state.interfaces import StateUnavailable

#: Exit status for a failure the command reports.
EXIT_FAILURE = 1

#: Exit status for a malformed command line.
EXIT_USAGE = 2

#: Seconds each R2 call may take.
R2_TIMEOUT = 10.0

PROGRAM = "metagateway-admin"


class AdminError(Exception):
    """
    A failure to report on one line, then exit with ``status``.

    :ivar status: the exit status.
    """

    def __init__(self, message: str, status: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """
    An argument parser whose errors are one line, raised rather than
    printed and exited.
    """

    def error(self, message: str) -> NoReturn:
        raise AdminError("%s (see %s --help)" % (message, PROGRAM), status=EXIT_USAGE)

    def exit(self, status: int = 0, message: Optional[str] = None) -> NoReturn:
        if message:
            raise AdminError(message.strip(), status=status or EXIT_FAILURE)
        raise SystemExit(status)


def build_parser(stdout: TextIO) -> argparse.ArgumentParser:
    """
    The command-line parser.

    :param stdout: where ``--help`` is written.
    """
    common = _Parser(add_help=False)
    common.add_argument(
        "--state-url",
        metavar="URL",
        default=argparse.SUPPRESS,
        help="the shared state store (redis://... or rediss://...; default: "
        "$METAGATEWAY_STATE_URL): revoke-user, set-password and remove-user "
        "end the user's live tokens there",
    )
    common.add_argument(
        "--accounts-dir",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="a local accounts directory (default: $METAGATEWAY_ACCOUNTS_DIR, "
        "else the R2 bucket named by the R2_* variables)",
    )
    password = _Parser(add_help=False)
    password.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input "
        "instead of prompting",
    )
    parser = _Parser(
        prog=PROGRAM,
        description="Manage metagateway accounts in the credential store.",
        parents=[common],
    )
    parser.print_help = lambda file=None: argparse.ArgumentParser.print_help(  # type: ignore[method-assign]
        parser, stdout
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    def command(name: str, help: str, *parents: _Parser) -> Any:
        inherited = [common, *parents]
        sub = commands.add_parser(name, help=help, description=help, parents=inherited)
        sub.print_help = lambda file=None: argparse.ArgumentParser.print_help(  # type: ignore[method-assign]
            sub, stdout
        )
        return sub

    add = command("add-user", "create an account", password)
    add.add_argument("name", metavar="NAME")
    add.add_argument("--role", default="admin", help="the role (default: admin)")
    add.add_argument(
        "--scheme",
        choices=("sha256", "scrypt"),
        default="sha256",
        help="password hashing: sha256 (the original format, default) or scrypt",
    )
    setpw = command("set-password", "change an account's password", password)
    setpw.add_argument("name", metavar="NAME")
    setpw.add_argument(
        "--scheme",
        choices=("sha256", "scrypt"),
        default=None,
        help="password hashing (default: keep the account's)",
    )
    remove = command("remove-user", "delete an account")
    remove.add_argument("name", metavar="NAME")
    command("list-users", "list the account names")
    revoke = command(
        "revoke-user",
        "refuse every token of an account issued up to now (needs --state-url)",
    )
    revoke.add_argument("name", metavar="NAME")
    check = command(
        "check-config",
        "check a configuration file (--config) as a start or a reload would",
    )
    check.add_argument("file", metavar="FILE")
    key = command("assertion-key", "manage the key upstream assertions are signed with")
    actions = key.add_subparsers(dest="key_command", metavar="ACTION")
    actions.required = True
    new = actions.add_parser(
        "new",
        help="write a new EC P-256 key to FILE (for GATEWAY_ASSERTION_KEY_FILE)",
        description="write a new EC P-256 key to FILE, readable by its owner "
        "only; an existing FILE is never overwritten",
    )
    new.add_argument("file", metavar="FILE")
    return parser


def new_assertion_key(path: str, stdout: TextIO) -> None:
    """
    ``assertion-key new FILE``: write a new EC P-256 private key (PEM,
    mode 0600) to ``path``, which must not exist, and print its ``kid``.

    :raises AdminError: when the file exists or cannot be written.
    """
    pem = new_key_pem()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise AdminError("%s exists already: not overwritten" % (path,)) from None
    except OSError as e:
        raise AdminError("%s cannot be written: %s" % (path, e.strerror)) from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    stdout.write(
        "wrote a new assertion key to %s (kid %s); point "
        "GATEWAY_ASSERTION_KEY_FILE at it and reload the gateway\n"
        % (path, key_id(parse_key(pem, path).public_key()))
    )
    stdout.flush()


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
        await _revoke(self.revoke, name, done)
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


def check_command(
    options: argparse.Namespace,
    stdin: TextIO,
    prompt: Optional[Callable[[str], str]],
) -> None:
    """
    Refuse, before any store is touched, a command that cannot succeed: a
    username the gateway would never look up, or a password that nobody
    can type (see :func:`check_password_source`).

    :raises AdminError: if so.
    """
    if options.command in ("list-users", "check-config"):
        return
    if not is_valid_username(options.name):
        raise AdminError(
            "invalid username %r: 4 to 128 bytes, no '/', '\\\\', '..' "
            "or control characters" % (options.name,)
        )
    if options.command in ("add-user", "set-password"):
        check_password_source(options.password_stdin, stdin, prompt)


def report_failure(error: BaseException, stderr: TextIO) -> int:
    """
    Write the one line a failed command ends with, and return its exit
    status. Never a traceback.
    """
    if isinstance(error, AdminError):
        stderr.write("%s: %s\n" % (PROGRAM, error))
        return error.status
    if isinstance(error, StoreUnavailable):
        stderr.write(
            "%s: the credential store could not answer: %s\n" % (PROGRAM, error)
        )
    elif isinstance(error, KeyboardInterrupt):
        stderr.write("%s: interrupted\n" % (PROGRAM,))
        return 130
    else:
        stderr.write("%s: unexpected error: %s\n" % (PROGRAM, type(error).__name__))
    return EXIT_FAILURE


def check_config(path: str, environ: Mapping[str, str], stdout: TextIO) -> None:
    """
    ``check-config FILE``: one line on ``stdout`` when the file is valid.

    :raises AdminError: with the message a refused start would give.
    """
    try:
        loaded = load_config_file(path, environ)
    except ConfigFileError as e:
        raise AdminError(str(e)) from None
    stdout.write(
        "%s: valid: %d route(s) (%s), CORS origins %s\n"
        % (
            path,
            len(loaded.routes),
            ", ".join(
                "/%s %s" % (route.prefix.decode("ascii"), route.name)
                for route in loaded.routes
            ),
            ", ".join(loaded.allow_origins),
        )
    )
    stdout.flush()


async def _release(release: Callable[[], object]) -> None:
    """
    Release the store (close R2's idle connections), ignoring failures.
    """
    try:
        result = release()
        if isinstance(result, Deferred):
            await result
    except Exception:  # noqa: BLE001, S110 - closing idle connections
        pass


async def run(
    reactor: Any,
    argv: Sequence[str],
    environ: Mapping[str, str],
    stdin: TextIO,
    stdout: TextIO,
    stderr: TextIO,
    prompt: Optional[Callable[[str], str]] = None,
    http_client: Optional[Any] = None,
    revoke_user: Optional[Callable[[StateSettings, str], Deferred[None]]] = None,
) -> int:
    """
    Carry out one command.

    :param reactor: the reactor (R2 calls run on it).
    :param argv: the arguments, without the program name.
    :param environ: the environment (``METAGATEWAY_ACCOUNTS_DIR``, ``R2_*``).
    :param stdin: where ``--password-stdin`` reads.
    :param stdout: where results go.
    :param stderr: where failures go, one line each.
    :param prompt: asks for a password without echo; by default
        ``getpass``, used only when ``stdin`` is a terminal (otherwise a
        command needing a password without ``--password-stdin`` fails).
    :param http_client: the treq client for R2 (tests pass ``StubTreq``).
    :param revoke_user: revokes a user's tokens in the state store
        (:func:`metagateway.state.admin.revoke_user` on ``reactor`` if
        omitted).
    :return: the exit status.
    """
    release: Callable[[], object] = lambda: None  # noqa: E731
    try:
        try:
            options = build_parser(stdout).parse_args(list(argv))
        except SystemExit as e:
            return int(e.code or 0)
        if options.command == "assertion-key":
            new_assertion_key(options.file, stdout)
            return 0
        check_command(options, stdin, prompt)
        if options.command == "check-config":
            check_config(options.file, environ, stdout)
            return 0
        state = _state_settings(options, environ)
        if revoke_user is None:
            revoke_user = partial(revoke_in_store, reactor)
        if options.command == "revoke-user":
            await _revoke_only(revoke_user, state, options.name, stdout)
            return 0
        store, release = open_store(
            reactor,
            getattr(options, "accounts_dir", None),
            environ,
            create=options.command == "add-user",
            http_client=http_client,
        )
        console = Console(
            stdin,
            stdout,
            prompt or _getpass.getpass,
            None if state is None else partial(revoke_user, state),
        )
        await COMMANDS[options.command](store, options, console)
        stdout.flush()
        return 0
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - one line each
        return report_failure(e, stderr)
    finally:
        await _release(release)


def _state_settings(
    options: argparse.Namespace, environ: Mapping[str, str]
) -> Optional[StateSettings]:
    """
    The state store ``--state-url`` (or ``METAGATEWAY_STATE_URL``) names.

    :raises AdminError: for a malformed URL.
    """
    url = getattr(options, "state_url", None) or environ.get("METAGATEWAY_STATE_URL")
    if not url:
        return None
    try:
        return StateSettings.from_url(url, "--state-url / METAGATEWAY_STATE_URL")
    except ConfigurationError as e:
        raise AdminError(str(e)) from None


async def _revoke(
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


async def _revoke_only(
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
    await _revoke(partial(revoke_user, state), name, "")
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


def main(argv: Optional[Sequence[str]] = None) -> NoReturn:
    """
    The ``metagateway-admin`` console script.

    :param argv: the arguments, without the program name (default:
        ``sys.argv[1:]``).
    """
    arguments = list(sys.argv[1:] if argv is None else argv)

    async def _main(reactor: Any) -> None:
        status = await run(
            reactor, arguments, os.environ, sys.stdin, sys.stdout, sys.stderr
        )
        if status:
            raise SystemExit(status)

    react(_main)
    raise SystemExit(0)  # react always exits; this satisfies NoReturn


if __name__ == "__main__":
    main()
