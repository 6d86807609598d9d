"""
``metagateway-admin`` and the shared state store: ``revoke-user``, and the
revocation that ``set-password`` and ``remove-user`` add with
``--state-url``. The store is a fake here (the real one is exercised in
``tests.integration.test_state_daemons``).
"""

from __future__ import annotations

import io
from typing import Any, Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from metagateway.admin.cli import run
from metagateway.auth.passwords import make_record
from metagateway.config import StateSettings
from metagateway.credentials.directory import DirectoryCredentialStore
from metagateway.state.interfaces import StateUnavailable

URL = "redis://:pw@127.0.0.1:6390/3"


class FakeRevoker:
    """
    Records the revocations asked for; fails them when told to.

    :ivar calls: ``(settings, name)`` of each.
    """

    def __init__(self, error: Optional[Exception] = None) -> None:
        self.error = error
        self.calls: list[tuple[StateSettings, str]] = []

    def __call__(self, settings: StateSettings, name: str) -> Deferred[None]:
        self.calls.append((settings, name))
        if self.error is not None:
            return fail(self.error)
        return succeed(None)


class AdminRevocationTests(SynchronousTestCase):
    """
    The admin commands that end a user's live tokens.
    """

    def setUp(self) -> None:
        self.root = FilePath(self.mktemp())
        self.store = DirectoryCredentialStore(self.root)
        self.store.store(make_record("alice", "pw", "admin"))

    def admin(
        self, *argv: str, revoker: Any, environ: Optional[dict[str, str]] = None
    ) -> tuple[int, str, str]:
        """
        Run one command with ``revoker``; return status, stdout, stderr.
        """
        out, err = io.StringIO(), io.StringIO()
        d = Deferred.fromCoroutine(
            run(
                Clock(),
                ["--accounts-dir", self.root.path, *argv],
                environ or {},
                io.StringIO("new pw\n"),
                out,
                err,
                revoke_user=revoker,
            )
        )
        return self.successResultOf(d), out.getvalue(), err.getvalue()

    def test_revoke_user(self) -> None:
        """
        ``revoke-user NAME`` with ``--state-url`` revokes NAME's tokens in
        that store and exits 0.
        """
        revoker = FakeRevoker()
        status, out, err = self.admin(
            "--state-url", URL, "revoke-user", "alice", revoker=revoker
        )
        self.assertEqual((status, err), (0, ""))
        self.assertIn("revoked every token of alice", out)
        [(settings, name)] = revoker.calls
        self.assertEqual(
            (settings.port, settings.db, settings.password), (6390, 3, "pw")
        )
        self.assertEqual(name, "alice")

    def test_revoke_user_environ(self) -> None:
        """
        ``METAGATEWAY_STATE_URL`` names the store when the option is not
        given; the option wins over it.
        """
        revoker = FakeRevoker()
        environ = {"METAGATEWAY_STATE_URL": "redis://127.0.0.1:7000"}
        status, _, _ = self.admin(
            "revoke-user", "bob1", revoker=revoker, environ=environ
        )
        self.assertEqual(status, 0)
        self.admin(
            "--state-url", URL, "revoke-user", "bob1", revoker=revoker, environ=environ
        )
        self.assertEqual([s.port for s, _ in revoker.calls], [7000, 6390])

    def test_revoke_user_needs_state(self) -> None:
        """
        Without a state URL, ``revoke-user`` says, on one line, that it
        needs one, and exits non-zero.
        """
        revoker = FakeRevoker()
        status, out, err = self.admin("revoke-user", "alice", revoker=revoker)
        self.assertEqual(status, 1)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertIn("revoke-user needs --state-url", err)
        self.assertEqual(revoker.calls, [])

    def test_revoke_user_unavailable(self) -> None:
        """
        A store that cannot take the revocation is one line and exit 1.
        """
        revoker = FakeRevoker(StateUnavailable("redis://127.0.0.1:6390/3 unreachable"))
        status, out, err = self.admin(
            "--state-url", URL, "revoke-user", "alice", revoker=revoker
        )
        self.assertEqual(status, 1)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertIn("could not be revoked", err)
        self.assertNotIn("pw@", err)

    def test_bad_url(self) -> None:
        """
        A malformed state URL is one line and exit 1.
        """
        status, _, err = self.admin(
            "--state-url", "http://x", "revoke-user", "alice", revoker=FakeRevoker()
        )
        self.assertEqual(status, 1)
        self.assertIn("--state-url", err)

    def test_set_password_and_remove_revoke(self) -> None:
        """
        With a state URL, ``set-password`` and ``remove-user`` revoke the
        user's tokens after changing the store.
        """
        revoker = FakeRevoker()
        status, out, err = self.admin(
            "--state-url",
            URL,
            "set-password",
            "alice",
            "--password-stdin",
            revoker=revoker,
        )
        self.assertEqual((status, err), (0, ""))
        self.assertIn("password changed for alice", out)
        self.assertIn("revoked every token of alice", out)
        status, out, err = self.admin(
            "--state-url", URL, "remove-user", "alice", revoker=revoker
        )
        self.assertEqual((status, err), (0, ""))
        self.assertEqual([name for _, name in revoker.calls], ["alice", "alice"])

    def test_set_password_without_state(self) -> None:
        """
        Without a state URL, ``set-password`` and ``remove-user`` still
        work and say that the live tokens stay valid.
        """
        revoker = FakeRevoker()
        status, out, err = self.admin(
            "set-password", "alice", "--password-stdin", revoker=revoker
        )
        self.assertEqual((status, err), (0, ""))
        self.assertIn("give --state-url to revoke them", out)
        status, out, err = self.admin("remove-user", "alice", revoker=revoker)
        self.assertEqual((status, err), (0, ""))
        self.assertIn("give --state-url to revoke them", out)
        self.assertEqual(revoker.calls, [])

    def test_set_password_revocation_fails(self) -> None:
        """
        When the password changed but the revocation failed, the one line
        says both, and the status is 1.
        """
        revoker = FakeRevoker(StateUnavailable("unreachable"))
        status, out, err = self.admin(
            "--state-url",
            URL,
            "set-password",
            "alice",
            "--password-stdin",
            revoker=revoker,
        )
        self.assertEqual(status, 1)
        self.assertIn("password changed for alice, but the tokens", err)
        self.assertEqual(err.count("\n"), 1)
