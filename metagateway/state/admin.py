"""
What ``metagateway-admin`` asks of the shared state store: revoke every
token of a user issued up to now, then disconnect.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from metagateway.config import StateSettings

#: A token lives this long (:ref:`contract-tokens`): a user revocation ends after it.
TOKEN_LIFETIME = 3600.0

#: Extra seconds a user revocation is kept, for gateways whose clocks or
#: ``--clock-skew`` let a token live a little longer.
MARGIN = 3600.0

#: Seconds to wait for the store before giving up.
CONNECT_TIMEOUT = 10.0


def revoke_user(reactor: Any, settings: StateSettings, name: str) -> Deferred[None]:
    """
    Refuse, in the store ``settings`` names, every token of ``name``
    issued up to now (the reactor's clock).

    :return: fires once the store has it (every gateway sharing the store
        refuses those tokens within 1 s), or fails with
        :class:`~metagateway.state.interfaces.StateUnavailable`.
    """
    return Deferred.fromCoroutine(_revoke_user(reactor, settings, name))


async def _revoke_user(reactor: Any, settings: StateSettings, name: str) -> None:
    from metagateway.state.redis import RedisSecurityState

    state = RedisSecurityState(settings, reactor)
    state.startService()
    try:
        await state.wait_connected(CONNECT_TIMEOUT)
        now = reactor.seconds()
        await state.revoke_user(name, now, now + TOKEN_LIFETIME + MARGIN)
    finally:
        await state.stopService()
