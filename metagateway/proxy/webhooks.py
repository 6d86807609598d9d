"""
Inbound webhooks: ``/webhooks/{source}`` (:ref:`contract-endpoints`).

Only ``notion`` is a known source. A ``POST /webhooks/notion`` carrying the
shared secret in ``X-Notion-Signature`` is forwarded, in parallel, to
``/webhooks/notion`` of each selected upstream service, and answered ``202``
with the status each target gave.

Paths and methods:

- ``/webhooks/``: ``400 INVALID_SOURCE`` (``/webhooks`` without the slash
  is not a webhook path: the root resource answers it ``404 NOT_FOUND``,
  route ``CORE``, and never sends it here);
- ``/webhooks/{other}``: ``404 UNKNOWN_SOURCE`` (the source is matched
  without regard to case);
- another method than ``POST`` on ``/webhooks/notion``, or a path below it:
  ``404 NOT_FOUND`` (``OPTIONS`` is answered by the root resource first).

Every error is reported under route ``WEBHOOK``.
"""

from __future__ import annotations

import hmac
from io import BytesIO
from typing import Any, Iterable, Mapping, Sequence

from hyperlink import EncodedURL

from twisted.internet.defer import Deferred, TimeoutError, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.web.client import FileBodyProducer
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from metagateway.errors import (
    GatewayError,
    error_response,
    internal_error,
    payload_too_large,
    write_json,
)
from metagateway.http.client import read_limited, timed_out
from metagateway.observability.tracing import trace_of
from metagateway.proxy.headers import HOP_BY_HOP, connection_tokens

log = Logger()

ROUTE = "WEBHOOK"

#: Target name -> the route name whose service URL it means.
TARGETS = {
    "BASE_SERVICE": "BASE",
    "KV_SERVICE": "KV",
    "CORE_SERVICE": "CORE",
    "BUILD_SERVICE": "BUILD",
}

#: The targets used when the request names none.
DEFAULT_TARGETS = ("BASE_SERVICE", "KV_SERVICE", "CORE_SERVICE")

#: The sources this gateway accepts.
SOURCES = frozenset({b"notion"})

#: The largest webhook body accepted, in bytes.
MAX_BODY = 1024 * 1024

#: How much of a target's answer body is read (then discarded).
MAX_TARGET_ANSWER = 64 * 1024

#: Request headers never forwarded to a target: ``Authorization``
#: (:ref:`contract-webhooks`), and the framing of the client's connection, which the
#: gateway's own
#: request to the target sets anew.
_DROPPED = HOP_BY_HOP | {
    b"authorization",
    b"host",
    b"content-length",
}


def webhook_error(status: int, code: str, message: str) -> GatewayError:
    """
    An error of the webhooks endpoint, reported under route ``WEBHOOK``.
    """
    return GatewayError(status, code, message, ROUTE)


def select_targets(
    requested: Sequence[bytes] | None, services: Mapping[str, str]
) -> list[tuple[str, str]]:
    """
    The targets a webhook goes to.

    :param requested: the raw ``X-Gateway-Webhook-Targets`` values, if the
        header was sent. Names are comma-separated and matched without
        regard to case; names other than those in :data:`TARGETS` are
        ignored. A header holding no name at all counts as absent.
    :param services: route name to service URL.
    :return: ``(target name, service URL)`` for each selected target whose
        service is configured, in the order named, without repeats.
    """
    names: list[str] = []
    if requested:
        for value in requested:
            for part in value.split(b","):
                names.append(part.strip().decode("latin-1").upper())
        names = [name for name in names if name]
    if not names:
        names = list(DEFAULT_TARGETS)
    selected = []
    seen = set()
    for name in names:
        route = TARGETS.get(name)
        if route is None or name in seen:
            continue
        seen.add(name)
        url = services.get(route)
        if url:
            selected.append((name, url))
    return selected


def forwarded_headers(incoming: Headers, source: bytes) -> Headers:
    """
    The headers sent to each target: the request's end-to-end headers
    (``Accept-Encoding`` included, as sent) less ``Authorization``,
    ``Host``, ``Content-Length`` and any ``X-Gateway-*`` (a client cannot
    speak for the gateway), plus ``X-Gateway-Source``.

    The agent that sends them adds only the framing of its own request
    (``Host``, ``Content-Length``, and ``Connection`` if it does not keep
    connections alive).
    """
    dropped = _DROPPED | connection_tokens(incoming)
    outgoing = Headers()
    for name, values in incoming.getAllRawHeaders():
        lowered = name.lower()
        if lowered in dropped or lowered.startswith(b"x-gateway-"):
            continue
        outgoing.setRawHeaders(name, values)
    outgoing.setRawHeaders(b"X-Gateway-Source", [source])
    return outgoing


class WebhooksResource(Resource):
    """
    Answers ``/webhooks/…``.

    It expects ``request.postpath`` to hold the percent-decoded path
    segments below the gateway's mount point, starting ``b"webhooks"``, as
    :class:`~metagateway.http.site.GatewayResource` passes them.

    :param secret: the ``NOTION_WEBHOOK_SECRET``; ``None`` answers every
        Notion webhook ``500 NOTION_SECRET_MISSING``.
    :param services: route name to service URL.
    :param agent: the agent targets are called with. It should be a plain
        ``IAgent`` that sends the headers it is given and adds none but
        its own framing: no treq ``HTTPClient``, whose agent adds
        ``Accept-Encoding: gzip`` and cookies from earlier answers, or
        follows redirects (targets' redirects are reported, not followed).
    :param clock: the clock for each target's timeout.
    :param cooperator: writes the body to each target.
    :param timeout: seconds each target has to answer.
    :param max_body: the largest webhook body accepted, in bytes.
    """

    isLeaf = True

    def __init__(
        self,
        secret: str | None,
        services: Mapping[str, str],
        agent: IAgent,
        clock: IReactorTime,
        cooperator: Cooperator,
        timeout: float = 30.0,
        max_body: int = MAX_BODY,
    ) -> None:
        super().__init__()
        self.secret = secret.encode("utf-8") if secret else None
        self.services = dict(services)
        self.agent = agent
        self.clock = clock
        self.cooperator = cooperator
        self.timeout = timeout
        self.max_body = max_body

    def render(self, request: IRequest) -> Any:
        """
        Check the source, method and signature, then forward.
        """
        request.defaultContentType = None  # type: ignore[attr-defined]
        try:
            return self._render(request)
        except GatewayError as e:
            return error_response(request, e)
        except Exception:
            log.failure("Unexpected error answering a webhook")
            return error_response(request, internal_error(ROUTE))

    def _render(self, request: IRequest) -> Any:
        rest = list(request.postpath[1:])
        if rest and rest[-1] == b"":
            rest.pop()
        if not rest:
            raise webhook_error(400, "INVALID_SOURCE", "Invalid webhook source")
        source = rest[0].lower()
        if source not in SOURCES:
            raise webhook_error(404, "UNKNOWN_SOURCE", "Unknown webhook source")
        if len(rest) > 1 or request.method != b"POST":
            raise webhook_error(404, "NOT_FOUND", "Route not handled")
        if self.secret is None:
            raise webhook_error(
                500, "NOTION_SECRET_MISSING", "Notion webhook secret is not configured"
            )
        signatures = request.requestHeaders.getRawHeaders(b"x-notion-signature") or []
        if len(signatures) != 1 or not hmac.compare_digest(signatures[0], self.secret):
            raise webhook_error(401, "INVALID_SIGNATURE", "Invalid webhook signature")
        body = self._body(request)
        targets = select_targets(
            request.requestHeaders.getRawHeaders(b"x-gateway-webhook-targets"),
            self.services,
        )
        if not targets:
            raise webhook_error(502, "NO_TARGETS", "No webhook targets configured")
        headers = forwarded_headers(request.requestHeaders, source)
        # Each fan-out request carries the trace (:ref:`contract-observability`).
        trace_of(request).set_headers(headers)
        done = self.forward(source, body, headers, targets)
        gone = []
        request.notifyFinish().addErrback(  # type: ignore[attr-defined]
            lambda _: gone.append(True)
        )

        def answer(forwarded: list[dict[str, Any]]) -> None:
            if not gone:
                request.write(
                    write_json(request, 202, {"success": True, "forwarded": forwarded})
                )
                request.finish()

        def unexpected(failure: Any) -> None:
            log.failure("Unexpected error forwarding a webhook", failure)
            if gone or request.finished:  # type: ignore[attr-defined]
                return
            if not request.startedWriting:  # type: ignore[attr-defined]
                request.write(error_response(request, internal_error(ROUTE)))
            request.finish()

        done.addCallback(answer)
        done.addErrback(unexpected)
        return NOT_DONE_YET

    def _body(self, request: IRequest) -> bytes:
        """
        The request body.

        :raises GatewayError: ``413 PAYLOAD_TOO_LARGE`` over the limit.
        """
        declared = request.getHeader(b"content-length")
        if declared is not None and declared.strip().isdigit():
            if int(declared) > self.max_body:
                raise payload_too_large(ROUTE, self.max_body)
        content = request.content
        if content is None:
            return b""
        content.seek(0)
        data = content.read(self.max_body + 1)
        if len(data) > self.max_body:
            raise payload_too_large(ROUTE, self.max_body)
        return bytes(data)

    def forward(
        self,
        source: bytes,
        body: bytes,
        headers: Headers,
        targets: Iterable[tuple[str, str]],
    ) -> Deferred[list[dict[str, Any]]]:
        """
        POST ``body`` to ``/webhooks/{source}`` of every target at once.

        :param source: the source name, such as ``b"notion"``.
        :param body: the body to send.
        :param headers: the headers to send.
        :param targets: ``(target name, service URL)`` pairs.
        :return: a Deferred firing with ``{"target", "status"}`` for each
            target, in order: the status it answered, ``502`` when it could
            not be reached, ``504`` when it did not answer in time. It does
            not fail.
        """
        calls = [
            self._deliver(name, url, source, body, headers) for name, url in targets
        ]
        return gatherResults(calls)

    def _deliver(
        self, name: str, url: str, source: bytes, body: bytes, headers: Headers
    ) -> Deferred[dict[str, Any]]:
        target = url.rstrip("/") + "/webhooks/" + source.decode("ascii")
        attempt = Deferred.fromCoroutine(self._post(target, body, headers))
        attempt.addTimeout(self.timeout, self.clock, timed_out)

        def delivered(status: int) -> dict[str, Any]:
            return {"target": name, "status": status}

        def undelivered(failure: Any) -> dict[str, Any]:
            if failure.check(TimeoutError):
                log.warn("Webhook target {target} timed out", target=name)
                return {"target": name, "status": 504}
            why = failure.value
            reasons = getattr(why, "reasons", None)
            if reasons:
                why = reasons[0].value
            log.warn(
                "Webhook target {target} unavailable: {why}",
                target=name,
                why=str(why)[:200] or why.__class__.__name__,
            )
            return {"target": name, "status": 502}

        return attempt.addCallbacks(delivered, undelivered)

    async def _post(self, url: str, body: bytes, headers: Headers) -> int:
        """
        Send one webhook.

        The answer body is read (never decoded) and dropped in the
        background, within the same timeout, so that the connection can be
        reused; the status is what is reported. A redirect is not followed.

        :param url: the target's URL, encoded as treq encodes URLs (the
            service URL's host through IDNA, other characters
            percent-encoded).
        :return: the target's status code.
        """
        response = await self.agent.request(
            b"POST",
            EncodedURL.from_text(url).to_uri().to_text().encode("ascii"),
            headers,
            FileBodyProducer(BytesIO(body), cooperator=self.cooperator),
        )
        drained = read_limited(response, MAX_TARGET_ANSWER)
        drained.addTimeout(self.timeout, self.clock, timed_out)
        drained.addErrback(lambda _: None)
        return int(response.code)
