"""
Tests for :mod:`metagateway.admin`, the ``metagateway-admin`` script.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from typing import Any, Mapping, Optional, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from metagateway.admin.accounts import COMMANDS, is_terminal
from metagateway.admin.cli import run
from metagateway.admin.errors import report_failure
from metagateway.auth.passwords import check_password, make_record
from metagateway.credentials.directory import DirectoryCredentialStore
from metagateway.testing import SETTINGS, FakeS3, StubTreq

#: The environment of the R2 store the fake bucket expects.
R2_ENVIRON = {
    "R2_ENDPOINT_URL": SETTINGS.endpoint_url,
    "R2_ACCESS_KEY_ID": SETTINGS.access_key_id,
    "R2_SECRET_ACCESS_KEY": SETTINGS.secret_access_key,
    "R2_BUCKET": SETTINGS.bucket,
    "R2_REGION": SETTINGS.region,
}


class Prompt:
    """
    Answers password prompts from a list, recording the prompts.

    :ivar prompts: the prompts shown.
    """

    def __init__(self, *answers: str) -> None:
        self._answers = list(answers)
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        if not self._answers:
            raise EOFError()
        return self._answers.pop(0)


class AdminTests(SynchronousTestCase):
    """
    ``metagateway-admin`` commands against an accounts directory.
    """

    def setUp(self) -> None:
        self.root = FilePath(self.mktemp())
        self.root.makedirs()
        self.store = DirectoryCredentialStore(self.root)
        self.clock = Clock()

    def admin(
        self,
        *argv: str,
        stdin: str = "",
        prompt: Optional[Prompt] = None,
        environ: Optional[Mapping[str, str]] = None,
        accounts: bool = True,
        http_client: Any = None,
        default_prompt: bool = False,
    ) -> tuple[int, str, str]:
        """
        Run one command; return its status, stdout and stderr.

        :param default_prompt: pass no prompt, leaving the command its
            default (the terminal, which a ``StringIO`` is not).
        """
        out, err = io.StringIO(), io.StringIO()
        args: Sequence[str] = argv
        if accounts:
            args = ["--accounts-dir", self.root.path, *argv]
        d = Deferred.fromCoroutine(
            run(
                self.clock,
                args,
                {} if environ is None else environ,
                io.StringIO(stdin),
                out,
                err,
                None if default_prompt else (prompt or Prompt()),
                http_client=http_client,
            )
        )
        status = self.successResultOf(d)
        return status, out.getvalue(), err.getvalue()

    def assertOneLineError(self, result: tuple[int, str, str], text: str) -> None:
        status, _, err = result
        self.assertNotEqual(status, 0)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertTrue(err.startswith("metagateway-admin: "), err)
        self.assertIn(text, err)
        self.assertNotIn("Traceback", err)

    def record(self, name: str) -> Any:
        return self.successResultOf(self.store.lookup(name))

    def test_add_user_prompt(self) -> None:
        """
        ``add-user`` asks twice without echo and writes a record in the
        original format, role ``admin`` by default.
        """
        prompt = Prompt("s3cret pw", "s3cret pw")
        status, out, err = self.admin("add-user", "alice", prompt=prompt)
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(prompt.prompts, ["New password: ", "Repeat password: "])
        record = self.record("alice")
        self.assertEqual(record.role, "admin")
        self.assertTrue(check_password(record, "s3cret pw"))
        stored = json.loads(
            self.root.descendant(["auth", "admins", "alice.json"]).getContent()
        )
        self.assertEqual(set(stored), {"username", "salt", "hash", "role"})
        self.assertNotIn(record.hash, out)
        self.assertNotIn(record.salt, out)

    def test_add_user_stdin(self) -> None:
        """
        ``--password-stdin`` reads the first line (without its newline),
        and ``--role`` and ``--scheme`` are honoured.
        """
        status, out, _ = self.admin(
            "add-user",
            "bob smith",
            "--role",
            "ops",
            "--scheme",
            "scrypt",
            "--password-stdin",
            stdin="pass word \nignored\n",
        )
        self.assertEqual(status, 0)
        self.assertIn("bob smith", out)
        record = self.record("bob smith")
        self.assertEqual((record.role, record.scheme), ("ops", "scrypt"))
        self.assertTrue(check_password(record, "pass word "))

    def test_fresh_salt(self) -> None:
        """
        Every record gets a fresh salt, even for the same password.
        """
        self.admin("add-user", "alice", "--password-stdin", stdin="pw\n")
        self.admin("add-user", "carol", "--password-stdin", stdin="pw\n")
        self.assertNotEqual(self.record("alice").salt, self.record("carol").salt)
        self.assertNotEqual(self.record("alice").hash, self.record("carol").hash)

    def test_add_user_exists(self) -> None:
        """
        ``add-user`` refuses to replace an account.
        """
        self.successResultOf(self.store.store(make_record("alice", "old")))
        result = self.admin("add-user", "alice", "--password-stdin", stdin="new\n")
        self.assertOneLineError(result, "already exists")
        self.assertTrue(check_password(self.record("alice"), "old"))

    def test_mismatched_prompts(self) -> None:
        """
        Two different entries at the prompt write nothing.
        """
        result = self.admin("add-user", "alice", prompt=Prompt("one", "two"))
        self.assertOneLineError(result, "do not match")
        self.assertEqual(self.successResultOf(self.store.usernames()), [])

    def test_empty_password(self) -> None:
        """
        An empty password is refused, from the prompt or stdin.
        """
        self.assertOneLineError(
            self.admin("add-user", "alice", prompt=Prompt("", "")), "empty"
        )
        self.assertOneLineError(
            self.admin("add-user", "alice", "--password-stdin", stdin="\n"), "empty"
        )
        self.assertOneLineError(
            self.admin("add-user", "alice", "--password-stdin", stdin=""), "empty"
        )

    def test_stdin_ends(self) -> None:
        """
        ``--password-stdin`` with nothing on standard input says so.
        """
        result = self.admin("add-user", "alice", "--password-stdin", stdin="")
        self.assertOneLineError(result, "standard input is empty")
        self.assertEqual(self.successResultOf(self.store.usernames()), [])

    def test_stdin_not_a_terminal(self) -> None:
        """
        ``add-user`` and ``set-password`` without ``--password-stdin``,
        standard input not a terminal and no prompt given: a usage error
        (status 2) saying to add ``--password-stdin``, before anything is
        read or written; the password waiting on standard input is not
        taken.
        """
        self.successResultOf(self.store.store(make_record("carol", "old")))
        for command, name in (("add-user", "alice"), ("set-password", "carol")):
            result = self.admin(command, name, stdin="pw\n", default_prompt=True)
            self.assertOneLineError(result, "add --password-stdin")
            self.assertIn("not a terminal", result[2])
            self.assertEqual(result[0], 2)
        self.assertEqual(self.successResultOf(self.store.usernames()), ["carol"])
        self.assertTrue(check_password(self.record("carol"), "old"))
        status, _, err = self.admin(
            "add-user", "alice", "--password-stdin", stdin="pw\n", default_prompt=True
        )
        self.assertEqual(status, 0, err)
        self.assertTrue(check_password(self.record("alice"), "pw"))

    def test_is_terminal(self) -> None:
        """
        ``is_terminal`` is true only for an open terminal: not for a pipe
        or file, a closed stream, or no stream.
        """

        class Terminal(io.StringIO):
            def isatty(self) -> bool:
                super().isatty()  # ValueError once closed, as a real one
                return True

        closed = Terminal()
        closed.close()
        self.assertTrue(is_terminal(Terminal()))
        self.assertFalse(is_terminal(io.StringIO()))
        self.assertFalse(is_terminal(closed))
        self.assertFalse(is_terminal(None))

    def test_prompt_eof(self) -> None:
        """
        Input ending at the prompt is a clean failure.
        """
        self.assertOneLineError(self.admin("add-user", "alice"), "input ended")

    def test_invalid_usernames(self) -> None:
        """
        Names that could escape their key, or are too short, are refused
        before any store is touched.
        """
        for name in ("../etc", "a/b/c", "abc", "x" * 129, "bad\tname"):
            result = self.admin("add-user", name, "--password-stdin", stdin="pw\n")
            self.assertOneLineError(result, "invalid username")
        self.assertFalse(self.root.child("etc").exists())
        self.assertEqual(self.successResultOf(self.store.usernames()), [])

    def test_bad_role(self) -> None:
        """
        An empty role or one with control characters is refused.
        """
        for role in ("", "ad\nmin"):
            result = self.admin(
                "add-user", "alice", "--role", role, "--password-stdin", stdin="pw\n"
            )
            self.assertOneLineError(result, "role")

    def test_set_password(self) -> None:
        """
        ``set-password`` replaces the hash and salt, keeping role and scheme.
        """
        old = make_record("alice", "old", role="ops")
        self.successResultOf(self.store.store(old))
        status, out, _ = self.admin(
            "set-password", "alice", prompt=Prompt("newpw", "newpw")
        )
        self.assertEqual(status, 0)
        record = self.record("alice")
        self.assertTrue(check_password(record, "newpw"))
        self.assertFalse(check_password(record, "old"))
        self.assertEqual(record.role, "ops")
        self.assertNotEqual(record.salt, old.salt)
        self.assertNotIn(record.hash, out)

    def test_set_password_unknown(self) -> None:
        """
        ``set-password`` for a missing account fails without prompting.
        """
        prompt = Prompt("x", "x")
        result = self.admin("set-password", "nobody", prompt=prompt)
        self.assertOneLineError(result, "no account")
        self.assertEqual(prompt.prompts, [])

    def test_set_password_unreadable(self) -> None:
        """
        ``set-password`` over an unreadable record says what to do.
        """
        path = self.root.descendant(["auth", "admins", "alice.json"])
        path.parent().makedirs()
        path.setContent(b"not json")
        result = self.admin("set-password", "alice", "--password-stdin", stdin="x\n")
        self.assertOneLineError(result, "cannot be read")

    def test_remove_user(self) -> None:
        """
        ``remove-user`` deletes the record; a second time it fails.
        """
        self.successResultOf(self.store.store(make_record("alice", "pw")))
        status, out, _ = self.admin("remove-user", "alice")
        self.assertEqual(status, 0)
        self.assertIn("removed alice", out)
        self.assertEqual(self.successResultOf(self.store.usernames()), [])
        self.assertOneLineError(self.admin("remove-user", "alice"), "no account")

    def test_list_users(self) -> None:
        """
        ``list-users`` prints one name a line, sorted, and nothing else.
        """
        for name in ("carol", "alice", "zoë z"):
            self.successResultOf(self.store.store(make_record(name, "pw")))
        status, out, err = self.admin("list-users")
        self.assertEqual((status, out, err), (0, "alice\ncarol\nzoë z\n", ""))

    def test_accounts_dir_after_command(self) -> None:
        """
        ``--accounts-dir`` may also follow the command.
        """
        self.successResultOf(self.store.store(make_record("alice", "pw")))
        status, out, _ = self.admin(
            "list-users", "--accounts-dir", self.root.path, accounts=False
        )
        self.assertEqual((status, out), (0, "alice\n"))

    def test_accounts_dir_from_environment(self) -> None:
        """
        Without ``--accounts-dir``, ``METAGATEWAY_ACCOUNTS_DIR`` is used,
        as the daemon does.
        """
        self.successResultOf(self.store.store(make_record("alice", "pw")))
        status, out, _ = self.admin(
            "list-users",
            accounts=False,
            environ={"METAGATEWAY_ACCOUNTS_DIR": self.root.path, **R2_ENVIRON},
        )
        self.assertEqual((status, out), (0, "alice\n"))

    def test_add_user_creates_directory(self) -> None:
        """
        ``add-user`` creates a missing accounts directory; other commands
        refuse a missing one.
        """
        missing = FilePath(self.mktemp())
        status, _, _ = self.admin(
            "add-user",
            "alice",
            "--accounts-dir",
            missing.path,
            "--password-stdin",
            stdin="pw\n",
            accounts=False,
        )
        self.assertEqual(status, 0)
        self.assertTrue(missing.descendant(["auth", "admins", "alice.json"]).exists())
        other = FilePath(self.mktemp())
        result = self.admin("list-users", "--accounts-dir", other.path, accounts=False)
        self.assertOneLineError(result, "does not exist")

    def test_no_store(self) -> None:
        """
        With neither an accounts directory nor R2 settings, the failure
        names what is missing.
        """
        result = self.admin("list-users", accounts=False)
        self.assertOneLineError(result, "R2_ENDPOINT_URL")

    def test_incomplete_r2_settings(self) -> None:
        """
        Incomplete R2 settings name the missing variable.
        """
        environ = dict(R2_ENVIRON)
        del environ["R2_SECRET_ACCESS_KEY"]
        result = self.admin("list-users", accounts=False, environ=environ)
        self.assertOneLineError(result, "R2_SECRET_ACCESS_KEY")

    def test_usage_errors(self) -> None:
        """
        A malformed command line is one line on stderr, status 2.
        """
        for argv in (
            (),
            ("frobnicate",),
            ("add-user",),
            ("add-user", "alice", "--scheme", "md5"),
            ("list-users", "--bogus"),
        ):
            result = self.admin(*argv)
            self.assertOneLineError(result, "--help")
            self.assertEqual(result[0], 2)

    def test_help(self) -> None:
        """
        ``--help`` prints usage on stdout and succeeds.
        """
        status, out, err = self.admin("--help", accounts=False)
        self.assertEqual((status, err), (0, ""))
        self.assertIn("add-user", out)
        status, out, _ = self.admin("add-user", "--help", accounts=False)
        self.assertEqual(status, 0)
        self.assertIn("--password-stdin", out)

    def test_every_command_carried_out(self) -> None:
        """
        The four documented commands are the parser's and each has its
        function in ``COMMANDS``; nothing else is a command.
        """
        documented = ["add-user", "set-password", "remove-user", "list-users"]
        self.assertEqual(sorted(COMMANDS), sorted(documented))
        for name in documented:
            status, out, _ = self.admin(name, "--help", accounts=False)
            self.assertEqual(status, 0, name)
        self.assertOneLineError(self.admin("rename-user", "alice"), "invalid choice")

    def test_unexpected_error(self) -> None:
        """
        An unexpected failure is one line naming its type only (its
        message could hold anything), status 1.
        """
        err = io.StringIO()
        status = report_failure(ValueError("secret detail"), err)
        self.assertEqual(
            (status, err.getvalue()),
            (1, "metagateway-admin: unexpected error: ValueError\n"),
        )


class AdminR2Tests(SynchronousTestCase):
    """
    ``metagateway-admin`` against the R2 store (a fake bucket over
    ``StubTreq``).
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_780_000_000)
        self.s3 = FakeS3(self.clock)
        self.treq = StubTreq(self.s3)

    def admin(self, *argv: str, stdin: str = "") -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        d = Deferred.fromCoroutine(
            run(
                self.clock,
                argv,
                R2_ENVIRON,
                io.StringIO(stdin),
                out,
                err,
                Prompt(),
                http_client=self.treq,
            )
        )
        return self.successResultOf(d), out.getvalue(), err.getvalue()

    def test_round_trip(self) -> None:
        """
        Accounts are added, listed, re-passworded and removed in the bucket.
        """
        self.assertEqual(
            self.admin("add-user", "zoë ünïcode", "--password-stdin", stdin="pw\n")[0],
            0,
        )
        stored = json.loads(self.s3.objects["auth/admins/zoë ünïcode.json"])
        self.assertEqual(stored["username"], "zoë ünïcode")
        self.assertEqual(self.admin("list-users"), (0, "zoë ünïcode\n", ""))
        self.assertEqual(
            self.admin("set-password", "zoë ünïcode", "--password-stdin", stdin="x\n")[
                0
            ],
            0,
        )
        self.assertEqual(self.admin("remove-user", "zoë ünïcode")[0], 0)
        self.assertEqual(self.s3.objects, {})

    def test_store_unavailable(self) -> None:
        """
        A store fault is one line naming the store, status 1, with no
        secret in it.
        """
        self.s3.faults.append(403)
        status, _, err = self.admin("list-users")
        self.assertEqual(status, 1)
        self.assertIn("credential store could not answer", err)
        self.assertEqual(err.count("\n"), 1)
        self.assertNotIn(SETTINGS.secret_access_key, err)


class MainTests(SynchronousTestCase):
    """
    The console script, run as a child process (no sockets: an accounts
    directory).
    """

    def main(
        self, *argv: str, stdin: bytes = b""
    ) -> subprocess.CompletedProcess[bytes]:
        root = os.path.dirname(
            os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        )
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("R2_", "METAGATEWAY_"))
        }
        env["PYTHONPATH"] = root
        return subprocess.run(
            [sys.executable, "-c", "from metagateway.admin import main; main()", *argv],
            input=stdin,
            capture_output=True,
            env=env,
            timeout=60,
        )

    def test_exit_status(self) -> None:
        """
        ``main`` exits 0 on success and non-zero with one line on stderr
        (no traceback) on failure.
        """
        accounts = self.mktemp()
        done = self.main(
            "--accounts-dir",
            accounts,
            "add-user",
            "alice",
            "--password-stdin",
            stdin=b"pw\n",
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        done = self.main("--accounts-dir", accounts, "list-users")
        self.assertEqual((done.returncode, done.stdout), (0, b"alice\n"))
        done = self.main("--accounts-dir", accounts, "remove-user", "nobody")
        self.assertEqual(done.returncode, 1)
        self.assertEqual(done.stderr.count(b"\n"), 1, done.stderr)
        self.assertNotIn(b"Traceback", done.stderr)
        done = self.main("list-users")
        self.assertEqual(done.returncode, 1)
        self.assertIn(b"R2_ENDPOINT_URL", done.stderr)

    def test_piped_without_password_stdin(self) -> None:
        """
        Run from a script (standard input a pipe) without
        ``--password-stdin``, ``add-user`` does not wait at a prompt: it
        exits 2 at once with one line saying to add ``--password-stdin``,
        and creates nothing.
        """
        accounts = self.mktemp()
        done = self.main("--accounts-dir", accounts, "add-user", "alice", stdin=b"pw\n")
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertEqual(done.stderr.count(b"\n"), 1, done.stderr)
        self.assertIn(b"--password-stdin", done.stderr)
        self.assertEqual(done.stdout, b"")
        done = self.main("--accounts-dir", accounts, "list-users")
        self.assertEqual(done.stdout, b"")

    def test_module(self) -> None:
        """
        ``python -m metagateway.admin`` is the same command.
        """
        root = os.path.dirname(
            os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        )
        done = subprocess.run(
            [sys.executable, "-m", "metagateway.admin", "--help"],
            capture_output=True,
            env=dict(os.environ, PYTHONPATH=root),
            timeout=60,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn(b"add-user", done.stdout)


class AssertionKeyCommandTests(SynchronousTestCase):
    """
    ``metagateway-admin assertion-key new FILE``.
    """

    def admin(self, *argv: str) -> tuple[int, str, str]:
        """
        Run one command (no store needed); its status, stdout and stderr.
        """
        out, err = io.StringIO(), io.StringIO()
        d = Deferred.fromCoroutine(
            run(Clock(), argv, {}, io.StringIO(), out, err, Prompt())
        )
        return self.successResultOf(d), out.getvalue(), err.getvalue()

    def assertOneLineError(self, result: tuple[int, str, str], text: str) -> None:
        """
        A non-zero status and one line on stderr holding ``text``.
        """
        status, _, err = result
        self.assertNotEqual(status, 0)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertIn(text, err)

    def test_new_key(self) -> None:
        """
        Writes a P-256 key the gateway loads, readable by its owner only,
        and prints its ``kid``; an existing file is never overwritten.
        """
        import os
        import stat

        from metagateway.auth.assertion import key_id, load_key

        path = self.mktemp()
        status, out, err = self.admin("assertion-key", "new", path)
        self.assertEqual((status, err), (0, ""))
        kid = key_id(load_key(path).public_key())
        self.assertIn(kid, out)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path, "rb") as f:
            before = f.read()
        self.assertOneLineError(
            self.admin("assertion-key", "new", path), "exists already"
        )
        with open(path, "rb") as f:
            self.assertEqual(f.read(), before)

    def test_unwritable(self) -> None:
        """
        A file in a missing directory: one line, non-zero.
        """
        path = self.mktemp() + "/no/such/key.pem"
        self.assertOneLineError(
            self.admin("assertion-key", "new", path),
            "cannot be written",
        )

    def test_action_required(self) -> None:
        """
        ``assertion-key`` without ``new FILE`` is a usage error.
        """
        status, _, err = self.admin("assertion-key")
        self.assertEqual(status, 2)
        self.assertIn("metagateway-admin", err)
