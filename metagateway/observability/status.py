"""
The status page on ``--metrics-listen`` (:ref:`contract-observability`):
``GET /status.json``, the gateway's state at a glance, and ``GET /status``,
one self-contained HTML page showing it (no external assets, no script),
which reloads itself every few seconds.

Nothing here runs on the request path. The rates of the last minute come
from the gateway's own counters
(:class:`~metagateway.observability.metrics.Metrics`), sampled every few
seconds (:class:`StatusSampler`, and at each look) and differenced.
"""

from __future__ import annotations

import html
import json
from collections import deque
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence

from twisted.application.internet import TimerService
from twisted.web.iweb import IRequest

from metagateway import __version__
from metagateway.observability.metrics import Metrics

#: Seconds between two samples of the counters.
SAMPLE_SECONDS = 5.0

#: The window the rates are taken over, in seconds.
WINDOW_SECONDS = 60.0

#: Seconds between two reloads of the HTML page.
REFRESH_SECONDS = 3


class UpstreamLike(Protocol):
    """
    What the page reads of an upstream
    (:class:`~metagateway.proxy.balancer.Upstream`).
    """

    @property
    def url(self) -> str:
        """
        See the class this stands for.
        """

    @property
    def down_until(self) -> float:
        """
        See the class this stands for.
        """

    @property
    def requests(self) -> int:
        """
        See the class this stands for.
        """

    @property
    def errors(self) -> int:
        """
        See the class this stands for.
        """


class BalancerLike(Protocol):
    """
    What the page reads of a route's pool
    (:class:`~metagateway.proxy.balancer.Balancer`).
    """

    @property
    def upstreams(self) -> Sequence[UpstreamLike]:
        """
        See the class this stands for.
        """


class RouteLike(Protocol):
    """
    What the page reads of a route (:class:`~metagateway.routes.Route`).
    """

    @property
    def prefix(self) -> bytes:
        """
        See the class this stands for.
        """

    @property
    def name(self) -> str:
        """
        See the class this stands for.
        """

    @property
    def token(self) -> str:
        """
        See the class this stands for.
        """


class ProxyLike(Protocol):
    """
    What the page reads of a route's proxy resource
    (:class:`~metagateway.proxy.resource.GatewayProxyResource`).
    """

    @property
    def route(self) -> RouteLike:
        """
        See the class this stands for.
        """

    @property
    def balancer(self) -> BalancerLike:
        """
        See the class this stands for.
        """


class ReloadsLike(Protocol):
    """
    What the page reads of the reloads
    (:class:`~metagateway.observability.reloads.ReloadStats`).
    """

    @property
    def results(self) -> dict[str, int]:
        """
        See the class this stands for.
        """

    @property
    def loaded_at(self) -> Optional[float]:
        """
        See the class this stands for.
        """

    @property
    def digest(self) -> str:
        """
        See the class this stands for.
        """


def _totals(metrics: Metrics) -> dict[str, int]:
    """
    The running totals the rates are made of.
    """
    requests = errors_4xx = errors_5xx = 0
    for (_, _, status), count in list(metrics.requests.items()):
        requests += count
        if status == "4xx":
            errors_4xx += count
        elif status == "5xx":
            errors_5xx += count
    failures = throttled = 0
    for (_, outcome), count in list(metrics.logins.items()):
        if outcome == "throttled":
            throttled += count
        elif outcome not in ("success", "aborted"):
            failures += count
    return {
        "requests": requests,
        "errors4xx": errors_4xx,
        "errors5xx": errors_5xx,
        "loginFailures": failures,
        "throttled": throttled,
    }


class GatewayStatus:
    """
    What ``/status.json`` tells of one gateway process.

    :param metrics: the gateway's counters.
    :param seconds: the clock (``reactor.seconds``).
    :param proxies: the routes in force: route name to proxy resource
        (read at each look, so that a reload shows).
    :param reloads: the reloads' figures.
    :param config_file: the configuration file, if routes came from one.
    :param listeners: the ``--listen`` endpoint descriptions.
    :param worker: this worker's index, with ``--workers``.
    :param workers: how many workers the gateway runs, when known (a
        worker is not told).
    """

    def __init__(
        self,
        metrics: Metrics,
        seconds: Callable[[], float],
        proxies: Callable[[], Mapping[str, ProxyLike]],
        reloads: Optional[ReloadsLike] = None,
        config_file: Callable[[], Optional[str]] = lambda: None,
        listeners: Sequence[str] = (),
        worker: Optional[int] = None,
        workers: Optional[int] = 1,
    ) -> None:
        self.metrics = metrics
        self.seconds = seconds
        self.proxies = proxies
        self.reloads = reloads
        self.config_file = config_file
        self.listeners = list(listeners)
        self.worker = worker
        self.workers = workers
        self.started = seconds()
        self._samples: deque[tuple[float, dict[str, int]]] = deque()
        self.sample()

    def sample(self) -> None:
        """
        Note the counters now; forget samples older than the window needs.
        """
        now = self.seconds()
        samples = self._samples
        samples.append((now, _totals(self.metrics)))
        while len(samples) > 2 and samples[1][0] <= now - WINDOW_SECONDS:
            samples.popleft()

    def rates(self) -> dict[str, float]:
        """
        Per-second rates over the last minute (or since start, if sooner),
        and the share of answers that were errors.
        """
        self.sample()
        now, latest = self._samples[-1]
        then, oldest = self._samples[0]
        for when, totals in self._samples:
            if when >= now - WINDOW_SECONDS:
                then, oldest = when, totals
                break
        elapsed = now - then
        rates: dict[str, float] = {}
        for key, value in latest.items():
            delta = value - oldest[key]
            rates[key] = round(delta / elapsed, 3) if elapsed > 0 else 0.0
        requests = latest["requests"] - oldest["requests"]
        for key in ("errors4xx", "errors5xx"):
            share = (latest[key] - oldest[key]) / requests if requests else 0.0
            rates[key + "Ratio"] = round(share, 4)
        rates["seconds"] = round(elapsed, 3)
        return rates

    def routes(self) -> list[dict[str, Any]]:
        """
        Each route in force with its upstreams and their health.
        """
        now = self.seconds()
        routes = []
        for name, proxy in sorted(self.proxies().items()):
            route = proxy.route
            upstreams = [
                {
                    "url": upstream.url,
                    "healthy": upstream.down_until <= now,
                    "downFor": max(0.0, round(upstream.down_until - now, 3)),
                    "requests": upstream.requests,
                    "errors": upstream.errors,
                }
                for upstream in proxy.balancer.upstreams
            ]
            routes.append(
                {
                    "name": name,
                    "prefix": "/" + route.prefix.decode("utf-8", "replace"),
                    "token": route.token,
                    "upstreams": upstreams,
                    "healthy": any(u["healthy"] for u in upstreams),
                }
            )
        return routes

    def document(self) -> dict[str, Any]:
        """
        The whole ``/status.json`` document.
        """
        now = self.seconds()
        metrics = self.metrics
        rates = self.rates()
        totals = _totals(metrics)
        state = metrics.state
        reloads = self.reloads
        return {
            "service": "metagateway",
            "version": __version__,
            "time": now,
            "uptime": round(now - self.started, 3),
            "worker": self.worker,
            "workers": self.workers,
            "listeners": self.listeners,
            "routes": self.routes(),
            "config": {
                "file": self.config_file(),
                "sha256": reloads.digest if reloads is not None else "",
                "loadedAt": reloads.loaded_at if reloads is not None else None,
                "reloads": dict(reloads.results) if reloads is not None else {},
            },
            "state": (
                {"shared": False}
                if state is None
                else {
                    "shared": True,
                    "connected": state.connected,
                    "reconnects": state.reconnects,
                    "revocationsSeen": state.revocations_seen,
                }
            ),
            "inFlight": metrics.in_flight,
            "lastMinute": {
                "requestsPerSecond": rates["requests"],
                "errors4xxPerSecond": rates["errors4xx"],
                "errors5xxPerSecond": rates["errors5xx"],
                "errors4xxRatio": rates["errors4xxRatio"],
                "errors5xxRatio": rates["errors5xxRatio"],
                "loginFailuresPerSecond": rates["loginFailures"],
                "throttledPerSecond": rates["throttled"],
                "seconds": rates["seconds"],
            },
            "totals": totals,
        }


class StatusSampler(TimerService):
    """
    Samples a :class:`GatewayStatus`'s counters every
    :data:`SAMPLE_SECONDS`, so that the rates cover the last minute even
    when nobody looked.
    """

    def __init__(self, status: GatewayStatus, clock: Any) -> None:
        super().__init__(SAMPLE_SECONDS, status.sample)
        self.clock = clock


def status_json(status: GatewayStatus, request: IRequest) -> bytes:
    """
    Answer ``GET /status.json``.
    """
    body = json.dumps(status.document(), separators=(",", ":")).encode("utf-8")
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"Content-Length", b"%d" % (len(body),))
    return body


def status_html(status: GatewayStatus, request: IRequest) -> bytes:
    """
    Answer ``GET /status``: the page, which allows itself no external
    asset (``Content-Security-Policy``).
    """
    body = render_page(status.document()).encode("utf-8")
    request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(
        b"Content-Security-Policy",
        b"default-src 'none'; style-src 'unsafe-inline'; img-src data:",
    )
    request.setHeader(b"Content-Length", b"%d" % (len(body),))
    return body


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    if days:
        return "%dd %dh %dm" % (days, hours, minutes)
    if hours:
        return "%dh %dm %ds" % (hours, minutes, seconds)
    return "%dm %ds" % (minutes, seconds)


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d2433;background:#f6f7f9}
h1{font-size:20px;margin:0 0 .2em}h2{font-size:15px;margin:1.4em 0 .4em}
.muted{color:#667}.grid{display:flex;flex-wrap:wrap;gap:.8em}
.card{background:#fff;border:1px solid #dde;border-radius:6px;
padding:.6em .9em;min-width:9em}
.card b{display:block;font-size:22px}
table{border-collapse:collapse;background:#fff;border:1px solid #dde}
td,th{padding:.3em .7em;border-bottom:1px solid #eef;text-align:left}
.ok{color:#17803d;font-weight:600}.bad{color:#c0262d;font-weight:600}
"""


def render_page(document: dict[str, Any]) -> str:
    """
    The HTML of the status page for a ``/status.json`` document.
    """
    last = document["lastMinute"]
    cards = [
        ("requests/s", "%.2f" % (last["requestsPerSecond"],), "requests-per-second"),
        ("in flight", document["inFlight"], "in-flight"),
        ("4xx", "%.1f%%" % (100 * last["errors4xxRatio"],), "errors-4xx"),
        ("5xx", "%.1f%%" % (100 * last["errors5xxRatio"],), "errors-5xx"),
        (
            "login failures/s",
            "%.2f" % (last["loginFailuresPerSecond"],),
            "login-failures",
        ),
        ("429s/s", "%.2f" % (last["throttledPerSecond"],), "throttled"),
        ("requests", document["totals"]["requests"], "requests-total"),
    ]
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="refresh" content="%d">' % (REFRESH_SECONDS,),
        '<meta name="viewport" content="width=device-width">',
        "<title>metagateway status</title><style>%s</style></head><body>" % (_STYLE,),
        "<h1>metagateway %s</h1>" % (_e(document["version"]),),
        '<p class="muted">up <span id="uptime">%s</span>'
        % (_e(_duration(document["uptime"])),),
    ]
    if document["worker"] is not None:
        parts.append(" &middot; worker %s" % (_e(document["worker"]),))
    parts.append(
        " &middot; listening on %s &middot; last %ds</p>"
        % (
            _e(", ".join(document["listeners"]) or "-"),
            int(last["seconds"]),
        )
    )
    parts.append('<div class="grid">')
    for label, value, ident in cards:
        parts.append(
            '<div class="card"><b id="%s">%s</b>%s</div>'
            % (ident, _e(value), _e(label))
        )
    parts.append("</div><h2>Routes</h2>")
    parts.append(
        "<table><tr><th>route</th><th>prefix</th><th>token</th>"
        "<th>upstream</th><th>health</th><th>requests</th><th>errors</th></tr>"
    )
    for route in document["routes"]:
        upstreams = route["upstreams"] or [None]
        for index, upstream in enumerate(upstreams):
            head = (
                "<td>%s</td><td>%s</td><td>%s</td>"
                % (_e(route["name"]), _e(route["prefix"]), _e(route["token"]))
                if index == 0
                else "<td></td><td></td><td></td>"
            )
            if upstream is None:
                parts.append(
                    '<tr>%s<td class="muted">none (502 MISSING_TARGET)</td>'
                    "<td></td><td></td><td></td></tr>" % (head,)
                )
                continue
            health = (
                '<span class="ok">healthy</span>'
                if upstream["healthy"]
                else '<span class="bad">left out %.0fs</span>' % (upstream["downFor"],)
            )
            parts.append(
                "<tr>%s<td>%s</td><td>%s</td><td>%d</td><td>%d</td></tr>"
                % (
                    head,
                    _e(upstream["url"]),
                    health,
                    upstream["requests"],
                    upstream["errors"],
                )
            )
    parts.append("</table><h2>Configuration and state</h2><table>")
    config = document["config"]
    state = document["state"]
    rows = [
        ("configuration file", config["file"] or "none (built-in routes)"),
        ("loaded", _when(config["loadedAt"])),
        (
            "reloads",
            ", ".join("%s %d" % item for item in sorted(config["reloads"].items()))
            or "-",
        ),
        (
            "shared state",
            "this gateway's own"
            if not state["shared"]
            else ("connected" if state["connected"] else "NOT CONNECTED"),
        ),
    ]
    for label, value in rows:
        parts.append("<tr><th>%s</th><td>%s</td></tr>" % (_e(label), _e(value)))
    parts.append(
        '</table><p class="muted">This page reloads every %ds; the same '
        'figures are at <a href="status.json">status.json</a>.</p>'
        "</body></html>" % (REFRESH_SECONDS,)
    )
    return "\n".join(parts)


def _when(stamp: Optional[float]) -> str:
    if not stamp:
        return "-"
    from datetime import datetime, timezone

    return datetime.fromtimestamp(stamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
