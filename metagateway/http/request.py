"""
The gateway's request: it starts routing as soon as its headers are in, so
that a proxied body streams upstream as it arrives and an oversized one is
refused before it is read; and :func:`when_done`, which calls a hook once a
request is over.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any, Callable, Optional, Protocol
from urllib.parse import unquote_to_bytes

from zope.interface import Interface, implementer

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest

from metagateway.errors import (
    GatewayError,
    error_response,
    internal_error,
    payload_too_large,
)
from metagateway.http.body import StreamingBody
from metagateway.http.channel import GatewayChannel, IHeadersReceived, bad_request
from metagateway.http.names import TRANSFER_ENCODING
from metagateway.http.twisted_internals import (
    RequestInternals,
    close_after_answer,
    header_map,
    site_of,
)
from metagateway.notes import RequestNotes, new_notes, notes_of
from metagateway.observability.accesslog import note_bytes_in

log = Logger()


def framing_error(headers: Headers) -> Optional[GatewayError]:
    """
    Refuse a body whose framing could be read two ways.

    Twisted's channel already refuses a ``Content-Length`` beside a
    ``Transfer-Encoding``, repeated framing headers and unknown codings; it
    lets ``Transfer-Encoding: identity`` through, which some servers read
    differently. Only a lone ``chunked`` is accepted here.

    :return: the ``400`` to answer, or ``None`` when the framing is sound.
    """
    codings = header_map(headers).get(TRANSFER_ENCODING)
    if not codings:
        return None
    if len(codings) != 1 or codings[0].strip().lower() != b"chunked":
        return bad_request("Unsupported Transfer-Encoding")
    if headers.hasHeader(b"content-length"):
        return bad_request("Both Content-Length and Transfer-Encoding")
    return None


#: What :func:`when_done` hooks are called with: ``None`` once the answer
#: is finished, or the ``Failure`` of a connection lost before that.
DoneHook = Callable[..., object]


def when_done(request: Any, hook: DoneHook, *args: Any) -> None:
    """
    Call ``hook(result, *args)`` once ``request`` is over: ``result`` is
    ``None`` when its answer was finished, else the ``Failure`` its
    connection was lost with, as with ``request.notifyFinish()``.

    The gateway's request (:class:`StreamingRequest`) calls its hooks
    directly, in the order they were added, without a ``Deferred`` for
    each; any other request goes through ``notifyFinish()``.
    """
    # isinstance first: providedBy costs more than the rest of this.
    if isinstance(request, StreamingRequest) or IDoneHooks.providedBy(request):
        request.add_done_hook(hook, args)
    else:
        request.notifyFinish().addBoth(hook, *args)


class IDoneHooks(Interface):
    """
    A request that calls hooks once it is over, without a ``Deferred``
    each (:func:`when_done` uses it when it can).
    """

    def add_done_hook(hook: DoneHook, args: tuple[Any, ...] = ()) -> None:
        """
        Call ``hook(result, *args)`` once the request is over: ``result``
        is ``None`` when its answer was finished, else the ``Failure`` its
        connection was lost with; at once if it is over already.
        """


class EarlyTarget(Protocol):
    """
    What :class:`IEarlyRouting` says of a request.
    """

    @property
    def route(self) -> str:
        """
        The route errors about the request are reported under.
        """

    @property
    def max_body(self) -> int:
        """
        The largest body buffered for the request; ``0`` when it streams.
        """


class IEarlyRouting(Interface):
    """
    A resource that can say where a request goes from its method and path
    alone, while only its head has arrived.
    """

    def classify(request: IRequest) -> EarlyTarget:
        """
        Where ``request`` goes.
        """


@implementer(IDoneHooks, IHeadersReceived)
class StreamingRequest(RequestInternals):
    """
    A request that starts routing as soon as its headers are in.

    On a :class:`GatewayChannel`, once the headers have arrived the site's
    resource is asked (its ``classify(request)``) where the request goes:

    - a proxied route with a body: the request is dispatched at once, and
      its body is fed to :attr:`body_stream` as it arrives, for the proxy
      to stream upstream;
    - anything else: the body is buffered as usual, capped at the target's
      ``max_body`` (``413 PAYLOAD_TOO_LARGE`` past it, answered without
      reading the rest).

    A request without a body (``Content-Length: 0``, or neither it nor
    ``Transfer-Encoding``) is not classified early: it has nothing to
    stream or cap, and the resource classifies it once, as it renders it.
    On any other channel, or under a resource that cannot classify, it is
    an ordinary buffered request.

    :ivar body_stream: the streaming body, when the request streams.
    """

    body_stream: Optional[StreamingBody] = None
    _plan: Optional[str] = None
    _refusal: Optional[GatewayError] = None
    _body_dropped = False
    _body_cap = 0
    _body_seen = 0
    _cap_route = "CORE"
    _body_length: Optional[int] = None
    #: Whether the client waits for "100 Continue" before its body.
    _continue_pending = False
    _done_hooks: Optional[list[tuple[DoneHook, tuple[Any, ...]]]] = None
    #: ``None`` until the request is over; then the hooks' result.
    _done: Optional[tuple[Optional[Failure]]] = None

    #: The request's notes, made with it (:func:`~metagateway.notes.notes_of`
    #: finds them).
    metagateway_notes: RequestNotes

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        new_notes(self)

    def add_done_hook(self, hook: DoneHook, args: tuple[Any, ...] = ()) -> None:
        """
        Call ``hook(result, *args)`` once the request is over (see
        :func:`when_done`); at once if it is over already.
        """
        if self._done is not None:
            self._call_hook(hook, args, self._done[0])
        elif self._done_hooks is None:
            self._done_hooks = [(hook, args)]
        else:
            self._done_hooks.append((hook, args))

    def _over(self, result: Optional[Failure]) -> None:
        if self._done is not None:
            return
        self._done = (result,)
        hooks, self._done_hooks = self._done_hooks, None
        if hooks:
            for hook, args in hooks:
                self._call_hook(hook, args, result)

    @staticmethod
    def _call_hook(
        hook: DoneHook, args: tuple[Any, ...], result: Optional[Failure]
    ) -> None:
        try:
            hook(result, *args)
        except Exception:
            log.failure("Unexpected error once a request was over")

    def length_known(self, length: Optional[int]) -> None:
        """
        Route the request now that its head is in (see the class
        docstring), before any of its body is read.
        """
        channel = self.channel
        if not isinstance(channel, GatewayChannel) or channel.request_line is None:
            super().length_known(length)
            return
        line = channel.request_line
        self.method, self.uri, self.clientproto = line
        self.path = self.uri.split(b"?", 1)[0]
        refusal = framing_error(self.requestHeaders)
        if refusal is not None:
            self._drop_body()
            channel.reject(refusal)
            return
        if length == 0:
            # No body to stream, cap or refuse: the resource classifies the
            # request once, when it renders it.
            super().length_known(length)
            return
        target = self._classify()
        if target is None:
            super().length_known(length)
        elif target.max_body == 0 and length != 0:
            self._plan = "stream"
            self.content = BytesIO()
            self._body_length = length
            expect = self.requestHeaders.getRawHeaders(b"expect")
            if expect and expect[0].lower() == b"100-continue":
                # "100 Continue" once the upstream takes the body, not now:
                # a request refused on its head (a bad token) is answered
                # without inviting the body first (RFC 9110, 10.1.1).
                self.requestHeaders.removeHeader(b"expect")
                self._continue_pending = line[2] == b"HTTP/1.1"
        elif length is not None and target.max_body and length > target.max_body:
            self._refuse_early(payload_too_large(target.route, target.max_body))
        else:
            self._body_cap = target.max_body
            self._cap_route = target.route
            super().length_known(length)

    def _classify(self) -> Optional[EarlyTarget]:
        site = site_of(self.channel)
        if site is None:
            return None
        self.prepath = []
        self.postpath = [unquote_to_bytes(p) for p in self.path[1:].split(b"/")]
        resource = site.getResourceFor(self)
        if not IEarlyRouting.providedBy(resource):
            return None
        target: EarlyTarget = resource.classify(self)
        return target

    def _drop_body(self) -> None:
        self._body_dropped = True
        self.content = BytesIO()
        # No "100 Continue" for a body that will not be read.
        self.requestHeaders.removeHeader(b"expect")

    def _refuse_early(self, error: GatewayError) -> None:
        self._drop_body()
        self._plan = "refuse"
        self._refusal = error

    def headersReceived(self) -> None:
        """
        Called by the channel once the headers are in and Twisted has done
        with them: dispatch now if the request streams or is refused.
        """
        plan, self._plan = self._plan, None
        if plan == "stream":
            self.args = {}
            channel: Any = self.channel
            self.body_stream = StreamingBody(
                self._body_length,
                channel.pause_reading,
                self._continue_then_resume
                if self._continue_pending
                else channel.resume_reading,
            )
            self.process()
        elif plan == "refuse":
            self._dispatch_refusal()

    def _continue_then_resume(self) -> None:
        """
        Read the body on, after telling a client that waits for it that it
        may send it (the first time, and only if no answer has begun).
        """
        channel: Any = self.channel
        if self._continue_pending:
            self._continue_pending = False
            transport = getattr(channel, "transport", None)
            if transport is not None and not self.startedWriting and not self.finished:
                transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        channel.resume_reading()

    def _dispatch_refusal(self) -> None:
        # Through the resource, so that the answer is counted and logged
        # like any other.
        self.args = {}
        notes_of(self).early_error = self._refusal
        self.process()

    def body_chunk(self, data: bytes) -> None:
        """
        Feed ``data`` to the streaming body, or buffer it within the cap
        (``413`` past it, the rest dropped).
        """
        stream = self.body_stream
        if stream is not None:
            stream.feed(data)
            return
        if self._body_dropped:
            return
        if self._body_cap:
            self._body_seen += len(data)
            if self._body_seen > self._body_cap:
                if self.content is not None:
                    self.content.close()
                self._refuse_early(payload_too_large(self._cap_route, self._body_cap))
                self._plan = None
                self._dispatch_refusal()
                return
        super().body_chunk(data)

    def body_complete(self, command: bytes, path: bytes, version: bytes) -> None:
        """
        End the streaming body, or process the buffered request as Twisted
        does (not a request already dispatched or refused).
        """
        stream = self.body_stream
        if stream is not None:
            stream.end()
            return
        if self._body_dropped:
            return
        super().body_complete(command, path, version)

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            channel = getattr(self, "channel", None)
            if channel is not None and (
                (isinstance(channel, GatewayChannel) and channel.receiving_body)
                or self.metagateway_notes.draining()
            ):
                # The connection closes after this answer.
                close_after_answer(channel)
                self.responseHeaders.setRawHeaders(b"Connection", [b"close"])
        super().write(data)

    def finish(self) -> None:
        stream = self.body_stream
        if stream is not None:
            note_bytes_in(self, stream.received)
            stream.abandon()
        super().finish()
        if self.finished:
            self._over(None)

    def connectionLost(self, reason: Failure) -> None:
        stream = self.body_stream
        if stream is not None:
            note_bytes_in(self, stream.received)
        super().connectionLost(reason)
        self._over(reason)
        if stream is not None:
            stream.fail(reason)

    def processingFailed(self, reason: Failure) -> Failure:
        """
        Answer an unexpected failure with the JSON ``500``, never Twisted's
        HTML page; a failure after the answer started closes the connection.
        """
        log.failure("Unexpected error processing a request", reason)
        if self.startedWriting or self.finished:
            transport = getattr(self.channel, "transport", None)
            if transport is not None:
                transport.abortConnection()
            return reason
        body = error_response(self, internal_error())
        self.write(body)
        self.finish()
        return reason
