"""
Tests for :mod:`metagateway.http.client`: bounded reading of an answer's
body, and telling timed-out and cancelled calls apart.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss

from metagateway.http.client import (
    ResponseTooLarge,
    read_limited,
    timed_out,
    was_cancelled,
)


class FakeResponse:
    """
    The body-delivering part of an ``IResponse``: the protocol given to
    :meth:`deliverBody` is connected to a ``StringTransport``.

    :ivar protocol: the protocol the body is delivered to.
    :ivar transport: its transport.
    """

    def __init__(self) -> None:
        self.protocol: Protocol | None = None
        self.transport = StringTransport()

    def deliverBody(self, protocol: Protocol) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)

    def send(self, *chunks: bytes) -> None:
        """
        Deliver ``chunks`` of body.
        """
        assert self.protocol is not None
        for chunk in chunks:
            self.protocol.dataReceived(chunk)

    def end(self, reason: Any = ResponseDone()) -> None:
        """
        End the body with ``reason``.
        """
        assert self.protocol is not None
        self.protocol.connectionLost(Failure(reason))


class ReadLimitedTests(SynchronousTestCase):
    """
    :func:`read_limited`.
    """

    def read(self, limit: int = 10) -> tuple[FakeResponse, Deferred[bytes]]:
        response = FakeResponse()
        return response, read_limited(response, limit)  # type: ignore[arg-type]

    def test_whole_body(self) -> None:
        """
        A body up to the limit, complete or close-delimited, is the result.
        """
        for reason in (ResponseDone(), PotentialDataLoss()):
            response, d = self.read()
            response.send(b"12345", b"67890")
            self.assertNoResult(d)
            response.end(reason)
            self.assertEqual(self.successResultOf(d), b"1234567890")

    def test_too_large(self) -> None:
        """
        A byte past the limit fails the read with
        :class:`ResponseTooLarge` at once, and stops the connection; what
        follows is ignored.
        """
        response, d = self.read()
        response.send(b"12345", b"678901")
        failure = self.failureResultOf(d, ResponseTooLarge)
        self.assertEqual(failure.value.args, (10,))
        self.assertEqual(response.transport.producerState, "stopped")
        response.send(b"more")
        response.end()

    def test_transport_failure(self) -> None:
        """
        A body cut short fails the read with the transport's failure.
        """
        response, d = self.read()
        response.send(b"123")
        response.end(ResponseFailed([Failure(ConnectionLost())]))
        self.failureResultOf(d, ResponseFailed)

    def test_cancel(self) -> None:
        """
        Cancelling the read stops the connection.
        """
        response, d = self.read()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(response.transport.producerState, "stopped")
        response.end()


class TimeoutTests(SynchronousTestCase):
    """
    :func:`timed_out` and :func:`was_cancelled`.
    """

    def test_timed_out(self) -> None:
        """
        As ``onTimeoutCancel``, a call failing any way once cancelled is
        reported as a ``TimeoutError`` naming the timeout.
        """
        clock = Clock()
        d: Deferred[None] = Deferred(
            lambda d: d.errback(ResponseFailed([Failure(CancelledError())]))
        )
        d.addTimeout(5, clock, timed_out)
        clock.advance(5)
        failure = self.failureResultOf(d, TimeoutError)
        self.assertIn("5 seconds", str(failure.value))

    def test_was_cancelled(self) -> None:
        """
        A ``CancelledError``, or an agent failure caused by one, is a
        cancellation; other failures are not.
        """
        self.assertTrue(was_cancelled(CancelledError()))
        self.assertTrue(was_cancelled(ResponseFailed([Failure(CancelledError())])))
        self.assertFalse(was_cancelled(ResponseFailed([Failure(ConnectionLost())])))
        self.assertFalse(was_cancelled(TimeoutError()))
