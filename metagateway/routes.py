"""
The routing table (CONTRACT §5): path prefix to route name, upstream and
token policy; and the path normalisation done before routing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence


@dataclass(frozen=True)
class Route:
    """
    One proxied prefix.

    :ivar prefix: the first path segment, such as ``build``.
    :ivar name: the route name, such as ``BUILD``.
    :ivar token_required: whether a token is needed even with no
        ``Authorization`` header (otherwise one is checked only if present).
    """

    prefix: bytes
    name: str
    token_required: bool

    @property
    def variable(self) -> str:
        """
        The environment variable naming this route's upstream.
        """
        return "%s_SERVICE_URL" % (self.name,)


ROUTES = (
    Route(b"build", "BUILD", True),
    Route(b"kv", "KV", False),
    Route(b"core", "CORE", False),
    Route(b"hq", "BASE", False),
)

_BY_PREFIX = {route.prefix: route for route in ROUTES}


def route_for(segments: Sequence[bytes]) -> Optional[Route]:
    """
    The route owning a normalised path, or ``None``.

    :param segments: the path's segments after :func:`normalise_path`.
    """
    if not segments:
        return None
    return _BY_PREFIX.get(segments[0])


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
