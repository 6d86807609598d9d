"""
The gateway's root resource and its ``Site``: CORS preflight, path
normalisation, dispatch to the auth app or the proxy, and the JSON 404.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence
from urllib.parse import unquote_to_bytes

from zope.interface import implementer

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import Request as HTTPRequest
from twisted.web.http import datetimeToString
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Site

from metagateway.cors import ANY_ORIGIN, CorsPolicy, note_policy
from metagateway.errors import (
    GatewayError,
    error_response,
    internal_error,
    request_id_of,
)
from metagateway.http.channel import GatewayChannel, bad_request
from metagateway.http.drain import InFlight
from metagateway.http.request import IEarlyRouting, StreamingRequest, when_done
from metagateway.http.twisted_internals import prepare_for_root, site_of
from metagateway.notes import RequestNotes, notes_of
from metagateway.observability.accesslog import RequestRecorder, note_route
from metagateway.routes import ROUTES, Route, RouteTable, normalise_path

log = Logger()

#: The answer to any ``OPTIONS`` request (with ``allow_origins`` a list,
#: :ref:`contract-config-file`, the first is the request's listed origin, or left out).
PREFLIGHT_HEADERS = (
    (b"Access-Control-Allow-Origin", b"*"),
    (b"Access-Control-Allow-Headers", b"Authorization, Content-Type"),
    (b"Access-Control-Allow-Methods", b"GET,POST,PUT,DELETE,OPTIONS"),
    (b"Access-Control-Max-Age", b"86400"),
)


def not_found() -> GatewayError:
    """
    The answer for a path the gateway does not handle.
    """
    return GatewayError(404, "NOT_FOUND", "Route not handled", "CORE")


def request_path(request: IRequest) -> bytes:
    """
    The raw path of ``request``'s target, without the query string; an
    absolute-form target (``http://host/path``) is reduced to its path.
    """
    target: bytes = request.uri.split(b"?", 1)[0]
    if not target.startswith(b"/"):
        scheme, sep, rest = target.partition(b"://")
        if sep:
            slash = rest.find(b"/")
            target = rest[slash:] if slash >= 0 else b"/"
        else:
            target = b"/" + target
    return target


@dataclass(frozen=True)
class Target:
    """
    Where a request goes.

    :ivar kind: ``preflight``, ``own`` (the auth app), ``webhooks``,
        ``proxy``, ``not_found``, or ``star`` (the ``*`` target, which only
        ``OPTIONS`` may use).
    :ivar route: the route errors about the request are reported under.
    :ivar mount: the path segments the gateway is mounted under.
    :ivar segments: the normalised (still percent-encoded) segments below.
    :ivar max_body: the largest body buffered for it; 0 when it streams.
    :ivar proxied: the route that proxies it, for ``proxy``.
    :ivar proxy: that route's proxy resource, in the routing table in
        force when the request arrived.
    """

    kind: str
    route: str
    mount: list[bytes]
    segments: list[bytes]
    max_body: int
    proxied: Optional[Route] = None
    proxy: Optional[IResource] = None


@dataclass(frozen=True)
class RoutingTable:
    """
    What a reload replaces, in one piece: the routes, their proxies, and
    the CORS policy.

    :ivar routes: finds a path's route.
    :ivar proxies: route name to its proxy resource.
    :ivar cors: the origins allowed to read answers.
    """

    routes: RouteTable
    proxies: Mapping[str, IResource]
    cors: CorsPolicy = ANY_ORIGIN


@implementer(IEarlyRouting)
class GatewayResource(Resource):
    """
    The root of the gateway, mountable anywhere in a host's resource tree.

    It takes over the rest of the path (``isLeaf``): the raw path is split
    after the mount point, dot segments are resolved, and the request goes
    to the auth app, the webhooks resource, a route's proxy, or a 404.

    :param auth: the Klein resource of the gateway's own endpoints.
    :param proxies: route name to its proxy resource.
    :param webhooks: the resource for ``/webhooks/…``, if any.
    :param recorder: counts each request and writes its access-log line.
    :param in_flight: counts the requests being answered, for the drain.
    :param own_max_body: the largest body buffered for the gateway's own
        endpoints (and for preflights and 404s); the webhooks resource's
        ``max_body`` for webhooks. Proxied bodies stream instead.
    :param own_endpoints: the ``(method, path)`` pairs ``auth`` answers,
        the path without its leading ``/`` (``(b"GET", b"core/session")``),
        as :func:`metagateway.auth.app.own_endpoints` derives them from the
        Klein app. Other methods on these paths are proxied under ``/core``
        and answered ``404`` elsewhere.
    :param endpoint_labels: the access-log and metrics label, ``(route
        label, login kind)``, of those of ``auth``'s paths not labelled
        plain ``AUTH`` (:func:`metagateway.auth.app.endpoint_labels`).
    :param routes: the proxied routes; :ref:`contract-proxy`'s by default. Each
        has its proxy in ``proxies``.
    :param cors: the origins allowed to read answers; any by default.

    :ivar table: the routing table in force; :meth:`swap` replaces it.
    """

    isLeaf = True

    def __init__(
        self,
        auth: IResource,
        proxies: Mapping[str, IResource],
        webhooks: IResource | None = None,
        recorder: RequestRecorder | None = None,
        in_flight: Optional[InFlight] = None,
        own_max_body: int = 64 * 1024,
        *,
        own_endpoints: Iterable[tuple[bytes, bytes]],
        endpoint_labels: Optional[Mapping[bytes, tuple[str, str | None]]] = None,
        routes: Optional[Sequence[Route]] = None,
        cors: CorsPolicy = ANY_ORIGIN,
    ) -> None:
        super().__init__()
        self.auth = auth
        self.table = RoutingTable(
            RouteTable(ROUTES if routes is None else routes), dict(proxies), cors
        )
        self.webhooks = webhooks
        self.recorder = recorder
        self.in_flight = in_flight
        self.own_max_body = own_max_body
        self.own_endpoints = frozenset(own_endpoints)
        self.endpoint_labels = dict(endpoint_labels or {})

    @property
    def proxies(self) -> Mapping[str, IResource]:
        """
        Route name to its proxy resource, in the table in force.
        """
        return self.table.proxies

    def swap(
        self,
        routes: Sequence[Route],
        proxies: Mapping[str, IResource],
        cors: CorsPolicy = ANY_ORIGIN,
    ) -> None:
        """
        Put a new routing table in force, at once: requests that arrive
        from now on follow it; those already routed finish with the
        proxy they were routed to.
        """
        self.table = RoutingTable(RouteTable(routes), dict(proxies), cors)

    def render(self, request: IRequest) -> Any:
        """
        Dispatch ``request``.
        """
        # Twisted would add ``Content-Type: text/html`` to every answer.
        request.defaultContentType = None  # type: ignore[attr-defined]
        note_policy(request, self.table.cors)
        recorder, in_flight = self.recorder, self.in_flight
        notes = notes_of(request)
        if recorder is not None:
            recorder.started(request, watch=False, notes=notes)
        if in_flight is not None:
            in_flight.track(request, watch=False, notes=notes)
        if recorder is not None or in_flight is not None:
            # One hook for both, rather than one each.
            when_done(request, self._finished, request)
        try:
            early = notes.early_error
            if isinstance(early, GatewayError):
                # Refused by the gateway's request before its body was read
                # (``413``); labelled as if dispatched.
                self._label(request, self._classify_noted(request, notes))
                return error_response(request, early)
            return self._dispatch(request, notes)
        except GatewayError as e:
            return error_response(request, e)
        except Exception:
            log.failure("Unexpected error dispatching a request")
            return error_response(request, internal_error())

    def _finished(self, result: Any, request: IRequest) -> None:
        try:
            if self.recorder is not None:
                self.recorder.finished(result, request)
        finally:
            if self.in_flight is not None:
                self.in_flight.done()

    def classify(self, request: IRequest) -> Target:
        """
        Decide where ``request`` goes, from its method and path alone (the
        headers may be all that has arrived).

        Both the gateway's request, as soon as the headers are in, and
        :meth:`render` go through here, so they always agree; the answer is
        remembered on the request, so the second asks nothing new.
        """
        return self._classify_noted(request, notes_of(request))

    def _classify_noted(self, request: IRequest, notes: RequestNotes) -> Target:
        """
        :meth:`classify`, with the request's notes at hand.
        """
        method, uri, prepath = request.method, request.uri, request.prepath
        known = notes.target
        if (
            known is not None
            and known[0] is self
            and known[1] == method
            and known[2] == uri
            and known[3] == prepath
        ):
            cached: Target = known[4]
            return cached
        target = self._classify(request)
        notes.target = (
            self,
            method,
            uri,
            list(prepath),
            target,
        )
        return target

    def _classify(self, request: IRequest) -> Target:
        mount = list(request.prepath)
        if request.method == b"OPTIONS":
            # ``OPTIONS *`` too: the server's options are the preflight's.
            return Target("preflight", "CORE", mount, [], self.own_max_body)
        if request.path == b"*":
            return Target("star", "CORE", mount, [], self.own_max_body)
        raw_segments = request_path(request).split(b"/")[1:]
        below = b"/" + b"/".join(raw_segments[len(mount) :])
        segments = normalise_path(below)
        key = b"/".join(segments)
        head = segments[0] if segments else b""
        if (request.method, key) in self.own_endpoints:
            name = "AUTH" if head == b"auth" else "CORE"
            return Target("own", name, mount, segments, self.own_max_body)
        if head == b"webhooks" and len(segments) > 1 and self.webhooks is not None:
            # ``/webhooks/…``; ``/webhooks`` alone is "anything else", a 404.
            limit = getattr(self.webhooks, "max_body", self.own_max_body)
            return Target("webhooks", "WEBHOOK", mount, segments, limit)
        table = self.table
        route = (
            None if head in (b"auth", b"health") else table.routes.route_for(segments)
        )
        if route is None:
            return Target("not_found", "CORE", mount, segments, self.own_max_body)
        return Target(
            "proxy", route.name, mount, segments, 0, route, table.proxies[route.name]
        )

    def _label(self, request: IRequest, target: Target) -> None:
        """
        Note the access-log and metrics label of ``target`` on ``request``.
        """
        if target.kind == "preflight":
            note_route(request, "PREFLIGHT")
        elif target.kind == "own":
            label, login = self.endpoint_labels.get(
                b"/".join(target.segments), ("AUTH", None)
            )
            note_route(request, label, login)
        elif target.kind == "webhooks":
            note_route(request, "WEBHOOK")
        else:
            # A route's name, or the error's route (CORE for a 404).
            note_route(request, target.route)

    def _dispatch(self, request: IRequest, notes: RequestNotes) -> Any:
        target = self._classify_noted(request, notes)
        self._label(request, target)
        if target.kind == "preflight":
            request.setResponseCode(204)
            cors = self.table.cors
            for name, value in PREFLIGHT_HEADERS:
                request.setHeader(name, value)
            if not cors.any:
                cors.apply(request, request.responseHeaders)
            request.setHeader(b"X-Request-Id", request_id_of(request).encode("latin-1"))
            # Finished here: returning b"" would have Twisted add the
            # Content-Length a 204 must not carry.
            request.finish()
            return NOT_DONE_YET
        if target.kind == "star":
            raise bad_request("Request target * is only for OPTIONS")
        mount, segments = target.mount, target.segments
        if target.kind == "own":
            return self._delegate(self.auth, request, mount, segments, decode=True)
        if target.kind == "webhooks" and self.webhooks is not None:
            return self._delegate(self.webhooks, request, mount, segments, decode=True)
        route, proxy = target.proxied, target.proxy
        if route is None or proxy is None:
            raise not_found()
        depth = len(route.segments)
        if route.strip_prefix:
            request.prepath = mount + segments[:depth]
            request.postpath = segments[depth:]
        else:
            request.prepath = list(mount)
            request.postpath = list(segments)
        return proxy.render(request)

    @staticmethod
    def _delegate(
        resource: IResource,
        request: IRequest,
        mount: list[bytes],
        segments: list[bytes],
        decode: bool,
    ) -> Any:
        request.prepath = mount
        request.postpath = (
            [unquote_to_bytes(s) for s in segments] if decode else segments
        )
        return resource.render(request)


class HTTPDate:
    """
    The ``Date`` header's value for now, formatted once a second rather
    than for every request.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.second = -1
        self.value = b""

    def __call__(self) -> bytes:
        second = int(self.clock())
        if second != self.second:
            self.value = datetimeToString(second)
            self.second = second
        return self.value


http_date = HTTPDate()


class GatewayRequest(StreamingRequest):
    """
    The daemon's request: it adds no ``text/html`` content type of its own,
    and on a :class:`GatewayChannel` a proxied request's body streams
    upstream as it arrives (:class:`~metagateway.http.request.StreamingRequest`).
    """

    defaultContentType = None

    def process(self) -> None:
        """
        Twisted's ``process``, without the resource traversal when the
        site's root is a :class:`GatewayResource`: the gateway reads the raw
        path itself, so the unquoted ``postpath`` Twisted would build (and
        the lookup through the root, which is a leaf) are never used. The
        ``*`` target goes to the gateway too (``OPTIONS *`` is a preflight,
        any other method a JSON ``400``). Under another root, the request
        is Twisted's.
        """
        site = site_of(self.channel)
        root = site.resource
        if not isinstance(root, GatewayResource):
            super().process()
            return
        prepare_for_root(self, site, http_date())
        try:
            self.render(root)
        except BaseException:
            self.processingFailed(Failure())


class GatewaySite(Site):
    """
    The daemon's ``Site``: gateway requests. The access log is written by
    the gateway's resource (:mod:`metagateway.observability.accesslog`), so
    that a gateway
    mounted in another ``Site`` logs the same lines; this ``Site`` adds none
    of its own (Twisted's would hold the query string).
    """

    requestFactory = GatewayRequest
    protocol = GatewayChannel  # type: ignore[assignment]

    #: The largest request head (request line, headers), in bytes.
    max_header_bytes = GatewayChannel.max_header_bytes
    #: The most header lines in a request.
    max_headers = GatewayChannel.max_headers
    #: Seconds to send a whole request head, from its first byte (``408``
    #: past it); ``0`` for no limit.
    head_timeout = GatewayChannel.head_timeout

    def buildProtocol(self, addr: Any) -> Any:
        """
        A :class:`GatewayChannel` (HTTP/1.1) with this site's header limits
        and head timeout.
        """
        channel = super().buildProtocol(addr)
        channel.max_header_bytes = self.max_header_bytes
        channel.max_headers = self.max_headers
        channel.head_timeout = self.head_timeout
        # The clock the site's callLater runs on (see Twisted's
        # HTTPFactory.buildProtocol), for the channel's idle timer.
        channel.seconds = self.reactor.seconds
        return channel

    def log(self, request: HTTPRequest) -> None:
        """
        Log nothing here: see
        :class:`~metagateway.observability.accesslog.RequestRecorder`.
        """
