"""
The gateway's root resource and its ``Site``: CORS preflight, path
normalisation, dispatch to the auth app or the proxy, and the JSON 404.
"""

from __future__ import annotations

from typing import Any, Mapping
from urllib.parse import unquote_to_bytes

from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from metagateway.accesslog import RequestRecorder, note_route
from metagateway.errors import GatewayError, error_response, internal_error
from metagateway.routes import normalise_path, route_for

log = Logger()

#: The answer to any ``OPTIONS`` request.
PREFLIGHT_HEADERS = (
    (b"Access-Control-Allow-Origin", b"*"),
    (b"Access-Control-Allow-Headers", b"Authorization, Content-Type"),
    (b"Access-Control-Allow-Methods", b"GET,POST,PUT,DELETE,OPTIONS"),
    (b"Access-Control-Max-Age", b"86400"),
)

#: (method, path) answered by the auth app; other methods on these paths
#: under ``/core`` are proxied, and under ``/auth`` are ``404``.
OWN_ENDPOINTS = frozenset(
    {
        (b"GET", b"health"),
        (b"HEAD", b"health"),
        (b"POST", b"auth/login"),
        (b"POST", b"auth/guest"),
        (b"POST", b"core/auth/login"),
        (b"GET", b"core/session"),
        (b"POST", b"core/session/refresh"),
        (b"POST", b"core/logout"),
        (b"POST", b"core/auth/github"),
    }
)

#: Access-log and metrics labels of the gateway's own endpoints that are
#: not plain ``AUTH``: (route label, login kind).
ENDPOINT_LABELS: Mapping[bytes, tuple[str, str | None]] = {
    b"health": ("HEALTH", None),
    b"auth/login": ("AUTH", "password"),
    b"core/auth/login": ("AUTH", "password"),
    b"core/auth/github": ("AUTH", "github"),
}


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
    target = request.uri.split(b"?", 1)[0]
    if not target.startswith(b"/"):
        scheme, sep, rest = target.partition(b"://")
        if sep:
            slash = rest.find(b"/")
            target = rest[slash:] if slash >= 0 else b"/"
        else:
            target = b"/" + target
    return target


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
    """

    isLeaf = True

    def __init__(
        self,
        auth: IResource,
        proxies: Mapping[str, IResource],
        webhooks: IResource | None = None,
        recorder: RequestRecorder | None = None,
    ) -> None:
        super().__init__()
        self.auth = auth
        self.proxies = dict(proxies)
        self.webhooks = webhooks
        self.recorder = recorder

    def render(self, request: IRequest) -> Any:
        """
        Dispatch ``request``.
        """
        request.defaultContentType = None
        if self.recorder is not None:
            self.recorder.started(request)
        try:
            return self._dispatch(request)
        except GatewayError as e:
            return error_response(request, e)
        except Exception:
            log.failure("Unexpected error dispatching a request")
            return error_response(request, internal_error())

    def _dispatch(self, request: IRequest) -> Any:
        if request.method == b"OPTIONS":
            note_route(request, "PREFLIGHT")
            request.setResponseCode(204)
            for name, value in PREFLIGHT_HEADERS:
                request.setHeader(name, value)
            return b""
        mount = list(request.prepath)
        raw_segments = request_path(request).split(b"/")[1:]
        below = b"/" + b"/".join(raw_segments[len(mount) :])
        segments = normalise_path(below)
        key = b"/".join(segments)
        if (request.method, key) in OWN_ENDPOINTS:
            note_route(request, *ENDPOINT_LABELS.get(key, ("AUTH", None)))
            return self._delegate(self.auth, request, mount, segments, decode=True)
        head = segments[0] if segments else b""
        if head == b"webhooks" and self.webhooks is not None:
            note_route(request, "WEBHOOK")
            return self._delegate(self.webhooks, request, mount, segments, decode=True)
        if head == b"auth" or head == b"health":
            raise not_found()
        route = route_for(segments)
        if route is None:
            raise not_found()
        proxy = self.proxies[route.name]
        note_route(request, route.name)
        request.prepath = mount + [route.prefix]
        request.postpath = segments[1:]
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
        request.postpath = [unquote_to_bytes(s) for s in segments] if decode else segments
        return resource.render(request)


class GatewayRequest(Request):
    """
    A request that adds no ``text/html`` content type of its own.
    """

    defaultContentType = None


class GatewaySite(Site):
    """
    The daemon's ``Site``: gateway requests. The access log is written by
    the gateway's resource (:mod:`metagateway.accesslog`), so that a gateway
    mounted in another ``Site`` logs the same lines; this ``Site`` adds none
    of its own (Twisted's would hold the query string).
    """

    requestFactory = GatewayRequest

    def log(self, request: IRequest) -> None:
        """
        Log nothing here: see :class:`~metagateway.accesslog.RequestRecorder`.
        """
