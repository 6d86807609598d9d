"""
The access log's lines: how a request's fields become a line of text or
JSON, and how lines reach their stream.

:class:`RequestRecorder` (:mod:`metagateway.observability.accesslog`)
hands each request's fields to an :class:`AccessLog`. A buffered log (the
daemon's ``text`` and ``json`` forms) formats the line straight from the
fields (:meth:`TextLines.request_line`, :meth:`JSONLines.request_line`)
and writes lines in batches (:class:`BufferedLines`), with no log event
and no trip through the global log publisher. Otherwise (an embedding
program's gateway, tests) each request is a ``twisted.logger`` event in
the ``metagateway.access`` namespace, formatted only by the observers
that write it.
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
from twisted.logger import FileLogObserver, ILogObserver, Logger, formatTime

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


#: What ``twistd``'s text log writes between an access-log event's
#: timestamp and its text (the event's namespace and level).
TEXT_SYSTEM = " [%s#info] " % (NAMESPACE,)


def _word(value: Any) -> str:
    """
    A value a client can choose, as one word of the text line (``-`` for
    missing), as :class:`AccessLine` writes it.
    """
    if value is None:
        return "-"
    return _one_word(value if value.__class__ is str else str(value))


class TextLines:
    """
    Formats a request's text access-log line as ``twistd``'s text log
    writes its event, byte for byte: the local time to the second with
    its UTC offset (``formatTime``), ``[metagateway.access#info]``, the
    :data:`TEXT_LINE`, a newline (a newline inside the text is followed by
    a tab, as ``twistd`` writes it).

    The time's text is made once a second.
    """

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def _time(self, when: float) -> str:
        second = int(when)
        if second != self._second:
            self._second = second
            self._prefix = formatTime(second) + TEXT_SYSTEM
        return self._prefix

    def __call__(self, event: dict[str, Any]) -> str:
        """
        The line of an access-log event (a :class:`BufferedLines`
        formatter), from its :data:`JSON_FIELDS`.
        """
        return self.request_line(
            event.get("log_time") or time.time(),
            tuple(map(event.get, JSON_FIELDS)),
        )

    def request_line(self, when: float, fields: tuple[Any, ...]) -> str:
        """
        The line of a request recorded by the recorder, from the time and
        the values of :data:`JSON_FIELDS`, in that order; newline included.
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
        upstream = upstream_status if upstream_error is None else upstream_error
        text = TEXT_LINE % (
            _word(client),
            "-" if method is None else method,
            "-" if path is None else path,
            "-" if route is None else route,
            "-" if status is None else status,
            "-" if bytes_in is None else bytes_in,
            "-" if bytes_out is None else bytes_out,
            duration_ms,
            "-" if upstream is None else upstream,
            "-" if error is None else error,
            _word(subject),
            _word(request_id),
            "-" if trace_id is None else trace_id,
        )
        if "\n" in text:
            text = text.replace("\n", "\n\t")
        return self._time(when) + text + "\n"


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
                    "null" if trace_id is None else _quote(trace_id),
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
    Where access-log lines go, and in which form.

    :param form: ``text``: ``twistd``'s text log line (``2026-11-29T00:32:50+0000
        [metagateway.access#info] 127.0.0.1 "GET /build/x" BUILD 200 …``);
        ``json``: one JSON object per line.
    :param out: the stream lines are written to. Without it (``text``
        only) each request is an event to the global log publisher, which
        ``twistd`` writes in that same form.
    :param observer: where events go instead (tests).
    :param clock: with ``out``, buffer the lines (:class:`BufferedLines`,
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
        #: formats the lines of a buffered log.
        self.lines: Optional[TextLines | JSONLines] = None
        if observer is None and out is not None:
            lines = JSONLines() if form == "json" else TextLines()
            if clock is not None:
                self.lines = lines
                self._buffer = BufferedLines(out, lines, clock, flush_delay)
                observer = self._buffer
            else:
                observer = FileLogObserver(out, lines)
        elif observer is None and form == "json":
            raise ValueError("a JSON access log needs a stream")
        self.logger = Logger(namespace=NAMESPACE, observer=observer)
        self.observer = self.logger.observer
        #: whether events carry an :class:`AccessLine` (text form).
        self.text = form == "text"

    def add_request(self, when: float, fields: tuple[Any, ...]) -> bool:
        """
        Buffer the line of a request straight from its fields (the values
        of :data:`JSON_FIELDS`), without building a log event, when this
        is a buffered log (nothing else observes its events).

        :return: whether the line was taken; if not, emit an event.
        """
        if self._buffer is None or self.lines is None:
            return False
        self._buffer.add(self.lines.request_line(when, fields))
        return True

    def flush(self) -> None:
        """
        Write the lines still buffered, if any.
        """
        if self._buffer is not None:
            self._buffer.flush()
