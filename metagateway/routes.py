"""
The routing table (:ref:`contract-proxy`, or a configuration file's, §8): path
prefix to route name, upstreams and policy; and the path normalisation
done before routing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

#: The route names a token may carry whatever the routes (:ref:`contract-tokens`).
TOKEN_ROUTES = ("AUTH", "KV", "BUILD", "CORE", "BASE", "WEBHOOK")

#: The token policies a route may have.
TOKEN_POLICIES = ("required", "optional", "none")

#: The token routes that may reach every route unless it says otherwise.
CORE_ROUTES = ("CORE", "AUTH")


@dataclass(frozen=True)
class Route:
    """
    One proxied prefix and its policy (:ref:`contract-proxy`, and §8 for a file).

    :ivar prefix: the path prefix's segments joined by ``/``, without the
        leading slash: ``build``, or ``api/v1``.
    :ivar name: the route name, such as ``BUILD``.
    :ivar token: ``required``; ``optional`` (checked if an
        ``Authorization`` header is sent); ``none`` (never checked; the
        header is still removed).
    :ivar upstreams: the upstream base URLs, spread round-robin; none: the
        route answers ``502 MISSING_TARGET``.
    :ivar accept: the token routes that may reach this route; empty for
        the default, ``(name, "CORE", "AUTH")``.
    :ivar strip_prefix: whether the prefix is removed from the path sent
        upstream.
    :ivar timeout: seconds to the upstream's answer head; ``None`` for the
        gateway's ``upstream_timeout``.
    :ivar max_body: the largest request body, in bytes (0: no limit);
        ``None`` for the gateway's ``max_body``.
    :ivar upstream_ca: the PEM bundle this route's ``https://`` upstreams'
        certificates must chain to; ``None`` for the gateway's
        ``upstream_ca`` (:ref:`contract-assertions`).
    :ivar upstream_client_cert: the PEM certificate and key this route
        presents to its ``https://`` upstreams; ``None`` for the gateway's
        ``upstream_client_cert``.
    """

    prefix: bytes
    name: str
    token: str = "optional"  # noqa: S105 (a policy, not a secret)
    upstreams: tuple[str, ...] = ()
    accept: tuple[str, ...] = ()
    strip_prefix: bool = True
    timeout: Optional[float] = None
    max_body: Optional[int] = None
    upstream_ca: Optional[str] = None
    upstream_client_cert: Optional[str] = None

    @property
    def token_required(self) -> bool:
        """
        Whether a token is needed even with no ``Authorization`` header.
        """
        return self.token == "required"  # noqa: S105 (a policy)

    @property
    def accepted(self) -> tuple[str, ...]:
        """
        The token routes that may reach this route.
        """
        return self.accept or default_accept(self.name)

    @property
    def segments(self) -> tuple[bytes, ...]:
        """
        The prefix's path segments.
        """
        return tuple(self.prefix.split(b"/"))

    @property
    def variable(self) -> str:
        """
        The environment variable naming this route's upstream.
        """
        return "%s_SERVICE_URL" % (self.name,)


def default_accept(name: str) -> tuple[str, ...]:
    """
    The token routes that may reach route ``name`` by default: its own,
    ``CORE`` and ``AUTH``.
    """
    return tuple(dict.fromkeys((name,) + CORE_ROUTES))


#: :ref:`contract-proxy`'s table, without upstreams.
ROUTES = (
    Route(b"build", "BUILD", "required"),
    Route(b"kv", "KV"),
    Route(b"core", "CORE"),
    Route(b"hq", "BASE"),
)


def builtin_routes(services: Mapping[str, str]) -> tuple[Route, ...]:
    """
    §5's table, each route's upstream the URL ``services`` names for it
    (none when unset), as a file reproducing it would spell it.

    :param services: route name to upstream base URL.
    """
    return tuple(
        Route(
            route.prefix,
            route.name,
            route.token,
            (services[route.name],) if services.get(route.name) else (),
            default_accept(route.name),
        )
        for route in ROUTES
    )


class RouteTable:
    """
    Finds the route owning a normalised path: the longest prefix matching
    whole segments.

    :param routes: the routes; their prefixes are distinct.
    """

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = tuple(routes)
        self._by_prefix = {route.segments: route for route in self.routes}
        self._depths = sorted(
            {len(segments) for segments in self._by_prefix}, reverse=True
        )

    def route_for(self, segments: Sequence[bytes]) -> Optional[Route]:
        """
        The route owning ``segments`` (a path after :func:`normalise_path`),
        or ``None``.
        """
        by_prefix = self._by_prefix
        for depth in self._depths:
            if depth <= len(segments):
                route = by_prefix.get(tuple(segments[:depth]))
                if route is not None:
                    return route
        return None


_BUILTIN = RouteTable(ROUTES)


def route_for(segments: Sequence[bytes]) -> Optional[Route]:
    """
    The route of §5's table owning a normalised path, or ``None``.

    :param segments: the path's segments after :func:`normalise_path`.
    """
    return _BUILTIN.route_for(segments)


def _is_dot(segment: bytes, dots: int) -> bool:
    lowered = segment.lower().replace(b"%2e", b".")
    return lowered == b"." * dots


def normalise_path(raw_path: bytes) -> list[bytes]:
    """
    Split a raw request path into segments and resolve dot segments (also
    percent-encoded as ``%2e``) as a browser does, clamped at the root.

    Segments stay percent-encoded, byte for byte. A trailing slash, or a
    trailing dot segment, leaves an empty last segment, as in ``/a/`` →
    ``[b"a", b""]``.

    :param raw_path: the path part of the request target, starting ``/``.
    """
    parts = raw_path.split(b"/")
    if raw_path.startswith(b"/"):
        del parts[0]
    output: list[bytes] = []
    last = len(parts) - 1
    if b"." not in raw_path and b"%2" not in raw_path:
        # No dot segment can be there.
        return parts
    for index, segment in enumerate(parts):
        if _is_dot(segment, 1):
            if index == last:
                output.append(b"")
        elif _is_dot(segment, 2):
            if output:
                output.pop()
            if index == last:
                output.append(b"")
        else:
            output.append(segment)
    return output
