"""
The access log and per-request metrics.

The gateway's root resource hands each request to a
:class:`RequestRecorder` when it starts; when the request finishes (or the
client goes away) the recorder counts it in the gateway's
:class:`~metagateway.observability.metrics.Metrics` and writes its line to
the :class:`~metagateway.observability.loglines.AccessLog`: straight into a
buffered log, else as one ``twisted.logger`` event in the
``metagateway.access`` namespace.

The other modules leave what only they know in the request's notes
(:class:`~metagateway.notes.RequestNotes`) with the ``note_*`` functions
below:

=================== ==================================== =========================
field               meaning                              set by
=================== ==================================== =========================
``route``           route label (``BUILD``, ``AUTH`` …)  :func:`note_route`
``login``           ``password`` / ``github`` for logins :func:`note_route`
``subject``         the verified token's subject         :func:`note_subject`
``upstream_status`` the upstream's status                :func:`note_upstream`
``upstream_error``  how the upstream failed              :func:`note_upstream`
``error``           code of the gateway's JSON error     ``errors.error_response``
``refused``         status the connection refused with   :func:`note_refused`
``request_id``      the request id                       ``errors.request_id_of``
``bytes_in``        request body bytes                   the recorder, or
                                                         :func:`note_bytes_in`
=================== ==================================== =========================

An event holds the request id, client address, method, path (never the
query string), route, status, bytes in and out, duration, upstream status
or error, error code and token subject: never a header value, a token or
a secret. Nothing is formatted on the request path: the fields are handed
to the observer, which formats them only if it writes them, and then
cheaply (one ``%`` for the text line, one ``%`` of JSON-quoted values for
JSON, rather than Twisted's field-by-field formatter).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from metagateway.errors import request_id_of
from metagateway.notes import RequestNotes, notes_of
from metagateway.observability.loglines import (
    ATOMIC_WRITE,
    EVENT_FORMAT,
    FORMATS,
    JSON_FIELDS,
    JSON_LINE,
    NAMESPACE,
    TEXT_FIELDS,
    TEXT_LINE,
    AccessLine,
    AccessLog,
    BufferedLines,
    JSONLines,
    TextLines,
    json_line,
)
from metagateway.observability.metrics import UPSTREAM_ERRORS, Metrics
from metagateway.observability.tracing import trace_of

__all__ = [
    "ATOMIC_WRITE",
    "EVENT_FORMAT",
    "FORMATS",
    "JSON_FIELDS",
    "JSON_LINE",
    "NAMESPACE",
    "TEXT_FIELDS",
    "TEXT_LINE",
    "AccessLine",
    "AccessLog",
    "BufferedLines",
    "JSONLines",
    "MAX_LOGGED_PATH",
    "RequestRecorder",
    "TextLines",
    "json_line",
    "logged_path",
    "note_bytes_in",
    "note_refused",
    "note_route",
    "note_subject",
    "note_upstream",
]


def note_route(request: IRequest, route: str, login: Optional[str] = None) -> None:
    """
    Record which route (or gateway endpoint) answers ``request``.

    :param route: the label: a route name (``BUILD``, ``KV``, ``CORE``,
        ``BASE``) for proxied requests, else ``AUTH``, ``HEALTH``, ``JWKS``,
        ``WEBHOOK``, ``PREFLIGHT`` (a request never routed stays ``NONE``).
    :param login: ``password`` or ``github`` when the request is a login.
    """
    notes = notes_of(request)
    notes.route = route
    if login is not None:
        notes.login = login


def note_subject(request: IRequest, subject: str) -> None:
    """
    Record the subject (``projectId``) of the token verified or issued for
    ``request``. Never pass the token itself.
    """
    notes_of(request).subject = subject


def note_upstream(
    request: IRequest, status: Optional[int] = None, error: Optional[str] = None
) -> None:
    """
    Record the upstream's answer to ``request``.

    :param status: the upstream's status code, once its headers arrived.
    :param error: how it failed, when the gateway's error code does not say
        (``truncated``: the body broke off).
    """
    notes = notes_of(request)
    if status is not None:
        notes.upstream_status = status
    if error is not None:
        notes.upstream_error = error


def note_refused(request: IRequest, status: int, code: str) -> None:
    """
    Record that the connection refused ``request`` part-way through its
    body (a malformed chunk, say), answering ``status`` and ``code`` on the
    connection itself: its line shows them, not a client that went away.
    """
    notes = notes_of(request)
    notes.refused = status
    notes.error = code


def note_bytes_in(request: IRequest, size: int) -> None:
    """
    Record the size of ``request``'s body, counted as it streamed.
    """
    notes = notes_of(request)
    notes.bytes_in = size
    notes.bytes_in_noted = True


def _bytes_in(request: IRequest) -> Optional[int]:
    length = request.requestHeaders.getRawHeaders(b"content-length")
    if length:
        try:
            return int(length[0])
        except ValueError:
            return None
    content = request.content
    if content is None:
        return 0
    try:
        size = content.seek(0, 2)
        content.seek(0, 0)
        return int(size)
    except Exception:
        return None


#: The logged text of the usual methods.
_METHODS = {
    m: m.decode("ascii")
    for m in (b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS")
}


def _printable(raw: bytes) -> str:
    text = raw.decode("ascii", "backslashreplace")
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text


#: The longest path logged, in bytes; a longer one is cut and ends ``...``
#: (so that a line stays one atomic write to a pipe shared by workers).
MAX_LOGGED_PATH = 1024


def logged_path(request: IRequest) -> str:
    """
    The path of ``request`` as logged: no query string, no scheme or host
    of an absolute-form target, non-printable bytes escaped, at most
    :data:`MAX_LOGGED_PATH` bytes.
    """
    path = request.uri.split(b"?", 1)[0].split(b"#", 1)[0]
    if not path.startswith(b"/"):
        _, sep, rest = path.partition(b"://")
        slash = rest.find(b"/")
        path = rest[slash:] if sep and slash >= 0 else b"/"
    if len(path) > MAX_LOGGED_PATH:
        return _printable(path[:MAX_LOGGED_PATH]) + "..."
    return _printable(path)


class RequestRecorder:
    """
    Counts each request in a gateway's metrics and writes its access-log
    line.

    :param metrics: the gateway's metrics.
    :param seconds: the clock, such as ``reactor.seconds``.
    :param access_log: where lines go; ``None`` writes none.
    :param client: the client address of a request (the peer, or the
        forwarded address behind a trusted proxy).
    """

    def __init__(
        self,
        metrics: Metrics,
        seconds: Callable[[], float],
        access_log: Optional[AccessLog] = None,
        client: Optional[Callable[[IRequest], str]] = None,
    ) -> None:
        self.metrics = metrics
        self.seconds = seconds
        self.access_log = access_log
        self.client = client or _peer

    def started(
        self,
        request: IRequest,
        watch: bool = True,
        notes: Optional[RequestNotes] = None,
    ) -> None:
        """
        Note that the gateway began answering ``request``.

        :param watch: call :meth:`finished` when the request finishes (or
            its connection is lost); pass ``False`` when the caller does.
        :param notes: the request's notes, when the caller has them.
        """
        if notes is None:
            notes = notes_of(request)
        notes.started = self.seconds()
        if self.access_log is not None and not notes.bytes_in_noted:
            notes.bytes_in = _bytes_in(request)
            notes.bytes_in_noted = True
        self.metrics.in_flight += 1
        if watch:
            request.notifyFinish().addBoth(  # type: ignore[attr-defined]
                self.finished, request
            )

    def finished(self, result: Optional[Failure], request: Any) -> None:
        """
        Count ``request`` and write its line: it finished (``result`` is
        ``None``) or its connection was lost (a ``Failure``).
        """
        notes = notes_of(request)
        started = notes.started
        if started is None:
            raise RuntimeError("a request finished that never started")
        duration = self.seconds() - started
        self.metrics.in_flight -= 1
        status, error, upstream_error = _outcome(result, request, notes)
        self._count(request, notes, status, duration, error, upstream_error)
        if self.access_log is not None:
            self._log(
                self.access_log, request, notes, status, duration, error, upstream_error
            )

    def _count(
        self,
        request: Any,
        notes: RequestNotes,
        status: int,
        duration: float,
        error: Optional[str],
        upstream_error: Optional[str],
    ) -> None:
        """
        Count the request in the metrics, and the login if it was one.
        """
        metrics = self.metrics
        metrics.observe_request(
            notes.route, request.method, status, duration, error, upstream_error
        )
        login = notes.login
        if login is not None:
            metrics.observe_login(login, status, error)

    def _log(
        self,
        access_log: AccessLog,
        request: Any,
        notes: RequestNotes,
        status: int,
        duration: float,
        error: Optional[str],
        upstream_error: Optional[str],
    ) -> None:
        """
        Write the request's access-log line: straight into a buffered
        log, else as an event to the log's observer.
        """
        upstream_status = notes.upstream_status
        if upstream_error is None and error is not None:
            # The upstream failure a gateway error stands for, if any.
            upstream_error = UPSTREAM_ERRORS.get(error)
        if notes.closed_by is not None:
            # A joined WebSocket: how it ended (proxy/websocket.py).
            upstream_error = notes.closed_by
        fields = (
            request_id_of(request),
            self.client(request),
            _METHODS.get(request.method) or _printable(request.method),
            logged_path(request),
            notes.route,
            status,
            notes.bytes_in,
            request.sentLength,
            round(duration * 1000, 3),
            upstream_status,
            upstream_error,
            error,
            notes.subject,
            trace_of(request, notes).trace_id,
        )
        if not access_log.add_request(time.time(), fields):
            access_log.observer(_event(access_log, fields))


def _outcome(
    result: Optional[Failure], request: Any, notes: RequestNotes
) -> tuple[int, Optional[str], Optional[str]]:
    """
    The status, error code and upstream error a request is recorded with.
    A request whose connection was lost (``result`` is a ``Failure``)
    before its answer began is a ``499`` (or the status the connection
    refused it with), and without a better error a ``CLIENT_CLOSED``.
    """
    status: int = request.code
    error = notes.error
    upstream_error = notes.upstream_error
    if result is not None:
        # The connection was lost before the answer was complete.
        if not request.startedWriting:
            refused = notes.refused
            status = 499 if refused is None else refused
        if error is None and upstream_error is None:
            error = "CLIENT_CLOSED"
    return status, error, upstream_error


def _event(access_log: AccessLog, fields: tuple[Any, ...]) -> dict[str, Any]:
    """
    The access-log event of a request, from the values of
    :data:`JSON_FIELDS`: what ``Logger.emit`` builds, without its per-call
    level validation, plus the :class:`AccessLine` of a text log.
    """
    (
        request_id,
        client,
        method,
        path,
        route,
        status,
        bytes_in,
        bytes_out,
        duration_ms,
        upstream_status,
        upstream_error,
        error,
        subject,
        trace_id,
    ) = fields
    upstream = upstream_error if upstream_error is not None else upstream_status
    event = {
        "log_logger": access_log.logger,
        "log_level": LogLevel.info,
        "log_namespace": NAMESPACE,
        "log_source": None,
        "log_format": EVENT_FORMAT,
        "log_time": time.time(),
        "request_id": request_id,
        "client": client,
        "method": method,
        "path": path,
        "route": route,
        "status": status,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "duration_ms": duration_ms,
        "upstream": upstream,
        "upstream_status": upstream_status,
        "upstream_error": upstream_error,
        "error": error,
        "subject": subject,
        "trace_id": trace_id,
    }
    if access_log.text:
        event["access_line"] = AccessLine(
            (
                client,
                method,
                path,
                route,
                status,
                bytes_in,
                bytes_out,
                duration_ms,
                upstream,
                error,
                subject,
                request_id,
                trace_id,
            )
        )
    return event


def _peer(request: IRequest) -> str:
    return str(getattr(request.getClientAddress(), "host", None) or "-")
