"""
Which origins may read the gateway's answers (:ref:`contract-endpoints`, §8 ``[cors]``).

With ``allow_origins = ["*"]`` (the default) every answer the gateway
makes carries ``Access-Control-Allow-Origin: *``, and a proxied answer
without the header gets it. With a list, an answer to a request whose
``Origin`` is listed carries that origin and ``Vary: Origin``; any other
gets no ``Access-Control-Allow-Origin`` (and still ``Vary: Origin``, so
that a cache keeps the two apart).

The root resource notes a list policy on each request
(:func:`note_policy`); whoever writes an answer asks :func:`policy_of`.
"""

from __future__ import annotations

from typing import Iterable, Optional

from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest

from metagateway.notes import notes_of

_ALLOW_ORIGIN = b"Access-Control-Allow-Origin"


class CorsPolicy:
    """
    The origins allowed to read answers.

    :param allow_origins: the origins, or ``("*",)`` for any.

    :ivar any: whether every origin is allowed (``*``).
    """

    def __init__(self, allow_origins: Iterable[str] = ("*",)) -> None:
        origins = tuple(allow_origins)
        self.any = origins == ("*",)
        self.origins = frozenset(origin.encode("ascii") for origin in origins)

    def allowed(self, request: IRequest) -> Optional[bytes]:
        """
        The ``Access-Control-Allow-Origin`` value for ``request``: ``*``,
        its listed ``Origin``, or ``None``.
        """
        if self.any:
            return b"*"
        values = request.requestHeaders.getRawHeaders(b"origin")
        if values and len(values) == 1 and values[0] in self.origins:
            origin: bytes = values[0]
            return origin
        return None

    def apply(self, request: IRequest, headers: Headers, keep: bool = False) -> None:
        """
        Set the CORS headers of an answer to ``request``.

        :param headers: the answer's headers.
        :param keep: keep an ``Access-Control-Allow-Origin`` already set
            (the upstream's, on a proxied answer).
        """
        if keep and headers.hasHeader(_ALLOW_ORIGIN):
            if not self.any:
                add_vary_origin(headers)
            return
        value = self.allowed(request)
        if value is not None:
            headers.setRawHeaders(_ALLOW_ORIGIN, [value])
        else:
            headers.removeHeader(_ALLOW_ORIGIN)
        if not self.any:
            add_vary_origin(headers)


def add_vary_origin(headers: Headers) -> None:
    """
    Add ``Origin`` to ``headers``' ``Vary``, unless it is there (or ``*``).
    """
    values = headers.getRawHeaders(b"vary")
    if not values:
        headers.setRawHeaders(b"Vary", [b"Origin"])
        return
    named = {token.strip().lower() for value in values for token in value.split(b",")}
    if b"origin" not in named and b"*" not in named:
        headers.setRawHeaders(b"Vary", list(values) + [b"Origin"])


#: Every origin: §4's behaviour.
ANY_ORIGIN = CorsPolicy()


def note_policy(request: IRequest, policy: CorsPolicy) -> None:
    """
    Remember the policy the answer to ``request`` follows (nothing is
    noted for :data:`ANY_ORIGIN`, the default).
    """
    if not policy.any:
        notes_of(request).cors = policy


def policy_of(request: IRequest) -> CorsPolicy:
    """
    The policy the answer to ``request`` follows.
    """
    policy: Optional[CorsPolicy] = notes_of(request).cors
    return ANY_ORIGIN if policy is None else policy
