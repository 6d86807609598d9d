"""
The request body producer: a client's body handed to the upstream as it
arrives, with flow control both ways.

:class:`StreamingBody` sits between the gateway's request (which feeds it
each piece of body the client sends) and the ``Agent`` (which consumes it as
an :class:`~twisted.web.iweb.IBodyProducer`). While the upstream cannot take
more, or before it has started to take any, reading from the client is
paused; it resumes when the upstream asks for more. At most one network read
(about 64 KiB) is held here at a time, whatever the body's size.
"""

from __future__ import annotations

from typing import Callable, Optional

from zope.interface import implementer

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer


class BodyTooLarge(Exception):
    """
    The client sent more body than the configured limit.
    """


class BodyAbandoned(Exception):
    """
    The request was answered before its body was complete; the rest of the
    body is dropped and never reaches the upstream.
    """


class BodyListener:
    """
    What a :class:`StreamingBody` tells the one relaying it; every method
    does nothing here, subclasses pick what they need.
    """

    def upstream_waiting(self) -> None:
        """
        The upstream is holding the body up: it paused it, or has the whole
        of it and owes an answer.
        """

    def upstream_reading(self) -> None:
        """
        The upstream takes body again; any wait is now the client's.
        """

    def body_too_large(self) -> None:
        """
        The body went past its limit; nothing more will be fed upstream.
        """


@implementer(IBodyProducer)
class StreamingBody:
    """
    A request body produced for the upstream while the client is still
    sending it.

    The request side calls :meth:`feed` with each piece of body, then
    :meth:`end` (all received) or :meth:`fail` (the client went away, or
    the framing broke). The ``Agent`` calls :meth:`startProducing`, and the
    upstream connection pauses and resumes it.

    :param length: the declared ``Content-Length``, or ``None`` for a
        chunked body.
    :param pause_client: stops reading from the client.
    :param resume_client: resumes reading from the client.
    :param limit: the largest body accepted, in bytes; 0 for no limit.

    :ivar received: bytes fed so far.
    :ivar complete: whether the client has sent the whole body.
    :ivar listener: told when the upstream holds the body up, and when the
        body goes past its limit.
    """

    def __init__(
        self,
        length: Optional[int],
        pause_client: Callable[[], None],
        resume_client: Callable[[], None],
        limit: int = 0,
    ) -> None:
        self.length = UNKNOWN_LENGTH if length is None else length
        self.limit = limit
        self.received = 0
        self.complete = False
        self.listener = BodyListener()
        self._pause_client = pause_client
        self._resume_client = resume_client
        self._consumer: Optional[IConsumer] = None
        self._pending: list[bytes] = []
        self._producing: Optional[Deferred[None]] = None
        self._upstream_paused = False
        self._stopped = False
        self._failure: Optional[Failure] = None
        # Nothing takes the body until the Agent has a connection.
        self._pause_client()

    @property
    def stopped(self) -> bool:
        """
        Whether the body is no longer wanted: the upstream stopped it, it
        failed or went past its limit, or it was abandoned.
        """
        return self._stopped or self._failure is not None

    # The request's side.

    def feed(self, data: bytes) -> None:
        """
        One more piece of the client's body.

        Dropped once the body is no longer wanted. Past the limit, the
        listener is told and the body fails with :class:`BodyTooLarge`.
        """
        if self.stopped:
            return
        self.received += len(data)
        if self.limit and self.received > self.limit:
            self._pending = []
            self.listener.body_too_large()
            self.fail(Failure(BodyTooLarge(self.limit)))
            return
        if self._consumer is not None:
            self._consumer.write(data)
        else:
            self._pending.append(data)
        if self._consumer is None or self._upstream_paused:
            # Someone else (the channel, when the client reads slowly) may
            # have resumed reading; hold the client again.
            self._pause_client()

    def end(self) -> None:
        """
        The client has sent the whole body.
        """
        if self.complete:
            return
        self.complete = True
        if self.stopped:
            return
        if self._producing is not None and not self._producing.called:
            self.listener.upstream_waiting()
            self._producing.callback(None)

    def fail(self, reason: Failure) -> None:
        """
        The body cannot be completed: the upstream must never see it as
        whole. Fails the Deferred :meth:`startProducing` returned, so the
        ``Agent`` drops the upstream connection.
        """
        if self.stopped:
            return
        self._failure = reason
        self._pending = []
        producing = self._producing
        if producing is not None and not producing.called:
            producing.errback(reason)

    def abandon(self) -> None:
        """
        The answer has been given without the rest of the body (an error,
        or an upstream that answered early); drop whatever comes.
        """
        if not self.complete:
            self.fail(Failure(BodyAbandoned()))

    # IBodyProducer: the Agent's side.

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        """
        Start writing the body to ``consumer``: what has arrived already,
        then each piece as it arrives.

        :return: a Deferred firing with ``None`` once the whole body is
            written, or failing if the body cannot be completed.
        """
        producing: Deferred[None] = Deferred(self._cancelled)
        self._producing = producing
        if self._failure is not None:
            producing.errback(self._failure)
            return producing
        self._consumer = consumer
        pending, self._pending = self._pending, []
        for data in pending:
            consumer.write(data)
        if self.complete:
            self.listener.upstream_waiting()
            producing.callback(None)
        else:
            self.listener.upstream_reading()
            if not self._upstream_paused:
                self._resume_client()
        return producing

    def pauseProducing(self) -> None:
        """
        The upstream's send buffer is full: stop reading from the client.
        """
        self._upstream_paused = True
        self._pause_client()
        if not self.stopped:
            self.listener.upstream_waiting()

    def resumeProducing(self) -> None:
        """
        The upstream takes more: read from the client again.
        """
        self._upstream_paused = False
        if self.stopped or self.complete or self._consumer is None:
            return
        self.listener.upstream_reading()
        self._resume_client()

    def stopProducing(self) -> None:
        """
        The upstream wants no more of the body (its connection closed, or
        the request was cancelled); the Deferred never fires.
        """
        self._stopped = True
        self._consumer = None
        self._pending = []

    def _cancelled(self, producing: Deferred[None]) -> None:
        self.stopProducing()
