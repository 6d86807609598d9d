"""
Trace context (W3C Trace Context: ``traceparent``, ``tracestate``) and the
optional OpenTelemetry bridge (:ref:`contract-observability`).

Every request the gateway passes on belongs to a trace. A valid incoming
``traceparent`` is continued: the upstream (and each webhook target) gets
the same trace id, the gateway's own span id as its parent, the same
flags, and the ``tracestate`` unchanged. A missing or invalid one starts a
new trace, ``00-<32 hex>-<16 hex>-01``. The request's
:class:`TraceContext` lives in its notes (``notes.trace``), made on first
use by :func:`trace_of`; the access log writes its trace id.

With the ``otel`` extra installed (``opentelemetry-sdk`` and
``opentelemetry-exporter-otlp-proto-http``) and the standard ``OTEL_*``
variables naming an exporter
(:func:`metagateway.observability.otel.tracing_from_environ`), the gateway
also records spans: a server span per request (route, status, user,
upstream) with child spans for the upstream call, the credential lookup
and the password check. Without either, nothing of OpenTelemetry is
imported and a request costs what it did: the bridge is one
:class:`TracingRecorder` chosen at start, not a test on every request.
"""

from __future__ import annotations

import random
import re
from typing import Any, Callable, Optional, TypeVar

from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest

from metagateway.notes import RequestNotes, notes_of, outgoing_traceparent

_T = TypeVar("_T")

#: ``version-traceid-parentid-flags``, lower-case hex only; a version
#: other than ``00`` may be followed by more fields, after a ``-``.
_TRACEPARENT = re.compile(
    rb"\A([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\Z", re.S
)

_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16

#: Ids need to be unique, not secret: a seeded Mersenne Twister is a few
#: times cheaper than ``os.urandom`` (a system call per id).
_random = random.Random()


def new_trace_id() -> str:
    """
    A fresh trace id: 32 lower-case hex digits, never all zero.
    """
    bits = _random.getrandbits(128)
    while not bits:
        bits = _random.getrandbits(128)
    return "%032x" % (bits,)


def new_span_id() -> str:
    """
    A fresh span id: 16 lower-case hex digits, never all zero.
    """
    bits = _random.getrandbits(64)
    while not bits:
        bits = _random.getrandbits(64)
    return "%016x" % (bits,)


def parse_traceparent(value: bytes) -> Optional[tuple[str, str, str]]:
    """
    Parse one ``traceparent`` value as W3C Trace Context (level 1) says.

    Version ``00`` is exactly ``00-<trace id>-<parent id>-<flags>``; a
    later version (but never ``ff``) may add fields after another ``-``,
    which are ignored. Hex must be lower-case; an all-zero trace or parent
    id is invalid. Surrounding spaces and tabs are allowed.

    :return: the trace id, parent id and flags, as text; ``None`` when the
        value is invalid.
    """
    match = _TRACEPARENT.match(value.strip(b" \t"))
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    if version == b"ff" or (version == b"00" and rest is not None):
        return None
    trace = trace_id.decode("ascii")
    parent = parent_id.decode("ascii")
    if trace == _ZERO_TRACE or parent == _ZERO_SPAN:
        return None
    return trace, parent, flags.decode("ascii")


class TraceContext:
    """
    One request's place in its trace.

    :ivar trace_id: the trace's id, 32 hex digits.
    :ivar span_id: the gateway's own span id for the request, 16 hex digits.
    :ivar parent_id: the caller's span id, when its ``traceparent`` was
        continued; ``None`` for a new trace.
    :ivar flags: the trace flags, 2 hex digits (``01``: sampled).
    :ivar state: the incoming ``tracestate`` (several headers joined with
        ``,``), passed on unchanged; ``None`` for a new trace.
    :ivar span: the OpenTelemetry server span, when spans are recorded.
    :ivar tracing: the :class:`~metagateway.observability.otel.OpenTelemetryTracing`
        that made the span.
    """

    __slots__ = (
        "trace_id",
        "span_id",
        "parent_id",
        "flags",
        "state",
        "span",
        "tracing",
    )

    def __init__(
        self,
        trace_id: str,
        span_id: str,
        parent_id: Optional[str] = None,
        flags: str = "01",
        state: Optional[bytes] = None,
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.flags = flags
        self.state = state
        self.span: Any = None
        self.tracing: Any = None

    def traceparent(self, span_id: Optional[str] = None) -> bytes:
        """
        The ``traceparent`` sent on: version ``00``, this trace, the
        gateway's span (or ``span_id``) as the parent, the same flags.
        """
        return (
            "00-%s-%s-%s" % (self.trace_id, span_id or self.span_id, self.flags)
        ).encode("ascii")

    def set_headers(self, headers: Headers, span_id: Optional[str] = None) -> None:
        """
        Put this trace's ``traceparent`` (and the ``tracestate`` it
        continues, if any) in ``headers``, replacing any there.
        """
        headers.setRawHeaders(b"traceparent", [self.traceparent(span_id)])
        if self.state is not None:
            headers.setRawHeaders(b"tracestate", [self.state])
        else:
            headers.removeHeader(b"tracestate")

    def __repr__(self) -> str:
        return "<TraceContext %s>" % (self.traceparent().decode("ascii"),)


def incoming_trace(headers: Headers) -> Optional[tuple[str, str, str, Optional[bytes]]]:
    """
    The trace a request's headers continue: the trace id, parent id and
    flags of its one valid ``traceparent`` (several are invalid), and its
    ``tracestate`` (several joined with ``,``); ``None`` when there is none
    to continue.
    """
    values = headers.getRawHeaders(b"traceparent")
    if not values or len(values) != 1:
        return None
    parsed = parse_traceparent(values[0])
    if parsed is None:
        return None
    states = headers.getRawHeaders(b"tracestate")
    state = b",".join(states) if states else None
    return parsed[0], parsed[1], parsed[2], state


def start_trace(headers: Headers) -> TraceContext:
    """
    The trace context of a request with ``headers``: its caller's trace
    continued, or a new trace.
    """
    if headers.hasHeader(b"traceparent"):
        incoming = incoming_trace(headers)
        if incoming is not None:
            trace_id, parent_id, flags, state = incoming
            return TraceContext(trace_id, new_span_id(), parent_id, flags, state)
    # Both ids from one draw: a new trace is the usual case.
    ids = "%048x" % (_random.getrandbits(192),)
    trace_id = ids[:32]
    span_id = ids[32:]
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return TraceContext(new_trace_id(), new_span_id())
    return TraceContext(trace_id, span_id)


def trace_of(request: Any, notes: Optional[RequestNotes] = None) -> TraceContext:
    """
    The trace context of ``request``, made on first use (kept in its
    notes).

    :param notes: the request's notes, when the caller has them.
    """
    if notes is None:
        notes = notes_of(request)
    trace: Optional[TraceContext] = notes.trace
    if trace is None:
        trace = notes.trace = start_trace(request.requestHeaders)
    return trace


def child_span(request: IRequest, name: str, kind: str = "internal") -> Any:
    """
    Start a child span of ``request``'s server span, when spans are
    recorded; else ``None`` (at the cost of one attribute read).

    :param name: the span's name (``credentials.lookup``, ...).
    :param kind: ``internal`` or ``client``.
    :return: the span, to end with :func:`end_span`; or ``None``.
    """
    trace = notes_of(request).trace
    if trace is None or trace.tracing is None:
        return None
    return trace.tracing.child(trace, name, kind)


def upstream_span(request: IRequest, headers: Headers, url: bytes) -> Any:
    """
    Start the client span of a call upstream, when spans are recorded, and
    make ``headers``' ``traceparent`` name it as the upstream's parent.

    :param url: the URL called (its query is not recorded).
    :return: the span, to end with :func:`end_span`; or ``None``.
    """
    trace = notes_of(request).trace
    if trace is None or trace.tracing is None:
        return None
    tracing = trace.tracing
    span = tracing.child(trace, "upstream", "client")
    target = url.split(b"?", 1)[0].decode("ascii", "replace")
    span.set_attribute("url.full", target)
    if trace.span is not None:
        trace.span.set_attribute("metagateway.upstream", target)
    trace.set_headers(headers, tracing.span_id(span))
    return span


def end_span(
    span: Any, status: Optional[int] = None, error: Optional[str] = None
) -> None:
    """
    End a span from :func:`child_span` or :func:`upstream_span`; nothing
    for ``None``.

    :param status: the HTTP status the call got, if any.
    :param error: why it failed, if it did.
    """
    if span is None:
        return
    if status is not None:
        span.set_attribute("http.response.status_code", status)
    if error is not None:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, error))
    span.end()


def call_traced(request: IRequest, span: Any, call: Callable[[], _T]) -> _T:
    """
    Make ``call`` (which starts a call on ``request``'s behalf, such as a
    credential-store lookup) with
    :data:`~metagateway.notes.outgoing_traceparent` naming ``request``'s
    trace, and ``span`` (from :func:`child_span`) as the parent when spans
    are recorded. A store that makes HTTP calls (R2) sends it on; the
    Deferred ``call`` returns keeps it for its later steps.
    """
    trace = trace_of(request)
    span_id = None if span is None else trace.tracing.span_id(span)
    token = outgoing_traceparent.set(trace.traceparent(span_id).decode("ascii"))
    try:
        return call()
    finally:
        outgoing_traceparent.reset(token)
