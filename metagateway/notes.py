"""
Per-request notes: what the layers learn about a request while answering
it (its route, the token's subject, the upstream's answer, the error given,
its id, when it started), kept in one typed object per request for the
access log, the metrics and each other.

Every layer reaches a request's notes with :func:`notes_of`; this module
imports nothing of the gateway's, so that any layer may.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Optional, Protocol

#: The ``traceparent`` that a call made now on a request's behalf (the
#: credential store's lookup) carries; ``None`` outside such a call. Set
#: by :func:`metagateway.observability.tracing.call_traced`: the stores sit
#: below the layer that knows the request.
outgoing_traceparent: ContextVar[Optional[str]] = ContextVar(
    "metagateway_outgoing_traceparent", default=None
)


class DrainState(Protocol):
    """
    What a request's notes know of the requests in flight
    (:class:`~metagateway.http.drain.InFlight`).
    """

    @property
    def draining(self) -> bool:
        """
        Whether the gateway is draining: answers close their connection.
        """


class RequestNotes:
    """
    The notes on one request. A slotted class (``dataclass(slots=True)``
    needs Python 3.10, and the gateway runs on PyPy 3.9): a request's notes
    cost one small object, and a misspelt field fails at once.

    :ivar route: the route or endpoint label (``BUILD``, ``AUTH`` …;
        ``NONE`` for an unhandled path).
    :ivar login: ``password`` or ``github`` when the request is a login.
    :ivar subject: the subject of the token verified or issued (never the
        token itself).
    :ivar upstream_status: the upstream's status code, once its headers
        arrived.
    :ivar upstream_error: how the upstream failed, when the gateway's error
        code does not say (``truncated``).
    :ivar error: the code of the gateway's JSON error.
    :ivar refused: the status the connection refused the request with,
        part-way through its body.
    :ivar request_id: the request's id, once asked for.
    :ivar started: when the gateway began answering (the recorder's clock).
    :ivar bytes_in: the request body's size in bytes, when known.
    :ivar bytes_in_noted: whether :attr:`bytes_in` was noted (it may be
        noted as unknown, ``None``).
    :ivar early_error: the error a request was refused with before its
        body was read (a ``GatewayError``), answered once it is dispatched.
    :ivar in_flight: the requests in flight the request is counted in.
    :ivar target: where the gateway's root resource routed the request,
        with what it was routed from (its own cache).
    :ivar cors: the CORS policy the answer follows, when it is not every
        origin's (a :class:`~metagateway.cors.CorsPolicy`).
    :ivar closed_by: how a joined WebSocket ended (``ws-client-closed``
        ...), logged in place of the upstream's status.
    :ivar trace: the request's trace context, once asked for (a
        :class:`~metagateway.observability.tracing.TraceContext`).
    """

    __slots__ = (
        "route",
        "login",
        "subject",
        "upstream_status",
        "upstream_error",
        "error",
        "refused",
        "request_id",
        "started",
        "bytes_in",
        "bytes_in_noted",
        "early_error",
        "in_flight",
        "target",
        "cors",
        "closed_by",
        "trace",
    )

    def __init__(self) -> None:
        self.route = "NONE"
        self.login: Optional[str] = None
        self.subject: Optional[str] = None
        self.upstream_status: Optional[int] = None
        self.upstream_error: Optional[str] = None
        self.error: Optional[str] = None
        self.refused: Optional[int] = None
        self.request_id: Optional[str] = None
        self.started: Optional[float] = None
        self.bytes_in: Optional[int] = None
        self.bytes_in_noted = False
        self.early_error: Optional[Exception] = None
        self.in_flight: Optional[DrainState] = None
        self.target: Optional[tuple[Any, ...]] = None
        self.cors: Any = None
        self.closed_by: Optional[str] = None
        self.trace: Any = None

    def draining(self) -> bool:
        """
        Whether the request is answered while the gateway drains.
        """
        in_flight = self.in_flight
        return in_flight is not None and in_flight.draining

    def __repr__(self) -> str:
        fields = ", ".join(
            "%s=%r" % (name, getattr(self, name)) for name in self.__slots__
        )
        return "RequestNotes(%s)" % (fields,)


def notes_of(request: object) -> RequestNotes:
    """
    The notes on ``request`` (any request: the gateway's, or a plain
    Twisted one when the gateway is mounted in another ``Site``), made on
    first use.

    They ride on one attribute rather than ``Componentized.setComponent``:
    ``getComponent`` builds the interface's qualified name on every call,
    several times the cost, and Twisted's plain ``http.Request`` is not
    ``Componentized``.
    """
    try:
        return request.metagateway_notes  # type: ignore[attr-defined,no-any-return]
    except AttributeError:
        return new_notes(request)


def new_notes(request: object) -> RequestNotes:
    """
    Give ``request`` fresh notes, and return them.

    The gateway's request calls this as it is made, so that
    :func:`notes_of` never takes its first-use path (an ``AttributeError``
    raised and caught costs more than the rest of a request's notes).
    """
    notes = RequestNotes()
    request.metagateway_notes = notes  # type: ignore[attr-defined]
    return notes
