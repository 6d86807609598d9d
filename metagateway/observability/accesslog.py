"""
The access log and per-request metrics.

The gateway's root resource hands each request to a
:class:`RequestRecorder` when it starts; when the request finishes (or the
client goes away) the recorder counts it in the gateway's
:class:`~metagateway.observability.metrics.Metrics` and emits one ``twisted.logger``
event in the ``metagateway.access`` namespace.

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
``trace``           the trace context                    ``tracing.trace_of``
=================== ==================================== =========================

An event holds the request id, client address, method, path (never the
query string), route, status, bytes in and out, duration, upstream status
or error, error code, token subject and trace id: never a header value, a token or
a secret. Nothing is formatted on the request path: the fields are handed
to the observer, which formats them only if it writes them, and then
cheaply (one ``%`` for the text line, one ``%`` of JSON-quoted values for
JSON, rather than Twisted's field-by-field formatter).
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from json.encoder import encode_basestring_ascii as _quote
from math import isfinite
from typing import IO, Any, Callable, Iterable, Optional

from zope.interface import implementer

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import FileLogObserver, ILogObserver, Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from metagateway.errors import request_id_of
from metagateway.notes import RequestNotes, notes_of
from metagateway.observability.metrics import UPSTREAM_ERRORS, Metrics
from metagateway.observability.tracing import trace_of

#: The namespace of access-log events.
NAMESPACE = "metagateway.access"

#: The access-log formats ``--access-log`` accepts.
FORMATS = ("text", "json", "off")

#: The text line of an access-log event, ``%``-formatted from the values of
#: :data:`TEXT_FIELDS` (a missing value reads ``-``).
TEXT_LINE = (
    '%s "%s %s" %s %s in=%s out=%s %.1fms upstream=%s error=%s subject=%s id=%s '
    "trace=%s"
)

#: The event keys the text line is made of, in order.
TEXT_FIELDS = (
    "client",
    "method",
    "path",
    "route",
    "status",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "upstream",
    "error",
    "subject",
    "request_id",
    "trace_id",
)

#: An access-log event's ``log_format``: the one :class:`AccessLine` field.
EVENT_FORMAT = "{access_line}"


class AccessLine:
    """
    The text of an access-log event, formatted only when an observer
    formats the event.

    :param values: the values of :data:`TEXT_FIELDS`, ``None`` for missing.
    """

    __slots__ = ("values",)

    def __init__(self, values: tuple[Any, ...]) -> None:
        self.values = values

    def __str__(self) -> str:
        values = ["-" if v is None else v for v in self.values]
        # The values a client can choose freely: the forwarded address, the
        # subject (a username) and the request id (the path is escaped
        # already, and cannot hold a space).
        for index in (0, 10, 11):
            values[index] = _one_word(str(values[index]))
        return TEXT_LINE % tuple(values)

    def __repr__(self) -> str:
        return "<AccessLine %s>" % (self,)


def _one_word(text: str) -> str:
    """
    ``text`` as one word of the text line: a space (possible in a client's
    ``X-Request-Id``, a username or a forwarded address) is written
    ``%20`` and ``%`` itself ``%25``, so that no value can pass for
    another field (``id=x subject=root``).
    """
    if " " not in text and "%" not in text:
        return text
    return text.replace("%", "%25").replace(" ", "%20")


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


_encode = json.JSONEncoder(separators=(",", ":")).encode


class JSONLines:
    """
    Formats access-log events as JSON lines, for a ``FileLogObserver``.

    Each line holds a ``time`` (ISO 8601 UTC with milliseconds) and every
    field under its JSON name, ``null`` when missing.
    """

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def _time(self, when: float) -> str:
        second = int(when)
        if second != self._second:
            self._second = second
            self._prefix = datetime.fromtimestamp(second, timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%S"
            )
        return "%s.%03dZ" % (self._prefix, int((when - second) * 1000))

    def __call__(self, event: dict[str, Any]) -> str:
        """
        One line of JSON, newline included.
        """
        return self.line(
            event.get("log_time") or time.time(), map(event.get, JSON_FIELDS)
        )

    def line(self, when: float, fields: Iterable[Any]) -> str:
        """
        One line of JSON, newline included, from the time of the event and
        the values of :data:`JSON_FIELDS`, in that order.
        """
        values = [self._time(when)]
        append = values.append
        # The usual types here, in one loop; the rest through _json().
        for value in fields:
            kind = value.__class__
            if kind is str:
                append(_quote(value))
            elif value is None:
                append("null")
            elif kind is int:
                append(int.__repr__(value))
            else:
                append(_json(value))
        return JSON_LINE % tuple(values)

    def request_line(self, when: float, fields: tuple[Any, ...]) -> str:
        """
        :meth:`line` for a request recorded by :class:`RequestRecorder`,
        whose fields have known types: the texts are ``str``, the status
        and byte counts ``int``, the duration a ``float``, and the error
        codes, the subject, the upstream status and ``bytesIn`` may be
        ``None``. Each
        is written directly rather than through :meth:`line`'s loop; a
        field of another type makes it fall back to :meth:`line`. Same
        text either way.
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
        try:
            if isfinite(duration_ms):
                return JSON_LINE % (
                    self._time(when),
                    _quote(request_id),
                    _quote(client),
                    _quote(method),
                    _quote(path),
                    _quote(route),
                    int.__repr__(status),
                    "null" if bytes_in is None else int.__repr__(bytes_in),
                    int.__repr__(bytes_out),
                    float.__repr__(duration_ms),
                    "null"
                    if upstream_status is None
                    else int.__repr__(upstream_status),
                    "null" if upstream_error is None else _quote(upstream_error),
                    "null" if error is None else _quote(error),
                    "null" if subject is None else _quote(subject),
                    _quote(trace_id),
                )
        except TypeError:
            pass
        # A field of another type, or a duration JSON writes as NaN or
        # Infinity.
        return self.line(when, fields)


#: The event keys of a JSON line, in the order of :data:`JSON_LINE`.
JSON_FIELDS = (
    "request_id",
    "client",
    "method",
    "path",
    "route",
    "status",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "upstream_status",
    "upstream_error",
    "error",
    "subject",
    "trace_id",
)


#: A JSON access-log line: what ``json.dumps`` with compact separators
#: writes for the fields in this order (see :meth:`JSONLines.line`).
JSON_LINE = (
    '{"time":"%s","requestId":%s,"client":%s,"method":%s,"path":%s,'
    '"route":%s,"status":%s,"bytesIn":%s,"bytesOut":%s,"durationMs":%s,'
    '"upstreamStatus":%s,"upstreamError":%s,"error":%s,"subject":%s,'
    '"traceId":%s}\n'
)


def _json(value: Any) -> str:
    """
    ``value`` as ``json.dumps`` writes it (ASCII only), for the fields that
    are not a ``str``, ``None`` or an ``int`` (:meth:`JSONLines.line` writes
    those itself): a finite ``float`` quickly, anything else through
    ``json.dumps``.
    """
    if value.__class__ is float and isfinite(value):
        return float.__repr__(value)
    return _encode(value)


def json_line(event: dict[str, Any]) -> str:
    """
    Format an access-log event as one line of JSON (see :class:`JSONLines`).
    """
    return JSONLines()(event)


#: The most bytes written to the stream at once: a pipe takes a write of
#: up to this size whole (POSIX ``PIPE_BUF``), so that lines from workers
#: sharing one pipe never interleave mid-line.
ATOMIC_WRITE = 4096


@implementer(ILogObserver)
class BufferedLines:
    """
    A log observer that formats events into lines and writes them in
    batches: held in memory for at most ``delay`` seconds (or until
    ``max_buffered`` characters wait), then written, whole lines at a time,
    in writes of at most :data:`ATOMIC_WRITE` bytes, each flushed.

    Writing and flushing once per line costs a system call per request;
    this costs one per few dozen lines. Call :meth:`flush` when stopping,
    so that no line is lost.

    :param out: the stream the lines go to.
    :param formatter: formats an event as one line, newline included (or
        ``None`` to write nothing).
    :param clock: schedules the delayed write.
    :param delay: the longest a line waits, in seconds.
    :param max_buffered: write at once when this many characters wait.
    """

    def __init__(
        self,
        out: IO[str],
        formatter: Callable[[dict[str, Any]], Optional[str]],
        clock: IReactorTime,
        delay: float = 0.5,
        max_buffered: int = 64 * 1024,
    ) -> None:
        self.out = out
        self.formatter = formatter
        self.clock = clock
        self.delay = delay
        self.max_buffered = max_buffered
        self._lines: list[str] = []
        self._size = 0
        self._call: Optional[IDelayedCall] = None

    def __call__(self, event: dict[str, Any]) -> None:
        text = self.formatter(event)
        if text:
            self.add(text)

    def add(self, text: str) -> None:
        """
        Buffer one formatted line (newline included).
        """
        self._lines.append(text)
        self._size += len(text)
        if self._size >= self.max_buffered:
            self.flush()
        elif self._call is None:
            self._call = self.clock.callLater(self.delay, self._timer)

    def _timer(self) -> None:
        self._call = None
        self.flush()

    def flush(self) -> None:
        """
        Write every waiting line now.
        """
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        lines, self._lines = self._lines, []
        self._size = 0
        chunk: list[str] = []
        size = 0
        for line in lines:
            if chunk and size + len(line) > ATOMIC_WRITE:
                self._write("".join(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._write("".join(chunk))

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


class AccessLog:
    """
    Where access-log events go, and in which form.

    :param form: ``text``: events go to the global log publisher (``twistd``
        writes them as ``[metagateway.access#info] 127.0.0.1 "GET /build/x"
        BUILD 200 …``); ``json``: one JSON object per line to ``out``.
    :param out: the stream JSON lines are written to.
    :param observer: where events go instead (tests).
    :param clock: with ``json``, buffer the lines (:class:`BufferedLines`,
        written within ``flush_delay`` seconds; call :meth:`flush` when
        stopping) instead of writing and flushing each one as it comes.
    :param flush_delay: the longest a buffered line waits, in seconds.
    """

    def __init__(
        self,
        form: str = "text",
        out: Optional[IO[str]] = None,
        observer: Optional[ILogObserver] = None,
        clock: Optional[IReactorTime] = None,
        flush_delay: float = 0.5,
    ) -> None:
        if form not in ("text", "json"):
            raise ValueError("access log format must be text or json, not %r" % (form,))
        self.form = form
        self._buffer: Optional[BufferedLines] = None
        #: formats the lines of a buffered JSON log.
        self.json_lines: Optional[JSONLines] = None
        if observer is None and form == "json":
            if out is None:
                raise ValueError("a JSON access log needs a stream")
            if clock is not None:
                self.json_lines = JSONLines()
                self._buffer = BufferedLines(out, self.json_lines, clock, flush_delay)
                observer = self._buffer
            else:
                observer = FileLogObserver(out, JSONLines())
        self.logger = Logger(namespace=NAMESPACE, observer=observer)
        self.observer = self.logger.observer
        #: whether events carry an :class:`AccessLine` (text form).
        self.text = form == "text"

    def add_json(self, when: float, fields: tuple[Any, ...]) -> bool:
        """
        Buffer the JSON line of a request straight from its fields (the
        values of :data:`JSON_FIELDS`), without building a log event, when
        this is a buffered JSON log (nothing else observes its events).

        :return: whether the line was taken; if not, emit an event.
        """
        if self._buffer is None or self.json_lines is None:
            return False
        self._buffer.add(self.json_lines.request_line(when, fields))
        return True

    def flush(self) -> None:
        """
        Write the lines still buffered, if any.
        """
        if self._buffer is not None:
            self._buffer.flush()


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
        Write the request's access-log line: straight into a buffered JSON
        log, else as an event to the log's observer.
        """
        upstream_status = notes.upstream_status
        if upstream_error is None and error is not None:
            # The upstream failure a gateway error stands for, if any.
            upstream_error = UPSTREAM_ERRORS.get(error)
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
        if not access_log.add_json(time.time(), fields):
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
