"""
The shared security state in Redis (``--state-url redis://...``), through
txredisapi's protocol on the connections of
:mod:`~metagateway.state.redis_link` (made and made again with the injected
reactor, and a backoff), running the Lua scripts of
:mod:`~metagateway.state.redis_scripts`.

Layout in Redis (every key under :data:`PREFIX`):

- ``revoked:token:<token id>``: ``{"s": subject, "u": until}``, expiring at
  ``until``;
- ``revoked:user:<subject>``: ``{"b": issued_before, "u": until}``, expiring
  at ``until``; a later revocation only ever raises both;
- ``fail:user:<key>`` and ``fail:address:<key>``: sorted sets of failed
  logins (member: an attempt id, score: its time), trimmed to the window
  and expiring a window after the last failure;
- the channel ``revocations``: every revocation written is published there,
  as ``{"at": time, "t": [[id, subject, until], ...], "u": [[subject,
  before, until], ...]}``.

Checking a token never talks to Redis: every process keeps the revocations
in a local :class:`~metagateway.state.revocations.RevocationList`, fed by
the channel and fully reloaded each time both connections are (re)made.
On that reload, whatever the process holds that Redis lacks (revocations
made while Redis was unreachable, or lost by a Redis restart) is written
back and published. Logins run one Lua script each, so a count and its
check are one atomic step whatever the number of processes.
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Any, Callable, Optional, Sequence

from zope.interface import implementer

from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from metagateway.config import StateSettings
from metagateway.state.attempts import LoginAttempt
from metagateway.state.interfaces import (
    ILoginAttempt,
    ISecurityState,
    StateUnavailable,
    Throttled,
    retry_seconds,
)
from metagateway.state.redis_link import REPLY_TIMEOUT, RedisConnection, RedisLink
from metagateway.state.redis_scripts import (
    BEGIN_LOGIN,
    END_LOGIN,
    REVOKE,
    REVOKE_USER,
)
from metagateway.state.revocations import RevocationList
from metagateway.state.stats import StateStats

log = Logger(namespace="metagateway.state.redis")

#: Every key and the channel start with this.
PREFIX = "metagateway:"

#: The channel revocations are published on (after :data:`PREFIX`).
CHANNEL = "revocations"

#: Keys read per ``SCAN`` step on a reload.
SCAN_COUNT = 1000

#: Seconds before a write that failed while connected is tried again.
RESYNC_DELAY = 1.0


def _wire(text: str) -> bytes:
    """
    ``text`` as sent to Redis: UTF-8, with lone surrogates (which a JSON
    body can hold) kept rather than refused.
    """
    return text.encode("utf-8", "surrogatepass")


def _text(value: Any) -> str:
    """
    A key read back from Redis (``str`` when it was valid UTF-8, else
    ``bytes``) as the text it was written from.
    """
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogatepass")
    return str(value)


def _ms(seconds: float) -> int:
    """
    Whole milliseconds, at least 1, for ``PX``.
    """
    return max(1, int(math.ceil(seconds * 1000)))


class RedisLoginAttempt(LoginAttempt):
    """
    A login counted in Redis.

    :ivar member: the attempt's id in both sorted sets.
    """

    def __init__(
        self, state: RedisSecurityState, user: str, address: str, member: str
    ) -> None:
        super().__init__(state, user, address)
        self.member = member


@implementer(ISecurityState)
class RedisSecurityState(RedisConnection):
    """
    The security state every process naming the same Redis shares.

    Start it (as a service) to connect; until both connections are up,
    logins fail with :class:`StateUnavailable` and tokens are checked
    against the revocations known so far.

    :param settings: where Redis is.
    :param reactor: connects and times.
    :param now: the current POSIX time (the reactor's ``seconds`` if
        omitted): counts, revocations and their lifetimes use it.
    :param per_user: failures per username per window; 0 = off.
    :param per_address: failures per client address per window; 0 = off.
    :param window: the sliding window, in seconds.
    :param revoked: the local mirror; a new one if omitted.
    :param stats: where the connection's figures are kept (for metrics).
    :param prefix: the key and channel prefix.
    :param endpoint: where to connect; built from ``settings`` if omitted.
    """

    def __init__(
        self,
        settings: StateSettings,
        reactor: Any,
        now: Optional[Callable[[], float]] = None,
        per_user: int = 5,
        per_address: int = 20,
        window: float = 60.0,
        revoked: Optional[RevocationList] = None,
        stats: Optional[StateStats] = None,
        prefix: str = PREFIX,
        endpoint: Optional[IStreamClientEndpoint] = None,
        reply_timeout: float = REPLY_TIMEOUT,
    ) -> None:
        # Channels are not per database: the database is in the name.
        super().__init__(
            settings,
            reactor,
            "%s%s:%d" % (prefix, CHANNEL, settings.db),
            stats if stats is not None else StateStats(),
            endpoint,
            reply_timeout,
        )
        self._now: Callable[[], float] = now if now is not None else reactor.seconds
        self.per_user = per_user
        self.per_address = per_address
        self.window = window
        self.revoked = revoked if revoked is not None else RevocationList(self._now)
        self.prefix = prefix
        #: Both links are up and the mirror has been reloaded since.
        self.synced = False
        self._resync: Optional[IDelayedCall] = None
        self._syncing: Optional[Deferred[None]] = None

    # -- the connections

    def stopService(self) -> Deferred[None]:
        """
        Stop writing back, and close both connections.
        """
        if self._resync is not None and self._resync.active():
            self._resync.cancel()
        self._resync = None
        return super().stopService()

    def connected(self) -> None:
        """
        Both connections are up: reload the mirror (and write back what
        Redis lacks).
        """
        self._start_sync()

    def link_lost(self, link: RedisLink) -> None:
        """
        ``link``'s connection ended: the mirror is no longer known to be
        complete.
        """
        self.synced = False
        super().link_lost(link)

    # -- the mirror

    def _key_token(self, token_id: str) -> str:
        return self.prefix + "revoked:token:" + token_id

    def _key_user(self, subject: str) -> str:
        return self.prefix + "revoked:user:" + subject

    def _key_failures(self, kind: str, key: str) -> bytes:
        return _wire(self.prefix + "fail:" + kind + ":" + key)

    def _message(
        self,
        tokens: Sequence[tuple[str, str, float]] = (),
        users: Sequence[tuple[str, float, float]] = (),
    ) -> str:
        return json.dumps(
            {
                "at": self._now(),
                "t": [list(t) for t in tokens],
                "u": [list(u) for u in users],
            },
            separators=(",", ":"),
        )

    def message_received(self, message: Any) -> None:
        """
        A revocation message arrived on the channel: apply it here.
        """
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        try:
            body = json.loads(message)
            at = float(body.get("at", 0.0))
            tokens = body.get("t", [])
            users = body.get("u", [])
            count = 0
            for token_id, subject, until in tokens:
                self.revoked.revoke(str(token_id), str(subject), float(until))
                count += 1
            for subject, before, until in users:
                self.revoked.revoke_user(str(subject), float(before), float(until))
                count += 1
        except (ValueError, TypeError, AttributeError):
            log.warn("Ignored a malformed message on the revocations channel")
            return
        self.stats.revocations_seen += count
        self.stats.pubsub_lag = max(0.0, self._now() - at)

    def _start_sync(self) -> None:
        if self._syncing is not None:
            return
        syncing = Deferred.fromCoroutine(self._sync())
        self._syncing = syncing

        def done(result: object) -> None:
            self._syncing = None
            if isinstance(result, Failure):
                log.warn(
                    "Reloading the revocations from {url} failed ({why}); retrying",
                    url=self.settings.display(),
                    why=result.getErrorMessage(),
                )
                self._resync_later()

        syncing.addBoth(done)

    def _resync_later(self) -> None:
        if self._resync is None or not self._resync.active():
            self._resync = self.reactor.callLater(RESYNC_DELAY, self._resync_now)

    def _resync_now(self) -> None:
        self._resync = None
        if self.commands.ready and self.events.ready:
            self._start_sync()

    async def _sync(self) -> None:
        """
        Reload every revocation from Redis into the mirror, then write back
        (and publish) what the mirror holds that Redis lacks.
        """
        protocol = self.commands.protocol
        if protocol is None:
            return
        remote_tokens: set[str] = set()
        remote_users: dict[str, float] = {}
        loaded = 0
        cursor = "0"
        pattern = self.prefix + "revoked:*"
        token_prefix = self._key_token("")
        user_prefix = self._key_user("")
        while True:
            reply = await protocol.execute_command(
                "SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_COUNT
            )
            cursor, keys = str(reply[0]), list(reply[1])
            if keys:
                values = await protocol.execute_command("MGET", *keys)
                for raw, value in zip(keys, values):
                    key = _text(raw)
                    if value is None:
                        continue
                    try:
                        body = json.loads(value)
                        until = float(body["u"])
                        if key.startswith(token_prefix):
                            token_id = key[len(token_prefix) :]
                            self.revoked.revoke(token_id, str(body["s"]), until)
                            remote_tokens.add(token_id)
                        elif key.startswith(user_prefix):
                            subject = key[len(user_prefix) :]
                            before = float(body["b"])
                            self.revoked.revoke_user(subject, before, until)
                            remote_users[subject] = before
                        else:
                            continue
                    except (ValueError, TypeError, KeyError, AttributeError):
                        continue
                    loaded += 1
            if cursor == "0":
                break
        self.stats.revocations_seen += loaded
        missing_tokens = [
            entry for entry in self.revoked.entries() if entry[0] not in remote_tokens
        ]
        missing_users = [
            entry
            for entry in self.revoked.user_entries()
            if remote_users.get(entry[0], -math.inf) < entry[1]
        ]
        writes = [self._write_token(*entry, publish=False) for entry in missing_tokens]
        writes += [self._write_user(*entry, publish=False) for entry in missing_users]
        if writes:
            log.info(
                "Wrote {count} revocation(s) held here back to {url}",
                count=len(writes),
                url=self.settings.display(),
            )
            for ok, _ in await DeferredList(writes, consumeErrors=True):
                if not ok:
                    raise StateUnavailable("a revocation could not be written back")
            # One message for the whole batch, in slices of reasonable size.
            step = 500
            for i in range(0, max(len(missing_tokens), len(missing_users)), step):
                await protocol.publish(
                    self.channel,
                    self._message(
                        missing_tokens[i : i + step], missing_users[i : i + step]
                    ),
                )
        self.synced = True

    def _write_token(
        self, token_id: str, subject: str, until: float, publish: bool = True
    ) -> Deferred[Any]:
        value = json.dumps({"s": subject, "u": until}, separators=(",", ":"))
        message = self._message([(token_id, subject, until)]) if publish else ""
        return self._write(REVOKE, self._key_token(token_id), until, [value], message)

    def _write_user(
        self, subject: str, before: float, until: float, publish: bool = True
    ) -> Deferred[Any]:
        message = self._message(users=[(subject, before, until)]) if publish else ""
        return self._write(
            REVOKE_USER,
            self._key_user(subject),
            until,
            ["%.17g" % (before,), "%.17g" % (until,)],
            message,
        )

    def _write(
        self, script: str, key: str, until: float, leading: list[Any], message: str
    ) -> Deferred[Any]:
        """
        Run the revocation ``script`` on ``key``, kept until ``until``:
        its arguments are ``leading``, the milliseconds to live, then the
        channel and ``message`` (both empty: not published).

        :return: fires once Redis has it (at once when ``until`` has
            passed), or fails with :class:`StateUnavailable` when not
            connected.
        """
        protocol = self.commands.protocol
        ttl = until - self._now()
        if protocol is None or not self.commands.ready:
            return fail(StateUnavailable("not connected"))
        if ttl <= 0:
            return succeed(None)
        return protocol.eval(  # type: ignore[no-any-return]
            script,
            [_wire(key)],
            [*leading, _ms(ttl), self.channel if message else "", message],
        )

    # -- ISecurityState

    def revoke(self, token_id: str, subject: str, until: float) -> None:
        """
        Refuse the token here at once, and write and publish it now if Redis
        is reachable (else once it is: the reload writes back what is held
        here).
        """
        self.revoked.revoke(token_id, subject, until)
        if not self.commands.ready:
            # The reload once Redis is back writes it (it is held here).
            return
        self._write_token(token_id, subject, until).addErrback(self._write_failed)

    def _write_failed(self, failure: Failure) -> None:
        log.warn(
            "A revocation could not be written to {url} ({why}); it stays "
            "in force here and is written again later",
            url=self.settings.display(),
            why=failure.getErrorMessage(),
        )
        self._resync_later()

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
        here at once and in Redis.
        """
        self.revoked.revoke_user(subject, issued_before, until)
        if not self.commands.ready:
            return fail(StateUnavailable("the shared state store is unreachable"))
        return self._unavailable(
            self._write_user(subject, issued_before, until)
        ).addCallback(lambda _: None)

    def _unavailable(self, d: Deferred[Any]) -> Deferred[Any]:
        """
        ``d``, with any failure that is not ours turned into
        :class:`StateUnavailable`.
        """

        def convert(failure: Failure) -> Failure:
            if failure.check(Throttled, StateUnavailable):
                return failure
            return Failure(StateUnavailable(failure.getErrorMessage()))

        return d.addErrback(convert)

    def _limits(
        self, user: str, address: str, member: str, record: bool
    ) -> Deferred[Any]:
        protocol = self.commands.protocol
        if protocol is None or not self.commands.ready:
            return fail(StateUnavailable("the shared state store is unreachable"))
        return self._unavailable(
            protocol.eval(
                BEGIN_LOGIN,
                [
                    self._key_failures("user", user),
                    self._key_failures("address", address),
                ],
                [
                    "%.17g" % (self._now(),),
                    "%.17g" % (self.window,),
                    self.per_user,
                    self.per_address,
                    member,
                    "1" if record else "0",
                ],
            )
        )

    def begin_login(self, user: str, address: str) -> Deferred[ILoginAttempt]:
        """
        Count the login in Redis, atomically with the check of both keys.
        """
        member = uuid.uuid4().hex

        def decide(reply: Any) -> ILoginAttempt:
            if str(reply[0]) != "1":
                raise Throttled(retry_seconds(float(reply[1]), self.window))
            return RedisLoginAttempt(self, user, address, member)

        return self._limits(user, address, member, True).addCallback(decide)

    def retry_after(self, user: str, address: str) -> Deferred[Optional[int]]:
        """
        Seconds until a login for these keys may go ahead, or ``None``.
        """

        def decide(reply: Any) -> Optional[int]:
            if str(reply[0]) != "1":
                return retry_seconds(float(reply[1]), self.window)
            return None

        return self._limits(user, address, "", False).addCallback(decide)

    def end_login(self, attempt: RedisLoginAttempt, succeeded: bool) -> None:
        """
        Take ``attempt`` back (from the address, and from the user unless it
        succeeded, which clears the user's count).
        """
        protocol = self.commands.protocol
        if protocol is None or not self.commands.ready:
            log.warn("A login's outcome could not be recorded: state store unreachable")
            return

        def failed(failure: Failure) -> None:
            log.warn(
                "A login's outcome could not be recorded ({why})",
                why=failure.getErrorMessage(),
            )

        protocol.eval(
            END_LOGIN,
            [
                self._key_failures("user", attempt.user),
                self._key_failures("address", attempt.address),
            ],
            [attempt.member, "1" if succeeded else "0"],
        ).addErrback(failed)
