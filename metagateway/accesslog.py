"""
The access log and per-request metrics.

The gateway's root resource hands each request to a
:class:`RequestRecorder` when it starts; when the request finishes (or the
client goes away) the recorder counts it in the gateway's
:class:`~metagateway.metrics.Metrics` and emits one ``twisted.logger``
event in the ``metagateway.access`` namespace.

The other modules leave what only they know on the request with the
``note_*`` functions below (plain attributes, read back without raising):

======================== ==================================== ================
attribute                meaning                              set by
======================== ==================================== ================
``metagatewayRoute``     route label (``BUILD``, ``AUTH`` …)  :func:`note_route`
``metagatewayLogin``     ``password`` / ``github`` for logins :func:`note_route`
``metagatewaySubject``   the verified token's subject         :func:`note_subject`
``metagatewayUpstreamStatus`` the upstream's status           :func:`note_upstream`
``metagatewayUpstreamError``  how the upstream failed         :func:`note_upstream`
``metagatewayError``     code of the gateway's JSON error     ``errors.error_response``
``metagatewayRequestId`` the request id                       ``errors.request_id_of``
``metagatewayBytesIn``   request body bytes                   the recorder
======================== ==================================== ================

An event holds the request id, client address, method, path (never the
query string), route, status, bytes in and out, duration, upstream status
or error, error code and token subject: never a header value, a token or
a secret. Nothing is formatted on the request path: the fields are handed
to the observer, which formats them only if it writes them.
"""

from __future__ import annotations

import json
from typing import IO, Any, Callable, Optional

from twisted.logger import FileLogObserver, ILogObserver, Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from metagateway.errors import iso_timestamp, request_id_of
from metagateway.metrics import UPSTREAM_ERRORS, Metrics

#: The namespace of access-log events.
NAMESPACE = "metagateway.access"

#: The access-log formats ``--access-log`` accepts.
FORMATS = ("text", "json", "off")

#: The text form of an access-log event; missing values read ``-``.
TEXT_FORMAT = (
    '{client} "{method} {path}" {route} {status} in={bytes_in} out={bytes_out} '
    "{duration_ms:.1f}ms upstream={upstream} error={error} subject={subject} "
    "id={request_id}"
)

#: The event keys, in the JSON line's order, with the JSON names.
_JSON_FIELDS = (
    ("request_id", "requestId"),
    ("client", "client"),
    ("method", "method"),
    ("path", "path"),
    ("route", "route"),
    ("status", "status"),
    ("bytes_in", "bytesIn"),
    ("bytes_out", "bytesOut"),
    ("duration_ms", "durationMs"),
    ("upstream_status", "upstreamStatus"),
    ("upstream_error", "upstreamError"),
    ("error", "error"),
    ("subject", "subject"),
)


def note_route(request: IRequest, route: str, login: Optional[str] = None) -> None:
    """
    Record which route (or gateway endpoint) answers ``request``.

    :param route: the label: a route name (``BUILD``, ``KV``, ``CORE``,
        ``BASE``) for proxied requests, else ``AUTH``, ``HEALTH``,
        ``WEBHOOK``, ``PREFLIGHT`` (an unhandled path stays ``NONE``).
    :param login: ``password`` or ``github`` when the request is a login.
    """
    request.metagatewayRoute = route  # type: ignore[attr-defined]
    if login is not None:
        request.metagatewayLogin = login  # type: ignore[attr-defined]


def note_subject(request: IRequest, subject: str) -> None:
    """
    Record the subject (``projectId``) of the token verified or issued for
    ``request``. Never pass the token itself.
    """
    request.metagatewaySubject = subject  # type: ignore[attr-defined]


def note_upstream(
    request: IRequest, status: Optional[int] = None, error: Optional[str] = None
) -> None:
    """
    Record the upstream's answer to ``request``.

    :param status: the upstream's status code, once its headers arrived.
    :param error: how it failed, when the gateway's error code does not say
        (``truncated``: the body broke off).
    """
    if status is not None:
        request.metagatewayUpstreamStatus = status  # type: ignore[attr-defined]
    if error is not None:
        request.metagatewayUpstreamError = error  # type: ignore[attr-defined]


def json_line(event: dict[str, Any]) -> str:
    """
    Format an access-log event as one line of JSON, with a ``time``.
    """
    document: dict[str, Any] = {"time": iso_timestamp(event.get("log_time"))}
    for key, name in _JSON_FIELDS:
        document[name] = event.get(key)
    return json.dumps(document, separators=(",", ":")) + "\n"


class AccessLog:
    """
    Where access-log events go, and in which form.

    :param form: ``text``: events go to the global log publisher (``twistd``
        writes them as ``[metagateway.access#info] 127.0.0.1 "GET /build/x"
        BUILD 200 …``); ``json``: one JSON object per line to ``out``.
    :param out: the stream JSON lines are written to.
    :param observer: where events go instead (tests).
    """

    def __init__(
        self,
        form: str = "text",
        out: Optional[IO[str]] = None,
        observer: Optional[ILogObserver] = None,
    ) -> None:
        if form not in ("text", "json"):
            raise ValueError("access log format must be text or json, not %r" % (form,))
        self.form = form
        if observer is None and form == "json":
            if out is None:
                raise ValueError("a JSON access log needs a stream")
            observer = FileLogObserver(out, json_line)
        self.logger = Logger(namespace=NAMESPACE, observer=observer)
        #: what a missing value reads as: ``-`` in text, ``null`` in JSON.
        self.missing: Optional[str] = "-" if form == "text" else None


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


def _printable(raw: bytes) -> str:
    text = raw.decode("ascii", "backslashreplace")
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text


def logged_path(request: IRequest) -> str:
    """
    The path of ``request`` as logged: no query string, no scheme or host
    of an absolute-form target, non-printable bytes escaped.
    """
    path = request.uri.split(b"?", 1)[0].split(b"#", 1)[0]
    if not path.startswith(b"/"):
        _, sep, rest = path.partition(b"://")
        slash = rest.find(b"/")
        path = rest[slash:] if sep and slash >= 0 else b"/"
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

    def started(self, request: IRequest) -> None:
        """
        Note that the gateway began answering ``request``.
        """
        request.metagatewayStarted = self.seconds()  # type: ignore[attr-defined]
        if self.access_log is not None and "metagatewayBytesIn" not in vars(request):
            request.metagatewayBytesIn = _bytes_in(request)  # type: ignore[attr-defined]
        self.metrics.in_flight += 1
        request.notifyFinish().addBoth(self._finished, request)

    def _finished(self, result: Optional[Failure], request: IRequest) -> None:
        notes = vars(request)
        duration = self.seconds() - notes["metagatewayStarted"]
        metrics = self.metrics
        metrics.in_flight -= 1
        status = request.code
        error = notes.get("metagatewayError")
        upstream_error = notes.get("metagatewayUpstreamError")
        if result is not None:
            # The connection was lost before the answer was complete.
            if not request.startedWriting:
                status = 499
            if error is None and upstream_error is None:
                error = "CLIENT_CLOSED"
        route = notes.get("metagatewayRoute", "NONE")
        metrics.observe_request(
            route, request.method, status, duration, error, upstream_error
        )
        login = notes.get("metagatewayLogin")
        if login is not None:
            metrics.observe_login(login, status, error)
        access_log = self.access_log
        if access_log is None:
            return None
        missing = access_log.missing
        upstream_status = notes.get("metagatewayUpstreamStatus")
        if upstream_error is None and error is not None:
            upstream_error = UPSTREAM_ERRORS.get(error)
        if upstream_error is not None:
            upstream: Any = upstream_error
        elif upstream_status is not None:
            upstream = upstream_status
        else:
            upstream = missing
        bytes_in = notes.get("metagatewayBytesIn")
        access_log.logger.emit(
            LogLevel.info,
            TEXT_FORMAT,
            request_id=request_id_of(request),
            client=self.client(request),
            method=_printable(request.method),
            path=logged_path(request),
            route=route,
            status=status,
            bytes_in=missing if bytes_in is None else bytes_in,
            bytes_out=request.sentLength,
            duration_ms=round(duration * 1000, 3),
            upstream=upstream,
            upstream_status=upstream_status,
            upstream_error=upstream_error,
            error=error or missing,
            subject=notes.get("metagatewaySubject", missing),
        )
        return None


def _peer(request: IRequest) -> str:
    return str(getattr(request.getClientAddress(), "host", None) or "-")
