"""
The gateway's own outgoing HTTP calls, from the client side: reading an
answer's body within a bound, and telling a timed-out or cancelled call
from a failed one.

The GitHub sign-in (:mod:`metagateway.auth.github`) and the webhook
fan-out (:mod:`metagateway.proxy.webhooks`) both use these; they import
nothing of the gateway's, so any layer above ``http`` may.
"""

from __future__ import annotations

from typing import NoReturn

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse


class ResponseTooLarge(Exception):
    """
    An answer's body went past the limit it was read with (see
    :func:`read_limited`). The argument is the limit, in bytes.
    """


class _LimitedBody(Protocol):
    """
    Collects a response body up to a limit.
    """

    def __init__(self, limit: int, finished: Deferred[bytes]) -> None:
        self.limit = limit
        self.finished: Deferred[bytes] | None = finished
        self.chunks: list[bytes] = []
        self.received = 0

    def dataReceived(self, data: bytes) -> None:
        if self.finished is None:
            return
        self.received += len(data)
        if self.received > self.limit:
            finished, self.finished = self.finished, None
            self.stop()
            finished.errback(ResponseTooLarge(self.limit))
            return
        self.chunks.append(data)

    def stop(self) -> None:
        """
        Stop reading: close the connection the body arrives on.
        """
        self.finished = None
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = ResponseDone()) -> None:  # type: ignore[assignment]
        finished, self.finished = self.finished, None
        if finished is None:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            finished.callback(b"".join(self.chunks))
        else:
            finished.errback(reason)


def read_limited(response: IResponse, limit: int) -> Deferred[bytes]:
    """
    Read a whole response body, refusing one over ``limit`` bytes.

    Cancelling the Deferred closes the connection.

    :param response: the response.
    :param limit: the largest body accepted, in bytes.
    :return: a Deferred firing with the body; it fails with
        :class:`ResponseTooLarge` past ``limit`` (the connection is then
        closed), or with the transport's failure.
    """
    protocol: _LimitedBody

    def cancel(d: Deferred[bytes]) -> None:
        protocol.stop()

    finished: Deferred[bytes] = Deferred(cancel)
    protocol = _LimitedBody(limit, finished)
    response.deliverBody(protocol)
    return finished


def timed_out(result: object, timeout: float) -> NoReturn:
    """
    The ``onTimeoutCancel`` of :meth:`Deferred.addTimeout` for HTTP calls:
    whatever the cancelled call failed with, report a ``TimeoutError``.

    Cancelling an ``Agent`` request that is waiting for its answer fails it
    with ``ResponseNeverReceived([CancelledError])``, not with the
    ``CancelledError`` that ``addTimeout`` turns into a ``TimeoutError`` by
    default.

    :raises TimeoutError: always.
    """
    raise TimeoutError(f"no answer within {timeout} seconds")


def was_cancelled(error: BaseException) -> bool:
    """
    Whether ``error`` is the failure of a cancelled call: a
    ``CancelledError``, or an ``Agent`` request failure caused by one.
    """
    if isinstance(error, CancelledError):
        return True
    reasons = getattr(error, "reasons", None) or []
    return any(
        isinstance(reason, Failure) and reason.check(CancelledError)
        for reason in reasons
    )
