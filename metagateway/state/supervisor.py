"""
``--workers N`` without ``--state-url``: the supervisor holds the one
security state (a :class:`~metagateway.state.memory.MemorySecurityState`)
and its workers share it over AMP, each on its own socket pair inherited
like the listening sockets (no server to run, nothing on the file system).

The supervisor's side is a :class:`StateHub`; a worker's is a
:class:`SupervisedSecurityState`. A worker keeps every revocation in a local
mirror and checks tokens against it; a revocation made at one worker is
sent to the supervisor, which applies it and passes it on to every other
worker at once. A worker connecting (at start, or after a restart) is sent
everything the supervisor holds. Logins ask the supervisor, which counts
them in one place, atomically (the reactor runs one command at a time).
"""

from __future__ import annotations

import math
import os
import socket
from typing import Any, Callable, Iterable, Optional

from zope.interface import implementer

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from metagateway.state.attempts import TimedLoginAttempt
from metagateway.state.interfaces import (
    ILoginAttempt,
    ISecurityState,
    StateUnavailable,
    Throttled,
)
from metagateway.state.memory import MemoryLoginAttempt, MemorySecurityState
from metagateway.state.revocations import RevocationList
from metagateway.state.stats import StateStats

log = Logger(namespace="metagateway.state.supervisor")

#: Revocations per AMP message (each AMP value holds at most 64 KiB).
BATCH = 150


class _Text(amp.Argument):
    """
    Text as UTF-8, lone surrogates (which a JSON body can hold) included,
    where ``amp.Unicode`` would refuse them.
    """

    def toString(self, inObject: str) -> bytes:
        return inObject.encode("utf-8", "surrogatepass")

    def fromString(self, inString: bytes) -> str:
        return inString.decode("utf-8", "surrogatepass")


class Revoke(amp.Command):
    """
    Revocations: from a worker to the supervisor (made there), and from
    the supervisor to the workers (made elsewhere, or all it holds).
    """

    arguments = [
        (
            b"tokens",
            amp.AmpList(
                [
                    (b"token_id", _Text()),
                    (b"subject", _Text()),
                    (b"until", amp.Float()),
                ]
            ),
        ),
        (
            b"users",
            amp.AmpList(
                [
                    (b"subject", _Text()),
                    (b"before", amp.Float()),
                    (b"until", amp.Float()),
                ]
            ),
        ),
    ]
    response = []  # type: ignore[var-annotated]
    requiresAnswer = False


class BeginLogin(amp.Command):
    """
    Count a login for ``user`` and ``address`` unless either is held back
    (``retry_after`` then says how long; ``0``: counted).
    """

    arguments = [(b"user", _Text()), (b"address", _Text())]
    response = [
        (b"retry_after", amp.Integer()),
        (b"user_time", amp.Float(optional=True)),
        (b"address_time", amp.Float(optional=True)),
    ]


class EndLogin(amp.Command):
    """
    A counted login's outcome: succeeded, or abandoned.
    """

    arguments = [
        (b"user", _Text()),
        (b"address", _Text()),
        (b"user_time", amp.Float(optional=True)),
        (b"address_time", amp.Float(optional=True)),
        (b"succeeded", amp.Boolean()),
    ]
    response = []  # type: ignore[var-annotated]


class RetryAfter(amp.Command):
    """
    Seconds until a login may go ahead (``0``: now). Counts nothing.
    """

    arguments = [(b"user", _Text()), (b"address", _Text())]
    response = [(b"retry_after", amp.Integer())]


def _batches(
    tokens: Iterable[tuple[str, str, float]], users: Iterable[tuple[str, float, float]]
) -> Iterable[dict[str, Any]]:
    """
    ``Revoke`` arguments carrying ``tokens`` and ``users``, :data:`BATCH`
    at a time.
    """
    pending_tokens = [
        {"token_id": t, "subject": s, "until": float(u)} for t, s, u in tokens
    ]
    pending_users = [
        {"subject": s, "before": float(b), "until": float(u)} for s, b, u in users
    ]
    while pending_tokens or pending_users:
        yield {"tokens": pending_tokens[:BATCH], "users": pending_users[:BATCH]}
        del pending_tokens[:BATCH]
        del pending_users[:BATCH]


class HubProtocol(amp.AMP):
    """
    The supervisor's end of one worker's connection.
    """

    def __init__(self, hub: StateHub) -> None:
        super().__init__()
        self.hub = hub

    def connectionMade(self) -> None:
        super().connectionMade()
        self.hub.connections.add(self)
        revoked = self.hub.state.revoked
        for arguments in _batches(revoked.entries(), revoked.user_entries()):
            self.callRemote(Revoke, **arguments)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.hub.connections.discard(self)
        super().connectionLost(reason)

    @Revoke.responder
    def revoke(
        self, tokens: list[dict[str, Any]], users: list[dict[str, Any]]
    ) -> dict[str, Any]:
        revoked = self.hub.state.revoked
        for token in tokens:
            revoked.revoke(token["token_id"], token["subject"], token["until"])
        for user in users:
            revoked.revoke_user(user["subject"], user["before"], user["until"])
        for other in list(self.hub.connections):
            if other is not self:
                other.callRemote(Revoke, tokens=tokens, users=users)
        return {}

    @BeginLogin.responder
    def begin_login(self, user: str, address: str) -> dict[str, Any]:
        try:
            attempt = self.hub.state.start_login(user, address)
        except Throttled as e:
            return {"retry_after": e.retry_after}
        return {
            "retry_after": 0,
            "user_time": attempt.user_time,
            "address_time": attempt.address_time,
        }

    @EndLogin.responder
    def end_login(
        self,
        user: str,
        address: str,
        succeeded: bool,
        user_time: Optional[float] = None,
        address_time: Optional[float] = None,
    ) -> dict[str, Any]:
        state = self.hub.state
        attempt = MemoryLoginAttempt(state, user, address, user_time, address_time)
        state.end_login(attempt, succeeded)
        return {}

    @RetryAfter.responder
    def retry_after(self, user: str, address: str) -> dict[str, Any]:
        return {"retry_after": self.hub.state.wait(user, address) or 0}


class _HubFactory(Factory):
    noisy = False

    def __init__(self, hub: StateHub) -> None:
        self.hub = hub

    def buildProtocol(self, addr: Any) -> HubProtocol:
        return HubProtocol(self.hub)


class StateHub:
    """
    The supervisor's state, served to its workers.

    :param state: the state held.
    :param reactor: adopts the sockets.
    """

    def __init__(self, state: MemorySecurityState, reactor: Any) -> None:
        self.state = state
        self.reactor = reactor
        self.connections: set[HubProtocol] = set()

    def protocol(self) -> HubProtocol:
        """
        A new connection's protocol (tests connect it in memory).
        """
        return HubProtocol(self)

    def open(self) -> socket.socket:
        """
        A socket pair for one worker: this end is served at once; the other
        end is returned, for the worker to inherit (close it here once the
        worker is started).
        """
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            mine.setblocking(False)
            self.reactor.adoptStreamConnection(
                mine.fileno(), socket.AF_UNIX, _HubFactory(self)
            )
        finally:
            # The reactor holds its own duplicate.
            mine.close()
        return theirs


class WorkerProtocol(amp.AMP):
    """
    A worker's end of its connection to the supervisor.
    """

    def __init__(self, owner: SupervisedSecurityState) -> None:
        super().__init__()
        self.owner = owner

    def connectionMade(self) -> None:
        super().connectionMade()
        self.owner.connected(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.owner.lost(self)
        super().connectionLost(reason)

    @Revoke.responder
    def revoke(
        self, tokens: list[dict[str, Any]], users: list[dict[str, Any]]
    ) -> dict[str, Any]:
        revoked = self.owner.revoked
        for token in tokens:
            revoked.revoke(token["token_id"], token["subject"], token["until"])
        for user in users:
            revoked.revoke_user(user["subject"], user["before"], user["until"])
        self.owner.stats.revocations_seen += len(tokens) + len(users)
        return {}


class _WorkerFactory(Factory):
    noisy = False

    def __init__(self, state: SupervisedSecurityState) -> None:
        self.state = state

    def buildProtocol(self, addr: Any) -> WorkerProtocol:
        return WorkerProtocol(self.state)


class SupervisedLoginAttempt(TimedLoginAttempt):
    """
    A login counted by the supervisor.
    """


@implementer(ISecurityState)
class SupervisedSecurityState(Service):
    """
    A worker's view of the state its supervisor holds.

    :param reactor: adopts the inherited socket.
    :param fd: the inherited socket's file descriptor (``None`` in tests,
        which connect :meth:`protocol` in memory).
    :param per_user: failures per username per window (as the supervisor
        counts them).
    :param per_address: failures per client address per window.
    :param window: the sliding window, in seconds.
    :param now: the current POSIX time (the reactor's if omitted), for the
        mirror.
    """

    def __init__(
        self,
        reactor: Any,
        fd: Optional[int],
        per_user: int = 5,
        per_address: int = 20,
        window: float = 60.0,
        now: Optional[Callable[[], float]] = None,
    ) -> None:
        self.reactor = reactor
        self.fd = fd
        self.per_user = per_user
        self.per_address = per_address
        self.window = window
        self.revoked = RevocationList(now if now is not None else reactor.seconds)
        self.stats = StateStats()
        self.remote: Optional[WorkerProtocol] = None

    def protocol(self) -> WorkerProtocol:
        """
        The protocol of this worker's connection.
        """
        return WorkerProtocol(self)

    def startService(self) -> None:
        """
        Adopt the inherited socket.
        """
        super().startService()
        if self.fd is not None:
            fd, self.fd = self.fd, None
            self.reactor.adoptStreamConnection(fd, socket.AF_UNIX, _WorkerFactory(self))
            os.close(fd)

    def stopService(self) -> None:
        """
        Close the connection.
        """
        super().stopService()
        if self.remote is not None and self.remote.transport is not None:
            self.remote.transport.loseConnection()

    def connected(self, protocol: WorkerProtocol) -> None:
        """
        The connection to the supervisor is up.
        """
        self.remote = protocol
        self.stats.connected = True

    def lost(self, protocol: WorkerProtocol) -> None:
        """
        The connection to the supervisor is gone (so is the supervisor).
        """
        if protocol is self.remote:
            self.remote = None
            self.stats.connected = False

    def _call(self, command: type[amp.Command], **arguments: Any) -> Deferred[Any]:
        if self.remote is None:
            return fail(StateUnavailable("the supervisor's state is unreachable"))

        # A new Deferred: AMP puts its own errback (which drops the
        # connection) at the end of the one callRemote returns, after
        # whatever callbacks the caller adds, such as Throttled's.
        result: Deferred[Any] = Deferred()

        def unavailable(failure: Failure) -> None:
            result.errback(StateUnavailable(failure.getErrorMessage()))

        called: Deferred[Any] = self.remote.callRemote(command, **arguments)
        called.addCallbacks(result.callback, unavailable)
        return result

    def revoke(self, token_id: str, subject: str, until: float) -> None:
        """
        Refuse the token here at once, and at every other worker through
        the supervisor.
        """
        self.revoked.revoke(token_id, subject, until)
        if self.remote is None:
            log.warn("A revocation could not reach the supervisor")
            return
        self.remote.callRemote(
            Revoke,
            tokens=[{"token_id": token_id, "subject": subject, "until": float(until)}],
            users=[],
        )

    def is_revoked(
        self, token_id: str, subject: str, until: float, issued: float = math.inf
    ) -> bool:
        """
        Whether the token is refused, from the local mirror.
        """
        return self.revoked.is_revoked(token_id, subject, until, issued)

    def revoke_user(
        self, subject: str, issued_before: float, until: float
    ) -> Deferred[None]:
        """
        Refuse ``subject``'s tokens issued at or before ``issued_before``,
        here and at every other worker.
        """
        self.revoked.revoke_user(subject, issued_before, until)
        if self.remote is None:
            return fail(StateUnavailable("the supervisor's state is unreachable"))
        self.remote.callRemote(
            Revoke,
            tokens=[],
            users=[
                {
                    "subject": subject,
                    "before": float(issued_before),
                    "until": float(until),
                }
            ],
        )
        # Revoke needs no answer: a later command's answer shows it arrived.
        return self._call(RetryAfter, user="", address="").addCallback(lambda _: None)

    def begin_login(self, user: str, address: str) -> Deferred[ILoginAttempt]:
        """
        Have the supervisor count the login, unless either key is held back.
        """

        def decide(answer: dict[str, Any]) -> ILoginAttempt:
            if answer["retry_after"]:
                raise Throttled(int(answer["retry_after"]))
            return SupervisedLoginAttempt(
                self, user, address, answer.get("user_time"), answer.get("address_time")
            )

        return self._call(BeginLogin, user=user, address=address).addCallback(decide)

    def retry_after(self, user: str, address: str) -> Deferred[Optional[int]]:
        """
        Seconds until a login for these keys may go ahead, or ``None``.
        """
        return self._call(RetryAfter, user=user, address=address).addCallback(
            lambda answer: int(answer["retry_after"]) or None
        )

    def end_login(self, attempt: SupervisedLoginAttempt, succeeded: bool) -> None:
        """
        Tell the supervisor how ``attempt`` ended.
        """

        def failed(failure: Failure) -> None:
            log.warn(
                "A login's outcome could not reach the supervisor ({why})",
                why=failure.getErrorMessage(),
            )

        arguments: dict[str, Any] = {}
        if attempt.user_time is not None:
            arguments["user_time"] = attempt.user_time
        if attempt.address_time is not None:
            arguments["address_time"] = attempt.address_time
        self._call(
            EndLogin,
            user=attempt.user,
            address=attempt.address,
            succeeded=succeeded,
            **arguments,
        ).addErrback(failed)
