"""
A route's upstream pool (:ref:`contract-config-file`): requests spread round-robin over
the healthy upstreams, with passive health checks.

An upstream whose connection is refused (or cannot be made at all), or
that does not answer in time, is left out for :data:`EJECT_SECONDS`; a
request whose connection was refused (nothing was sent) is tried on the
next upstream (:mod:`metagateway.proxy.resource`). As nginx does with a
single server, a pool of one upstream never leaves it out: there is no
other to try, and each request finds out for itself, as before pools.

Each upstream keeps its pooled keep-alive connections: the connection
pool is keyed by scheme, host and port.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from twisted.internet.error import ConnectError
from twisted.logger import Logger
from twisted.python.failure import Failure

from metagateway.proxy.headers import upstream_host

log = Logger()

#: Seconds an upstream that failed is left out.
EJECT_SECONDS = 10.0


def nothing_sent(failure: Failure) -> bool:
    """
    Whether an upstream call failed before anything was sent: the
    connection could not be made (refused, no route, name not found,
    connect timeout), so the request may go to another upstream.
    """
    return isinstance(failure.value, ConnectError)


class Upstream:
    """
    One upstream of a pool, and its figures.

    :param url: its base URL.

    :ivar base: the URL without its trailing slash, as bytes; ``None``
        when it is not ASCII (proxying to it then fails per request).
    :ivar host_header: the ``Host`` of requests to it.
    :ivar down_until: when it comes back, if left out.
    :ivar requests: requests sent to it.
    :ivar errors: those that failed (no connection, timeout, reset).
    """

    __slots__ = ("url", "base", "host_header", "down_until", "requests", "errors")

    def __init__(self, url: str) -> None:
        self.url = url
        self.base = url.rstrip("/").encode("ascii") if url.isascii() else None
        self.host_header = upstream_host(url)
        self.down_until = 0.0
        self.requests = 0
        self.errors = 0

    def __repr__(self) -> str:
        return "<Upstream %s>" % (self.url,)


class Balancer:
    """
    Picks the upstreams of one route's requests.

    :param urls: the upstreams' base URLs.
    :param seconds: the clock.
    :param route: the route's name, for the log.
    :param eject_seconds: how long a failed upstream is left out.
    """

    def __init__(
        self,
        urls: Sequence[str],
        seconds: Callable[[], float],
        route: str = "",
        eject_seconds: float = EJECT_SECONDS,
    ) -> None:
        self.upstreams = tuple(Upstream(url) for url in urls)
        self.seconds = seconds
        self.route = route
        self.eject_seconds = eject_seconds
        self._turn = 0
        self._ejected = False

    def healthy(self, upstream: Upstream, now: Optional[float] = None) -> bool:
        """
        Whether ``upstream`` is in use now.
        """
        if upstream.down_until == 0.0:
            return True
        return upstream.down_until <= (self.seconds() if now is None else now)

    def candidates(self) -> Sequence[Upstream]:
        """
        The upstreams to try for the next request, in order: the healthy
        ones, starting with the next in turn. Empty when none is healthy.
        """
        upstreams = self.upstreams
        if len(upstreams) < 2:
            return upstreams
        if self._ejected:
            now = self.seconds()
            healthy = tuple(u for u in upstreams if self.healthy(u, now))
            if len(healthy) == len(upstreams):
                self._ejected = False
            upstreams = healthy
            if not upstreams:
                return ()
        turn = self._turn % len(upstreams)
        self._turn += 1
        if turn == 0:
            return upstreams
        return upstreams[turn:] + upstreams[:turn]

    def failed(self, upstream: Upstream, why: str) -> None:
        """
        ``upstream`` refused a connection or did not answer in time: leave
        it out for a while (unless it is the only one).
        """
        upstream.errors += 1
        if len(self.upstreams) < 2:
            return
        if self.healthy(upstream):
            log.warn(
                "Upstream {url} of route {route} left out for {seconds}s: {why}",
                url=upstream.url,
                route=self.route,
                seconds=self.eject_seconds,
                why=why,
            )
        upstream.down_until = self.seconds() + self.eject_seconds
        self._ejected = True


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


#: The per-upstream metric families: name, type, help, value.
_FAMILIES: tuple[
    tuple[str, str, str, Callable[[Balancer, Upstream, float], int]], ...
] = (
    (
        "metagateway_upstream_requests_total",
        "counter",
        "Requests sent to each upstream of a route.",
        lambda balancer, upstream, now: upstream.requests,
    ),
    (
        "metagateway_upstream_failures_total",
        "counter",
        "Requests to each upstream that failed (no connection, timeout).",
        lambda balancer, upstream, now: upstream.errors,
    ),
    (
        "metagateway_upstream_healthy",
        "gauge",
        "Whether each upstream is in use (1) or left out after a failure (0).",
        lambda balancer, upstream, now: int(balancer.healthy(upstream, now)),
    ),
)


def pool_samples(balancers: Sequence[Balancer], labels: str) -> list[str]:
    """
    The per-upstream metrics of ``balancers``, in the Prometheus text
    format, labelled by route and upstream URL.

    :param labels: labels every sample carries first, each as
        ``key="value",`` (``worker="0",``), or ``""``.
    """
    lines: list[str] = []
    for name, kind, help_text, value in _FAMILIES:
        lines.append("# HELP %s %s" % (name, help_text))
        lines.append("# TYPE %s %s" % (name, kind))
        for balancer in balancers:
            now = balancer.seconds()
            for upstream in balancer.upstreams:
                lines.append(
                    '%s{%sroute="%s",upstream="%s"} %d'
                    % (
                        name,
                        labels,
                        balancer.route,
                        _escape(upstream.url),
                        value(balancer, upstream, now),
                    )
                )
    return lines
