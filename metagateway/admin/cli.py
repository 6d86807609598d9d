"""
The ``metagateway-admin`` command line: its parser, the checks made before
any store is touched, and :func:`run`, which carries out one command.
"""

from __future__ import annotations

import argparse
import getpass as _getpass
import os
import sys
from functools import partial
from typing import Any, Callable, Mapping, NoReturn, Optional, Sequence, TextIO

from twisted.internet.defer import Deferred
from twisted.internet.task import react

from metagateway.admin.accounts import (
    COMMANDS,
    Console,
    check_password_source,
    open_store,
    revoke_only,
)
from metagateway.admin.errors import (
    EXIT_FAILURE,
    EXIT_USAGE,
    PROGRAM,
    AdminError,
    report_failure,
)
from metagateway.admin.files import check_config, new_assertion_key
from metagateway.config import ConfigurationError, StateSettings
from metagateway.credentials.interfaces import is_valid_username
from metagateway.state.admin import revoke_user as revoke_in_store


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
            await revoke_only(revoke_user, state, options.name, stdout)
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
