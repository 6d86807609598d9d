"""
One contract for every implementation of
:class:`~metagateway.state.interfaces.ISecurityState`: in this process, held
by a supervisor over AMP, and in Redis.

A test case mixes in :class:`SecurityStateContractMixin` and provides
:meth:`~SecurityStateContractMixin.make_states` (two handles on one shared
state, as two processes would hold it), :meth:`~SecurityStateContractMixin.
settle` and :meth:`~SecurityStateContractMixin.run_async`. Time is the
mixin's :attr:`clock` (a :class:`Clock`), which every state is given as its
``now``, so windows and expiries are exact even against a real Redis.
"""

from __future__ import annotations

from typing import Any, Callable, Coroutine, Optional

from zope.interface.verify import verifyObject

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from metagateway.state.interfaces import (
    ILoginAttempt,
    ISecurityState,
    StateUnavailable,
    Throttled,
)

#: A token's lifetime in these tests.
LIFETIME = 3600.0


class SecurityStateContractMixin:
    """
    The behaviour every shared security state has.

    :ivar clock: the time every state made by :meth:`make_states` reads.
    """

    clock: Clock

    # What a test case provides.

    async def make_states(
        self, per_user: int, per_address: int, window: float
    ) -> tuple[Any, Any]:
        """
        Two handles on one new, empty shared state, with these limits, both
        reading :attr:`clock`.
        """
        raise NotImplementedError()

    async def settle(self, d: Deferred[Any]) -> Any:
        """
        Wait for ``d`` (moving whatever carries it along) and return its
        result, or raise its failure.
        """
        return await d

    async def propagated(self, check: Callable[[], bool]) -> None:
        """
        Wait (at most 1 s) until ``check()`` holds; fail the test if it
        never does.
        """
        raise NotImplementedError()

    def run_async(self, test: Callable[[], Coroutine[Any, Any, None]]) -> Any:
        """
        Run the coroutine ``test()`` as the test.
        """
        raise NotImplementedError()

    # Helpers.

    def setUp(self) -> None:
        """
        Every test's clock starts well after 0.
        """
        super().setUp()  # type: ignore[misc]
        self.clock = Clock()
        self.clock.advance(1_000_000)

    def case(self) -> Any:
        """
        This test case, for its assertions.
        """
        return self

    async def login(
        self, state: Any, user: str = "alice", address: str = "192.0.2.1"
    ) -> ILoginAttempt:
        """
        Begin a login in ``state``.
        """
        result = await self.settle(state.begin_login(user, address))
        return result  # type: ignore[no-any-return]

    async def throttled(
        self, state: Any, user: str = "alice", address: str = "192.0.2.1"
    ) -> Optional[int]:
        """
        The ``retry_after`` of a login refused as :class:`Throttled`, or
        ``None`` when the login was let through (and is left counted).
        """
        try:
            await self.login(state, user, address)
        except Throttled as e:
            return e.retry_after
        return None

    # The contract.

    def test_interface(self) -> Any:
        """
        Each handle provides :class:`ISecurityState`, with the limits it
        was made with.
        """

        async def test() -> None:
            a, b = await self.make_states(3, 7, 30.0)
            t = self.case()
            for state in (a, b):
                t.assertTrue(verifyObject(ISecurityState, state))
                t.assertEqual((state.per_user, state.per_address), (3, 7))
                t.assertEqual(state.window, 30.0)

        return self.run_async(test)

    def test_revoke_everywhere(self) -> Any:
        """
        A token revoked at one handle is refused there at once and at the
        other within 1 s; another token of the same user is not.
        """

        async def test() -> None:
            a, b = await self.make_states(5, 20, 60.0)
            t = self.case()
            until = self.clock.seconds() + LIFETIME
            issued = self.clock.seconds()
            t.assertFalse(a.is_revoked("jti:1", "alice", until, issued))
            a.revoke("jti:1", "alice", until)
            t.assertTrue(a.is_revoked("jti:1", "alice", until, issued))
            await self.propagated(lambda: b.is_revoked("jti:1", "alice", until, issued))
            t.assertFalse(b.is_revoked("jti:2", "alice", until, issued))
            t.assertFalse(a.is_revoked("jti:2", "alice", until, issued))

        return self.run_async(test)

    def test_revocation_ends(self) -> Any:
        """
        A revocation is forgotten once its token has expired.
        """

        async def test() -> None:
            a, b = await self.make_states(5, 20, 60.0)
            t = self.case()
            until = self.clock.seconds() + 10
            b.revoke("jti:1", "alice", until)
            await self.propagated(lambda: a.is_revoked("jti:1", "alice", until))
            self.clock.advance(10)
            t.assertFalse(a.is_revoked("jti:1", "alice", until))
            t.assertFalse(b.is_revoked("jti:1", "alice", until))

        return self.run_async(test)

    def test_revoke_expired(self) -> Any:
        """
        Revoking a token that has already expired does nothing.
        """

        async def test() -> None:
            a, b = await self.make_states(5, 20, 60.0)
            until = self.clock.seconds()
            a.revoke("jti:1", "alice", until)
            self.case().assertFalse(a.is_revoked("jti:1", "alice", until + 1))

        return self.run_async(test)

    def test_revoke_user(self) -> Any:
        """
        A user revocation refuses, at both handles, that user's tokens
        issued at or before its time, not later ones, not other users'.
        """

        async def test() -> None:
            a, b = await self.make_states(5, 20, 60.0)
            t = self.case()
            now = self.clock.seconds()
            until = now + LIFETIME + 60
            await self.settle(a.revoke_user("alice", now, until))
            for state in (a, b):
                await self.propagated(
                    lambda state=state: state.is_revoked(  # type: ignore[misc]
                        "jti:1", "alice", now + 1, now
                    )
                )
                t.assertTrue(state.is_revoked("jti:2", "alice", now + 1, now - 100))
                t.assertFalse(state.is_revoked("jti:3", "alice", now + 1, now + 1))
                t.assertFalse(state.is_revoked("jti:4", "bob1", now + 1, now))
            self.clock.advance(LIFETIME + 60)
            t.assertFalse(b.is_revoked("jti:1", "alice", now + LIFETIME + 61, now))

        return self.run_async(test)

    def test_revoke_user_no_iat(self) -> Any:
        """
        A token without ``iat`` (issued at ``-inf``) is refused by a user
        revocation: it cannot show it came after.
        """

        async def test() -> None:
            a, b = await self.make_states(5, 20, 60.0)
            now = self.clock.seconds()
            await self.settle(b.revoke_user("alice", now, now + LIFETIME))
            await self.propagated(
                lambda: a.is_revoked("sig:x", "alice", now + 10, float("-inf"))
            )

        return self.run_async(test)

    def test_revoke_user_only_extends(self) -> Any:
        """
        A second user revocation with an earlier time does not undo a later
        one.
        """

        async def test() -> None:
            a, b = await self.make_states(5, 20, 60.0)
            now = self.clock.seconds()
            await self.settle(a.revoke_user("alice", now, now + LIFETIME))
            await self.settle(b.revoke_user("alice", now - 50, now + LIFETIME))
            await self.propagated(lambda: b.is_revoked("j", "alice", now + 5, now - 10))
            self.clock.advance(1)
            self.case().assertTrue(a.is_revoked("j", "alice", now + 5, now))
            self.case().assertTrue(b.is_revoked("j", "alice", now + 5, now))

        return self.run_async(test)

    def test_failures_shared(self) -> Any:
        """
        Failed logins count across both handles: ``per_user`` failures in
        all, then :class:`Throttled` at either, with the wait until the
        oldest failure leaves the window.
        """

        async def test() -> None:
            a, b = await self.make_states(3, 100, 60.0)
            t = self.case()
            await self.login(a)
            self.clock.advance(10)
            await self.login(b)
            self.clock.advance(10)
            await self.login(a)
            t.assertEqual(await self.throttled(b), 40)
            t.assertEqual(await self.throttled(a), 40)
            t.assertEqual(await self.settle(b.retry_after("alice", "192.0.2.9")), 40)
            # Another user is not held back.
            t.assertIsNone(await self.throttled(a, user="bob1"))

        return self.run_async(test)

    def test_sliding_window(self) -> Any:
        """
        The window slides: once the oldest failure is a window old, one
        more attempt may go ahead, and the next wait is to the one after.
        """

        async def test() -> None:
            a, b = await self.make_states(2, 100, 60.0)
            t = self.case()
            await self.login(a)
            self.clock.advance(20)
            await self.login(b)
            self.clock.advance(39.5)
            t.assertEqual(await self.throttled(a), 1)
            self.clock.advance(0.5)
            # The first failure is exactly a window old: gone.
            t.assertIsNone(await self.throttled(b))
            t.assertEqual(await self.throttled(a), 20)
            t.assertIsNone(await self.settle(a.retry_after("bob1", "192.0.2.9")))

        return self.run_async(test)

    def test_refused_not_counted(self) -> Any:
        """
        A login refused as throttled does not itself count: the wait does
        not grow with more attempts.
        """

        async def test() -> None:
            a, b = await self.make_states(1, 100, 60.0)
            t = self.case()
            await self.login(a)
            for _ in range(5):
                t.assertEqual(await self.throttled(b), 60)
            self.clock.advance(60)
            t.assertIsNone(await self.throttled(a))

        return self.run_async(test)

    def test_per_address(self) -> Any:
        """
        Failures from one address count across users and handles.
        """

        async def test() -> None:
            a, b = await self.make_states(100, 2, 60.0)
            t = self.case()
            await self.login(a, user="u001", address="198.51.100.7")
            await self.login(b, user="u002", address="198.51.100.7")
            t.assertEqual(await self.throttled(a, "u003", "198.51.100.7"), 60)
            t.assertIsNone(await self.throttled(a, "u003", "198.51.100.8"))

        return self.run_async(test)

    def test_succeeded(self) -> Any:
        """
        A successful login clears the user's count and is not counted
        against the address.
        """

        async def test() -> None:
            a, b = await self.make_states(2, 3, 60.0)
            t = self.case()
            await self.login(a)
            attempt = await self.login(b)
            t.assertTrue(verifyObject(ILoginAttempt, attempt))
            attempt.succeeded()
            await self.flush(b)
            # The user may try twice again; the address has one failure
            # left (the first attempt still counts against it).
            await self.login(a)
            await self.login(b, user="bob1")
            t.assertEqual(await self.throttled(a, user="carol"), 60)

        return self.run_async(test)

    def test_abandoned(self) -> Any:
        """
        An abandoned login counts against neither key.
        """

        async def test() -> None:
            a, b = await self.make_states(1, 1, 60.0)
            t = self.case()
            attempt = await self.login(a)
            t.assertIsNotNone(await self.throttled(b))
            attempt.abandoned()
            await self.flush(a)
            t.assertIsNone(await self.throttled(b))

        return self.run_async(test)

    def test_limits_off(self) -> Any:
        """
        A limit of 0 (or a window of 0) limits nothing.
        """

        async def test() -> None:
            a, b = await self.make_states(0, 0, 60.0)
            for _ in range(10):
                self.case().assertIsNone(await self.throttled(a))
            c, d = await self.make_states(1, 1, 0.0)
            for _ in range(3):
                self.case().assertIsNone(await self.throttled(c))

        return self.run_async(test)

    async def flush(self, state: Any) -> None:
        """
        Wait until what ``state`` has sent without waiting (an attempt's
        outcome) has been applied.
        """
        await self.settle(state.retry_after("nobody-flush", "0.0.0.0"))


#: Errors a handle may fail a login with, for implementations' own tests.
LOGIN_ERRORS = (Throttled, StateUnavailable)
