"""
The optional OpenTelemetry bridge (:ref:`contract-observability`): spans
for each request, exported where the standard ``OTEL_*`` variables say.

OpenTelemetry itself is imported only when :func:`tracing_from_environ`
(called by the daemon) finds an exporter configured. :class:`TracingRecorder`
replaces the gateway's
:class:`~metagateway.observability.accesslog.RequestRecorder` when spans
are recorded, so that a gateway without them pays nothing per request.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from twisted.application.service import Service
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from metagateway.notes import RequestNotes, notes_of
from metagateway.observability.accesslog import RequestRecorder
from metagateway.observability.tracing import TraceContext, incoming_trace

log = Logger()


class OpenTelemetryTracing:
    """
    The OpenTelemetry bridge: spans for one gateway, through its own
    ``TracerProvider`` (the process's global provider is left alone).

    :param provider: an ``opentelemetry.sdk.trace.TracerProvider`` with
        its span processors.
    """

    def __init__(self, provider: Any) -> None:
        from opentelemetry import trace as api
        from opentelemetry.trace import (
            NonRecordingSpan,
            SpanContext,
            SpanKind,
            TraceFlags,
            TraceState,
        )

        self.provider = provider
        self.tracer = provider.get_tracer("metagateway")
        self._api = api
        self._kinds = {
            "server": SpanKind.SERVER,
            "client": SpanKind.CLIENT,
            "internal": SpanKind.INTERNAL,
        }
        self._span_context = SpanContext
        self._non_recording = NonRecordingSpan
        self._flags = TraceFlags
        self._state = TraceState

    def start(self, request: Any, notes: RequestNotes) -> TraceContext:
        """
        Start ``request``'s server span, continuing its caller's trace, and
        note its trace context.
        """
        incoming = incoming_trace(request.requestHeaders)
        context = None
        parent_id = None
        state = None
        if incoming is not None:
            trace_id, parent_id, flags, state = incoming
            try:
                trace_state = self._state.from_header(
                    [state.decode("latin-1")] if state else []
                )
            except Exception:
                trace_state = self._state()
            parent = self._span_context(
                int(trace_id, 16),
                int(parent_id, 16),
                is_remote=True,
                trace_flags=self._flags(int(flags, 16)),
                trace_state=trace_state,
            )
            context = self._api.set_span_in_context(self._non_recording(parent))
        method = request.method.decode("ascii", "replace")
        span = self.tracer.start_span(
            method, context=context, kind=self._kinds["server"]
        )
        span.set_attribute("http.request.method", method)
        span.set_attribute("url.path", request.path.decode("ascii", "replace"))
        got = span.get_span_context()
        flags_text = (
            incoming[2] if incoming is not None else "%02x" % (got.trace_flags,)
        )
        trace = TraceContext(
            "%032x" % (got.trace_id,),
            "%016x" % (got.span_id,),
            parent_id,
            flags_text,
            state,
        )
        trace.span = span
        trace.tracing = self
        notes.trace = trace
        return trace

    def finish(self, trace: TraceContext, notes: RequestNotes, status: int) -> None:
        """
        End a request's server span with what the request came to.
        """
        span = trace.span
        if span is None:
            return
        trace.span = None
        route = notes.route
        span.update_name("%s %s" % (span.name, route))
        span.set_attribute("metagateway.route", route)
        span.set_attribute("http.response.status_code", status)
        if notes.subject is not None:
            span.set_attribute("enduser.id", notes.subject)
        if notes.request_id is not None:
            span.set_attribute("metagateway.request_id", notes.request_id)
        if notes.upstream_status is not None:
            span.set_attribute("metagateway.upstream_status", notes.upstream_status)
        if notes.error is not None:
            span.set_attribute("metagateway.error", notes.error)
        if status >= 500:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, notes.error or str(status)))
        span.end()

    def child(self, trace: TraceContext, name: str, kind: str) -> Any:
        """
        Start a child span of ``trace``'s server span.
        """
        parent = trace.span
        context = None if parent is None else self._api.set_span_in_context(parent)
        return self.tracer.start_span(name, context=context, kind=self._kinds[kind])

    def span_id(self, span: Any) -> str:
        """
        The id of ``span``, as 16 hex digits.
        """
        return "%016x" % (span.get_span_context().span_id,)

    def shutdown(self) -> None:
        """
        Export what is left, and stop the exporter.
        """
        self.provider.shutdown()


class TracingRecorder(RequestRecorder):
    """
    A :class:`RequestRecorder` that also opens each request's server span
    when it starts and closes it when it finishes.

    :param tracing: the bridge the spans go through.
    """

    def __init__(
        self, *args: Any, tracing: OpenTelemetryTracing, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.tracing = tracing

    def started(
        self,
        request: IRequest,
        watch: bool = True,
        notes: Optional[RequestNotes] = None,
    ) -> None:
        """
        Start the server span, then note the request as started.
        """
        if notes is None:
            notes = notes_of(request)
        self.tracing.start(request, notes)
        super().started(request, watch, notes)

    def finished(self, result: Any, request: Any) -> None:
        """
        Count and log the request, then end its server span.
        """
        try:
            super().finished(result, request)
        finally:
            notes = notes_of(request)
            trace = notes.trace
            if trace is not None:
                status = int(request.code)
                if result is not None and not request.startedWriting:
                    status = notes.refused or 499
                self.tracing.finish(trace, notes, status)


class TracingService(Service):
    """
    Exports the spans still buffered when the gateway stops.
    """

    def __init__(self, tracing: OpenTelemetryTracing) -> None:
        self.tracing = tracing

    def stopService(self) -> None:
        """
        Flush and shut the exporter down.
        """
        Service.stopService(self)
        try:
            self.tracing.shutdown()
        except Exception:
            log.failure("Exporting the last spans failed")


#: Variables that, set, name where spans go.
_EXPORTER_VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)


def exporter_configured(environ: Mapping[str, str]) -> Optional[str]:
    """
    Which exporter the standard ``OTEL_*`` variables configure, if any:
    ``otlp`` when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set or
    ``OTEL_TRACES_EXPORTER`` is ``otlp``; ``console`` when it is
    ``console``; ``None`` otherwise, when ``OTEL_TRACES_EXPORTER`` is
    ``none`` or ``OTEL_SDK_DISABLED`` is ``true``.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    named = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if named == "none":
        return None
    if named in ("otlp", "otlp_proto_http", "console"):
        return "console" if named == "console" else "otlp"
    if any(environ.get(name) for name in _EXPORTER_VARIABLES):
        return "otlp"
    return None


def tracing_from_environ(environ: Mapping[str, str]) -> Optional[OpenTelemetryTracing]:
    """
    The OpenTelemetry bridge the environment asks for, or ``None``.

    Nothing is imported unless an exporter is configured
    (:func:`exporter_configured`); then, without the ``otel`` extra, one
    warning says so and the gateway runs without spans. The exporter and
    the resource (``OTEL_SERVICE_NAME``, default ``metagateway``;
    ``OTEL_RESOURCE_ATTRIBUTES``) read their own variables.
    """
    kind = exporter_configured(environ)
    if kind is None:
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        if kind == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporter: Any = ConsoleSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )

            exporter = OTLPSpanExporter()
    except ImportError as e:
        log.warn(
            "OTEL_* variables ask for spans, but the otel extra is not "
            "installed (pip install 'metagateway[otel]'): {why}; no spans",
            why=str(e),
        )
        return None
    service = environ.get("OTEL_SERVICE_NAME") or "metagateway"
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return OpenTelemetryTracing(provider)
