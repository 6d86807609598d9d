"""
The login attempts the security states hand out: each tells the state that
counted it how it ended, and the state takes it back.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol

from zope.interface import implementer

from metagateway.state.interfaces import ILoginAttempt


class _EndsLogins(Protocol):
    """
    A state that takes back the logins it counted.
    """

    def end_login(self, attempt: Any, succeeded: bool) -> None:
        """
        ``attempt`` succeeded (the user's count starts again) or was
        abandoned (neither key counts it any more).
        """


@implementer(ILoginAttempt)
class LoginAttempt:
    """
    A login counted by a state, whose outcome goes back to that state's
    ``end_login``.

    :ivar user: the user's counter key.
    :ivar address: the address's counter key.
    """

    def __init__(self, state: _EndsLogins, user: str, address: str) -> None:
        self._state = state
        self.user = user
        self.address = address

    def succeeded(self) -> None:
        """
        The username's count starts again; the address forgives this one.
        """
        self._state.end_login(self, True)

    def abandoned(self) -> None:
        """
        Neither key counts this attempt any more.
        """
        self._state.end_login(self, False)


class TimedLoginAttempt(LoginAttempt):
    """
    A login counted in a pair of
    :class:`~metagateway.state.counters.FailureCounter`, by the time it was
    counted at.

    :ivar user_time: when it was counted against the user (``None``: not).
    :ivar address_time: when it was counted against the address.
    """

    def __init__(
        self,
        state: _EndsLogins,
        user: str,
        address: str,
        user_time: Optional[float],
        address_time: Optional[float],
    ) -> None:
        super().__init__(state, user, address)
        self.user_time = user_time
        self.address_time = address_time
